"""model.onnx: valid at opset 17 / IR 8, preprocessing inside, and ONNX Runtime agrees with tinyconv."""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tinyconv.data.batches import to_model_input  # noqa: E402
from tinyconv.data.resize import RESIZE_POLICY  # noqa: E402
from tinyconv.export.exporter import export_metadata, onnx_parity, parity_images  # noqa: E402
from tinyconv.export.fold import fold_model  # noqa: E402
from tinyconv.export.onnx_export import ort_session, write_onnx  # noqa: E402
from test_export_helpers import ATTRS, face_images, make_run  # noqa: E402

H, W = 54, 44
TOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    run_dir, model = make_run(tmp / "runs")
    from tinyconv.checkpoint import load_checkpoint
    md = export_metadata(load_checkpoint(run_dir / "checkpoints" / "best.h5")["meta"],
                         run_dir / "checkpoints" / "best.h5")
    path = write_onnx(fold_model(model), ATTRS, (H, W), md, tmp / "model.onnx")
    return path, model, run_dir


def test_model_is_valid_opset17_ir8_with_uint8_nhwc_input(exported):
    path, _, _ = exported
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == 8
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    (inp,) = m.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", H, W, 3]
    assert [o.name for o in m.graph.output] == ["probabilities"] + ATTRS
    ops = [n.op_type for n in m.graph.node]
    assert ops[:3] == ["Cast", "Div", "Transpose"]
    assert "BatchNormalization" not in ops and "Dropout" not in ops and ops.count("Conv") == 5


def test_metadata_names_attributes_size_policy_run_and_version(exported):
    path, _, run_dir = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["attributes"]) == ATTRS
    assert json.loads(props["image_size"]) == [H, W]
    assert props["resize_policy"] == RESIZE_POLICY and props["resize_filter"] == "BILINEAR"
    assert props["training_run"] == str(run_dir)
    assert props["synthetic"] == "true"
    assert props["tinyconv_version"] and "uint8" in props["input"]


@pytest.mark.parametrize("kind", ["random", "faces"])
@pytest.mark.parametrize("batch", [1, 8])
def test_onnx_runtime_matches_tinyconv(exported, kind, batch):
    path, model, _ = exported
    images = parity_images((H, W), n=8, seed=3) if kind == "random" else face_images(8, H, W)
    images = images[:batch]
    ref = model.predict_proba(to_model_input(images, np))
    outs = ort_session(path).run(None, {"image": images})
    assert outs[0].shape == (batch, 3)
    assert np.abs(outs[0] - ref).max() <= TOL
    for k in range(3):  # the per-attribute outputs are the matching columns
        assert outs[1 + k].shape == (batch,)
        np.testing.assert_array_equal(outs[1 + k], outs[0][:, k])
    assert ref.std() > 1e-3  # the comparison is not between constants


def test_parity_check_fails_for_a_wrong_export(exported, tmp_path):
    # A graph exported from a different model (BatchNorm untrained) must fail the same check.
    path, model, _ = exported
    from test_export_helpers import trained_like_model
    other = trained_like_model(H, W, seed=7)
    bad = write_onnx(fold_model(other), ATTRS, (H, W), {"tinyconv_version": "x"}, tmp_path / "bad.onnx")
    assert onnx_parity(bad, model, parity_images((H, W))) > 1e-3
    assert onnx_parity(path, model, parity_images((H, W))) <= TOL


def test_full_size_218x178(tmp_path):
    """The real input size, batch 1 and 8 (one test: the forward pass is 1 GFLOP per image)."""
    _, model = make_run(tmp_path / "runs", H=218, W=178)
    path = write_onnx(fold_model(model), ATTRS, (218, 178), {"tinyconv_version": "x"}, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert onnx_parity(path, model, face_images(8, 218, 178)) <= TOL
