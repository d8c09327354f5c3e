"""Run the exported Core ML model with Core ML itself and compare it with tinyconv (macOS only).

    python scripts/verify_coreml_macos.py RUN_DIR/export [--images a.jpg b.png ...] [--tol 1e-4]

Each image (default: 8 generated test images) goes through the resize policy once; the same uint8
pixels go to tinyconv (checkpoint named in the export's metadata) and, as a PIL image, to
``MLModel.predict``. Prints the max absolute difference per output and exits 1 beyond ``--tol``.
Core ML may run on the GPU or Neural Engine in reduced precision: compute units default to CPU_ONLY
here so the float32 comparison is meaningful; pass --compute-units ALL to see the device's numbers.
Not run by the project's own machines (Linux): the report of its first run belongs in the README.
"""
import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", help="folder written by export.py (model.mlpackage, export.json)")
    ap.add_argument("--images", nargs="*", default=[], help="photos to check (any size)")
    ap.add_argument("--tol", type=float, default=None, help="default: 1e-4 (float32), 5e-3 (float16)")
    ap.add_argument("--compute-units", default="CPU_ONLY", choices=["CPU_ONLY", "CPU_AND_GPU", "ALL"])
    args = ap.parse_args(argv)
    if platform.system() != "Darwin":
        print("verify_coreml_macos: Core ML predicts only on macOS; on Linux use the NumPy interpreter "
              "(export.py already ran it, see export.json)", file=sys.stderr)
        return 2

    import coremltools as ct
    from PIL import Image

    from tinyconv.data.batches import to_model_input
    from tinyconv.export.exporter import parity_images
    from tinyconv.export.source import load_trained
    from tinyconv.predict import prepare_images

    export_dir = Path(args.export_dir)
    report = json.loads((export_dir / "export.json").read_text())
    model, meta = load_trained(report["checkpoint"])
    H, W = meta["image_size"]
    attributes = meta["attributes"]
    mlmodel = ct.models.MLModel(str(export_dir / "model.mlpackage"),
                                compute_units=getattr(ct.ComputeUnit, args.compute_units))
    fp16 = mlmodel.user_defined_metadata.get("precision") == "float16"
    tol = args.tol if args.tol is not None else (5e-3 if fp16 else 1e-4)

    images = prepare_images(args.images, (H, W)) if args.images else parity_images((H, W), n=8)
    ref = model.predict_proba(to_model_input(images, np))
    worst = {}
    for img, r in zip(images, ref):
        out = mlmodel.predict({"image": Image.fromarray(img, "RGB")})
        worst["probabilities"] = max(worst.get("probabilities", 0.0),
                                     float(np.abs(np.asarray(out["probabilities"]).ravel() - r).max()))
        for k, a in enumerate(attributes):
            name = a if a.isidentifier() else f"attr_{a}"
            worst[name] = max(worst.get(name, 0.0), float(abs(np.asarray(out[name]).ravel()[0] - r[k])))
    print(f"Core ML ({args.compute_units}, {'float16' if fp16 else 'float32'}) vs tinyconv on {len(images)} "
          f"images, macOS {platform.mac_ver()[0]}, coremltools {ct.__version__}:")
    for name, d in worst.items():
        print(f"  {name:<16} max |diff| {d:.2e}")
    ok = max(worst.values()) <= tol
    print(f"{'OK' if ok else 'FAIL'}: tolerance {tol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
