"""A model file is checked before use: a spoofed, damaged or mismatched model.onnx or checkpoint is
refused with ModelSourceError naming the file, never run into a traceback or a wrong table."""
import os

import numpy as np
import pytest

import tinyconv.predict as predict_module
from tinyconv.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinyconv.predict import ModelSourceError, load
from test_export_helpers import make_run

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tinyconv.export.exporter import export
    run_dir, _ = make_run(tmp_path_factory.mktemp("predict_model") / "runs")
    export(run_dir, coreml=False, log=lambda *a: None)
    return run_dir


def _save(tmp_path, name, model=None, data=None):
    folder = tmp_path / name
    folder.mkdir()
    if model is not None:
        onnx.save(model, str(folder / "model.onnx"))
    else:
        (folder / "model.onnx").write_bytes(data)
    return folder / "model.onnx"


def _with_meta(model, **changes):
    for p in model.metadata_props:
        if p.key in changes:
            p.value = changes[p.key]
    return model


def _other_model():
    """A valid ONNX model of another network: float (1, 3, 32, 32) -> (1, 10)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                               helper.make_node("Flatten", ["p"], ["f"]),
                               helper.make_node("Gemm", ["f", "w"], ["y"])], "other", [x], [y],
                              initializer=[numpy_helper.from_array(np.ones((3, 10), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def spoofed_models(exported, tmp_path):
    """{case: (model.onnx path, words the error must contain)}."""
    good = exported / "export" / "model.onnx"
    data = good.read_bytes()
    tinyconv_meta = onnx.load(str(good)).metadata_props
    other_with_meta = _other_model()
    other_with_meta.metadata_props.extend(tinyconv_meta)
    external = onnx.load(str(good))
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save(external, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return {
        "random bytes": (_save(tmp_path, "random", data=os.urandom(4096)), "not an ONNX model"),
        "truncated": (_save(tmp_path, "truncated", data=data[:len(data) // 2]), "not an ONNX model"),
        "empty file": (_save(tmp_path, "empty", data=b""), "not an ONNX model (no graph"),
        "another model": (_save(tmp_path, "other", _other_model()), "not exported by tinyconv"),
        "another model, tinyconv metadata": (_save(tmp_path, "other_meta", other_with_meta),
                                             "graph takes x float (1, 3, 32, 32)"),
        "metadata image_size differs from the graph": (
            _save(tmp_path, "size", _with_meta(onnx.load(str(good)), image_size="[100, 80]")),
            "export.py writes image uint8 (N, 100, 80, 3)"),
        "metadata names 2 attributes, the graph has 3": (
            _save(tmp_path, "attrs", _with_meta(onnx.load(str(good)), attributes='["A", "B"]')), "output #0"),
        "metadata image_size 100000 x 100000": (
            _save(tmp_path, "huge", _with_meta(onnx.load(str(good)), image_size="[100000, 100000]")),
            "image_size"),
        "metadata attributes not a list": (
            _save(tmp_path, "attr_text", _with_meta(onnx.load(str(good)), attributes='"Smiling"')),
            "not a list of attribute names"),
        "external data": (folder / "model.onnx", "external data"),
    }


def test_spoofed_onnx_files_are_refused_at_load_naming_the_file(exported, tmp_path):
    for case, (path, words) in spoofed_models(exported, tmp_path).items():
        with pytest.raises(ModelSourceError) as info:
            load(path)
        msg = str(info.value)
        assert msg.startswith(str(path)) and words in msg and "\n" not in msg, (case, msg)


def test_an_onnx_file_over_the_size_cap_is_refused_unread(exported, monkeypatch):
    monkeypatch.setattr(predict_module, "MAX_ONNX_BYTES", 1000)
    with pytest.raises(ModelSourceError, match="over 0 MiB"):
        load(exported / "export")


def test_a_model_whose_outputs_are_not_probabilities_is_an_error(exported, tmp_path):
    broken = onnx.load(str(exported / "export" / "model.onnx"))
    for t in broken.graph.initializer:
        if t.name == "c_255":  # uint8 / 0: inf and NaN all the way to the outputs
            t.CopyFrom(numpy_helper.from_array(np.array(0.0, np.float32), "c_255"))
    m = load(_save(tmp_path, "nan", broken))
    with pytest.raises(ModelSourceError, match="not probabilities"):
        m.predict(np.zeros((60, 50, 3), np.uint8))


def _checkpoint_with(run_dir, tmp_path, **meta):
    state = load_checkpoint(run_dir / "checkpoints" / "best.h5")
    state["meta"].update(meta)
    path = tmp_path / f"{'-'.join(meta)}.h5"
    save_checkpoint(path, state)
    return path


def test_checkpoint_metadata_must_match_its_model(exported, tmp_path):
    cases = {"attributes": (["A", "B"], "3 outputs but its metadata names 2"),
             "image_size": ([100000, 100000], "image_size"),
             "attributes-text": ("ABC", "not a list")}
    for key, (value, words) in cases.items():
        path = _checkpoint_with(exported, tmp_path, **{key.split("-")[0]: value})
        with pytest.raises(ModelSourceError, match=words):
            load(path)


def test_a_checkpoint_with_nan_weights_is_refused_not_predicted(exported, tmp_path):
    state = load_checkpoint(exported / "checkpoints" / "best.h5")
    state["model"]["conv2d.w"][0, 0, 0, 0] = np.nan  # ReLU and max-pool would hide it in the output
    path = tmp_path / "nan.h5"
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="conv2d.w holds NaN or infinity"):
        load(path)
