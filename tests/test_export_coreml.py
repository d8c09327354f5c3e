"""model.mlpackage read back on Linux: descriptions, image preprocessing, and the NumPy interpreter's
probabilities against tinyconv (Core ML itself predicts only on macOS: scripts/verify_coreml_macos.py)."""
import numpy as np
import pytest

pytest.importorskip("coremltools")

from tinyconv.data.batches import to_model_input  # noqa: E402
from tinyconv.data.resize import RESIZE_POLICY  # noqa: E402
from tinyconv.export.coreml_export import coreml_status, write_coreml  # noqa: E402
from tinyconv.export.exporter import COREML_FP16_TOL, COREML_TOL, parity_images  # noqa: E402
from tinyconv.export.fold import fold_model  # noqa: E402
from test_export_helpers import ATTRS, face_images, trained_like_model  # noqa: E402

OK, WHY = coreml_status()
pytestmark = pytest.mark.skipif(not OK, reason=f"cannot write .mlpackage here: {WHY}")
H, W = 54, 44
META = {"attributes": ATTRS, "image_size": [H, W], "resize_policy": RESIZE_POLICY, "synthetic": True,
        "tinyconv_version": "0.1.0", "training_run": "runs/x"}


@pytest.fixture(scope="module")
def model():
    return trained_like_model(H, W)


@pytest.fixture(scope="module")
def packages(model, tmp_path_factory):
    from tinyconv.export.mil_check import CoreMLProgram
    tmp = tmp_path_factory.mktemp("coreml")
    ops = fold_model(model)
    fp32 = write_coreml(ops, ATTRS, (H, W), META, tmp / "fp32.mlpackage")
    fp16 = write_coreml(ops, ATTRS, (H, W), META, tmp / "fp16.mlpackage", float16=True)
    return CoreMLProgram(fp32), CoreMLProgram(fp16)


def test_descriptions_and_image_preprocessing(packages):
    d = packages[0].describe()
    assert d["input"]["name"] == "image"
    assert (d["input"]["width"], d["input"]["height"]) == (W, H)
    assert d["input"]["color_space"] == "RGB"
    assert d["scale"] == pytest.approx(1 / 255, rel=1e-6) and d["bias"] == 0.0
    assert d["outputs"] == {"probabilities": (1, 3), "Eyeglasses": (1,), "Male": (1,), "Smiling": (1,)}
    assert "Smiling" in d["output_descriptions"]["Smiling"]
    assert d["author"] == "tinyconv" and d["license"] and "Eyeglasses" in d["short_description"]
    md = d["metadata"]
    assert md["classes"] == "Eyeglasses,Male,Smiling" and md["resize_policy"] == RESIZE_POLICY
    assert md["synthetic"] == "true" and md["precision"] == "float32"
    assert "centerCrop" in d["input"]["description"]


@pytest.mark.parametrize("kind", ["random", "faces"])
def test_float32_program_matches_tinyconv(packages, model, kind):
    images = parity_images((H, W), n=4, seed=5) if kind == "random" else face_images(3, H, W)
    ref = model.predict_proba(to_model_input(images, np))
    out = packages[0].evaluate(images)
    assert np.abs(out["probabilities"] - ref).max() <= COREML_TOL
    for k, name in enumerate(ATTRS):
        assert np.abs(out[name] - ref[:, k]).max() <= COREML_TOL


def test_float16_program_within_its_documented_bound(packages, model):
    fp16 = packages[1]
    assert fp16.describe()["metadata"]["precision"] == "float16"
    consts = fp16._consts()
    assert any(getattr(v, "dtype", None) == np.float16 and v.ndim == 4 for v in consts.values())  # fp16 weights
    images = face_images(3, H, W)
    ref = model.predict_proba(to_model_input(images, np))
    diff = np.abs(fp16.evaluate(images)["probabilities"] - ref).max()
    assert 1e-6 < diff <= COREML_FP16_TOL  # float16 really rounds, and stays within the bound


def test_interpreter_detects_a_wrong_program(model, tmp_path):
    from tinyconv.export.mil_check import CoreMLProgram
    other = trained_like_model(H, W, seed=9)
    prog = CoreMLProgram(write_coreml(fold_model(other), ATTRS, (H, W), META, tmp_path / "o.mlpackage"))
    images = face_images(2, H, W)
    ref = model.predict_proba(to_model_input(images, np))
    assert np.abs(prog.evaluate(images)["probabilities"] - ref).max() > 1e-3


def test_interpreter_ops_by_hand():
    # The interpreter's conv and max_pool against hand-computed values (not against themselves).
    from tinyconv.export.mil_check import _OPS
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    args = {"x": x, "weight": np.ones((1, 1, 3, 3), np.float32), "bias": np.array([1.0], np.float32),
            "strides": [1, 1], "pad_type": "custom", "pad": [1, 1, 1, 1]}
    y = _OPS["conv"](lambda k, d=None: args.get(k, d))
    assert y[0, 0, 0, 0] == 0 + 1 + 4 + 5 + 1 and y[0, 0, 1, 1] == sum([0, 1, 2, 4, 5, 6, 8, 9, 10]) + 1
    args = {"x": x, "kernel_sizes": [2, 2], "strides": [2, 2]}
    assert _OPS["max_pool"](lambda k, d=None: args.get(k, d))[0, 0].tolist() == [[5, 7], [13, 15]]


def test_full_size_218x178(tmp_path):
    from tinyconv.export.mil_check import CoreMLProgram
    model = trained_like_model(218, 178)
    prog = CoreMLProgram(write_coreml(fold_model(model), ATTRS, (218, 178), META, tmp_path / "f.mlpackage"))
    assert (prog.describe()["input"]["width"], prog.describe()["input"]["height"]) == (178, 218)
    images = face_images(1, 218, 178)
    ref = model.predict_proba(to_model_input(images, np))
    assert np.abs(prog.evaluate(images)["probabilities"] - ref).max() <= COREML_TOL
