"""model.mlpackage: a Core ML program built with coremltools' MIL builder from the folded ops.

coremltools no longer converts ONNX, so the program is written op by op (``mb.conv``, ``mb.relu``,
``mb.max_pool``, ``mb.reduce_mean``, ``mb.linear``, ``mb.sigmoid``) and converted with
``ct.convert(program, convert_to="mlprogram")``. The input is an ``ImageType`` (RGB, W x H of the
model, scale 1/255, bias 0): Core ML's own image preprocessing does the scaling, so an app passes a
CVPixelBuffer of the right size. Outputs: ``probabilities`` (1, K) and one (1,) output per attribute.
Core ML's ClassifierConfig is single-label (top-1), so the attribute names go into the metadata.

Writing a package needs coremltools' compiled ``libmilstoragepython`` (shipped in the macOS and
Linux x86_64 wheels); :func:`coreml_status` says whether this machine has it.
"""
import contextlib
import io
import json
import logging

import numpy as np

from .onnx_export import output_name

INPUT_NAME = "image"
PROBS_NAME = "probabilities"
INSTALL_HINT = ("install the optional extra: pip install -e .[coreml] (coremltools >= 8; its wheels for "
                "macOS and Linux x86_64 include the libmilstoragepython library that writes .mlpackage)")


@contextlib.contextmanager
def _quiet():
    """coremltools logs version warnings on import and draws progress bars while converting."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    loggers = [logging.getLogger(n) for n in ("coremltools", "coremltools.models")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
        for lg, s in zip(loggers, saved):
            lg.setLevel(s)


def import_coremltools():
    with _quiet():
        import coremltools as ct
    return ct


def coreml_status():
    """(True, version text) when this machine can write .mlpackage files, else (False, why + what to install)."""
    try:
        ct = import_coremltools()
    except Exception as exc:  # ImportError, or a broken install raising something else
        return False, f"coremltools is not installed ({exc}); {INSTALL_HINT}"
    try:
        from coremltools.libmilstoragepython import _BlobStorageWriter  # noqa: F401
    except Exception as exc:
        return False, (f"coremltools {ct.__version__} cannot write .mlpackage here: its compiled "
                       f"libmilstoragepython is missing ({exc}); {INSTALL_HINT}")
    return True, f"coremltools {ct.__version__}"


def build_program(ops, attributes, image_size):
    """Folded ops -> a MIL Program taking x (1, 3, H, W) float32 in [0, 1] (after Core ML's scaling)."""
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    H, W = image_size

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, H, W))], opset_version=ct.target.iOS15)
    def prog(image):
        x = image
        for op in ops:
            if op["op"] == "conv":
                (ph, pw) = op["pad"]
                x = mb.conv(x=x, weight=op["w"], bias=op["b"], strides=list(op["stride"]),
                            pad_type="custom", pad=[ph, ph, pw, pw], name=op["name"])
            elif op["op"] == "relu":
                x = mb.relu(x=x)
            elif op["op"] == "maxpool":
                x = mb.max_pool(x=x, kernel_sizes=list(op["kernel"]), strides=list(op["stride"]),
                                pad_type="valid")  # valid = floor mode
            elif op["op"] == "gap":
                x = mb.reduce_mean(x=x, axes=[2, 3], keep_dims=False)
            elif op["op"] == "flatten":
                x = mb.reshape(x=x, shape=[1, -1])
            elif op["op"] == "dense":
                # MIL's linear computes x @ weight.T + bias with weight (out, in): transpose ours.
                x = mb.linear(x=x, weight=np.ascontiguousarray(op["w"].T), bias=op["b"],
                              name="logits" if op is ops[-1] else op["name"])
        probs = mb.sigmoid(x=x, name=PROBS_NAME)
        outs = [probs]
        for k, attr in enumerate(attributes):
            col = mb.slice_by_index(x=probs, begin=[0, k], end=[1, k + 1], name=f"{output_name(attr)}_2d")
            outs.append(mb.squeeze(x=col, axes=[1], name=output_name(attr)))
        return tuple(outs)

    return prog


def write_coreml(ops, attributes, image_size, metadata, path, float16=False):
    """Build, convert and save model.mlpackage; returns the path. float16: weights and compute in fp16."""
    ct = import_coremltools()
    H, W = image_size
    prog = build_program(ops, attributes, image_size)
    names = [PROBS_NAME] + [output_name(a) for a in attributes]
    with _quiet():
        mlmodel = ct.convert(
            prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
            inputs=[ct.ImageType(name=INPUT_NAME, shape=(1, 3, H, W), scale=1 / 255.0, bias=[0, 0, 0],
                                 color_layout=ct.colorlayout.RGB)],
            outputs=[ct.TensorType(name=n) for n in names],
            compute_precision=ct.precision.FLOAT16 if float16 else ct.precision.FLOAT32)
    mlmodel.author = "tinyconv"
    mlmodel.license = str(metadata.get("license", "MIT (model code); the weights inherit the training data's terms"))
    mlmodel.short_description = (f"Multi-label face attributes ({', '.join(attributes)}): independent sigmoid "
                                 f"probabilities. Resize photos to {W}x{H} (W x H) by the resize policy first.")
    mlmodel.version = str(metadata.get("tinyconv_version", ""))
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image, {W} wide x {H} high, already centre-cropped and resized by the resize policy "
        f"(Vision: imageCropAndScaleOption = .centerCrop); Core ML scales the pixels by 1/255")
    mlmodel.output_description[PROBS_NAME] = f"probabilities (1, {len(attributes)}): {', '.join(attributes)}"
    for k, attr in enumerate(attributes):
        mlmodel.output_description[output_name(attr)] = f"probability of {attr} (column {k} of {PROBS_NAME})"
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta["classes"] = ",".join(attributes)  # the class labels (multi-label: no ClassifierConfig)
    meta["precision"] = "float16" if float16 else "float32"
    for k, v in meta.items():
        mlmodel.user_defined_metadata[k] = v
    with _quiet():
        mlmodel.save(str(path))
    return path
