"""export(): checkpoint -> model.onnx, model.mlpackage and export.json, each checked on the spot.

The output folder (default: ``<run folder>/export``) holds::

    model.onnx       ONNX opset 17 / IR 8, uint8 NHWC input, preprocessing inside (onnx_export.py)
    model.mlpackage  Core ML program, image input, 1/255 in the image preprocessing (coreml_export.py)
    export.json      the metadata written into both models, plus the parity measured at export time

Before writing export.json the exported models are run on random images and held against
tinyconv's own forward pass (ONNX Runtime; the Core ML program through mil_check's interpreter).
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.batches import to_model_input
from ..data.resize import RESIZE_FILTER, RESIZE_POLICY
from .coreml_export import coreml_status, write_coreml
from .fold import fold_model
from .onnx_export import INPUT_FORMAT, PROBS_NAME, ort_session, output_name, write_onnx
from .source import find_checkpoint, load_trained

ONNX_TOL = 1e-5       # max |p_onnx - p_tinyconv|, float32
COREML_TOL = 1e-5     # float32 program through the NumPy interpreter
COREML_FP16_TOL = 5e-3  # float16 program (weights and activations stored in fp16); see docs/ios.md


def export_metadata(meta, checkpoint):
    """The metadata both models carry (ONNX metadata_props, Core ML user_defined_metadata)."""
    attributes = list(meta["attributes"])
    H, W = (int(v) for v in meta["image_size"])
    md = {
        "attributes": attributes,
        "outputs": {a: output_name(a) for a in attributes},
        "image_size": [H, W],
        "input": f"{INPUT_FORMAT}; H={H}, W={W}",
        "resize_policy": RESIZE_POLICY,
        "resize_filter": RESIZE_FILTER,
        "resize_function": "tinyconv.data.resize.resize_to_model",
        "training_run": str(meta.get("run_dir", Path(checkpoint).resolve().parent.parent)),
        "checkpoint": str(Path(checkpoint).resolve()),
        "epoch": meta.get("epoch"),
        "schedule": meta.get("schedule"),
        "data_source": meta.get("data_source"),
        "synthetic": bool(meta.get("synthetic", False)),
        "tinyconv_version": __version__,
        "trained_with_tinyconv": meta.get("tinyconv_version"),
        "model": meta["model"],
    }
    if meta.get("resize_policy") not in (None, RESIZE_POLICY):
        md["training_resize_policy"] = meta["resize_policy"]  # kept so the mismatch stays visible
    return {k: v for k, v in md.items() if v is not None}


def default_out(checkpoint):
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "export"
    return checkpoint.with_name(checkpoint.stem + "_export")


def parity_images(image_size, n=8, seed=0):
    """uint8 (n, H, W, 3): uniform noise plus smooth, face-like gradients (realistic value ranges)."""
    rng = np.random.default_rng(seed)
    H, W = image_size
    noise = rng.integers(0, 256, (n // 2, H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    smooth = []
    for _ in range(n - n // 2):
        base = rng.uniform(60, 200, 3) + 50 * np.sin(6 * xx[..., None] + rng.uniform(0, 6, 3)) \
            * np.cos(4 * yy[..., None])
        smooth.append(np.clip(base + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8))
    return np.concatenate([noise, np.stack(smooth)])


def reference_proba(model, images):
    """tinyconv's own probabilities for uint8 (N, H, W, 3), converted as the training data is."""
    return model.predict_proba(to_model_input(np.asarray(images), np))


def onnx_parity(path, model, images):
    """max |ONNX Runtime - tinyconv| over probabilities and the per-attribute outputs, batch 1 and batch N."""
    sess = ort_session(path)
    ref = reference_proba(model, images)
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for batch in (images[:1], images):
        outs = dict(zip(names, sess.run(None, {"image": batch})))
        r = ref[:len(batch)]
        worst = max(worst, float(np.abs(outs[PROBS_NAME] - r).max()))
        for k, name in enumerate(names[1:]):
            worst = max(worst, float(np.abs(outs[name] - r[:, k]).max()))
    return worst


def coreml_parity(path, model, images):
    """max |Core ML program (NumPy interpreter) - tinyconv| over all outputs."""
    from .mil_check import CoreMLProgram
    outs = CoreMLProgram(path).evaluate(images)
    ref = reference_proba(model, images)
    worst = float(np.abs(outs.pop(PROBS_NAME) - ref).max())
    for k, name in enumerate(outs):
        worst = max(worst, float(np.abs(outs[name] - ref[:, k]).max()))
    return worst


def export(source=None, out=None, float16=False, runs_dir="runs", coreml=True, log=print):
    """Export the checkpoint at ``source`` (file, run folder, experiment folder -> its run with the lowest
    validation loss, None = the newest run or experiment). Returns the report dict.

    float16 makes the Core ML program float16 (the ONNX model stays float32, the reference).
    Without a usable coremltools the ONNX model is still written and the report says what to install.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is first imported
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401  (the parity check runs the exported graph)
    except ImportError as exc:
        raise RuntimeError(f"exporting needs onnx and onnxruntime ({exc}): they are tinyconv dependencies: pip install -e . again") from None
    checkpoint = find_checkpoint(source, runs_dir, announce=log)
    model, meta = load_trained(checkpoint)
    out = Path(out) if out is not None else default_out(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    md = export_metadata(meta, checkpoint)
    attributes, image_size = md["attributes"], tuple(md["image_size"])
    ops = fold_model(model)
    images = parity_images(image_size, n=4 if image_size[0] * image_size[1] > 20000 else 8)
    report = {"checkpoint": str(checkpoint), "out": str(out), "metadata": md}

    onnx_path = out / "model.onnx"
    write_onnx(ops, attributes, image_size, md, onnx_path)
    report["onnx"] = {"path": str(onnx_path), "max_abs_diff": onnx_parity(onnx_path, model, images),
                      "tolerance": ONNX_TOL}
    log(f"wrote {onnx_path} (ONNX Runtime vs tinyconv: max |diff| {report['onnx']['max_abs_diff']:.2e})")

    ok, why = coreml_status() if coreml else (False, "skipped (coreml=False)")
    if ok:
        ml_path = out / "model.mlpackage"
        if ml_path.exists():
            shutil.rmtree(ml_path)  # coremltools refuses to overwrite a package
        write_coreml(ops, attributes, image_size, md, ml_path, float16=float16)
        diff = coreml_parity(ml_path, model, images[:2])
        report["coreml"] = {"path": str(ml_path), "precision": "float16" if float16 else "float32",
                            "max_abs_diff": diff, "tolerance": COREML_FP16_TOL if float16 else COREML_TOL,
                            "checked_with": "tinyconv.export.mil_check (NumPy interpreter); "
                                            "run scripts/verify_coreml_macos.py on a Mac for Core ML itself"}
        log(f"wrote {ml_path} ({report['coreml']['precision']}; Core ML program through the NumPy "
            f"interpreter vs tinyconv: max |diff| {diff:.2e})")
    else:
        report["coreml"] = {"skipped": why}
        log(f"no model.mlpackage: {why}")
    if md["synthetic"]:
        log("note: this model was trained on tinyconv's SYNTHETIC faces, not CelebA")
    failures = [k for k in ("onnx", "coreml") if report[k].get("max_abs_diff", 0) > report[k].get("tolerance", 1)]
    report["ok"] = not failures
    with open(out / "export.json", "w") as f:
        json.dump(report, f, indent=2)
    if failures:
        raise RuntimeError(f"exported {', '.join(failures)} model(s) disagree with tinyconv beyond tolerance: "
                           f"see {out / 'export.json'}")
    return report
