"""A checkpoint is untrusted input. Files crafted with h5py try to smuggle another file's bytes in,
to claim arrays the file does not hold, or to make the reader allocate or recurse without bound;
each is refused by load_checkpoint and read_checkpoint_meta with a one-line CheckpointError that
names the file and the object. Then evaluate.py on bad checkpoints: one line, never a traceback."""
import importlib.util
import json
import math
import re
import shutil
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest

from tinyconv import checkpoint, seed_cnn
from tinyconv.checkpoint import ArrayInfo, CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint
from tinyconv.models import check_state_fits

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"SECRET-TOKEN-0123 " * 64
READERS = {"load": load_checkpoint, "shapes_only": partial(load_checkpoint, shapes_only=True),
           "meta": read_checkpoint_meta}


@pytest.fixture
def ckpt(tmp_path):
    """A training-like checkpoint of a small seed_cnn (dense.w is (24, 3) float32: 288 bytes)."""
    model = seed_cnn(input_shape=(3, 32, 32), width=0.125, seed=1)
    meta = {"model": model.config, "attributes": ["a", "b", "c"], "image_size": [32, 32]}
    path = tmp_path / "best.h5"
    save_checkpoint(path, {"meta": meta, "model": model.state_dict()}, meta=meta)
    return path


@pytest.fixture
def secret_h5(tmp_path):
    """Another HDF5 file whose /x holds the secret's bytes as a (24, 3) float32 array."""
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.frombuffer(SECRET[:288], np.float32).reshape(24, 3)
    return path


def replace_dense_w(path, make):
    """Delete model/dense.w and let ``make(group, key, shape, dtype)`` put something in its place."""
    with h5py.File(path, "r+") as f:
        g = f["model"]
        shape, dtype = g["dense.w"].shape, g["dense.w"].dtype
        del g["dense.w"]
        make(g, "dense.w", shape, dtype)


def assert_refused(path, match):
    for name, read in READERS.items():
        with pytest.raises(CheckpointError, match=match) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(f"checkpoint {path}: "), (name, message)
        assert "\n" not in message and "SECRET" not in message, (name, message)


# --- data from elsewhere ---------------------------------------------------------------------

def test_external_storage_is_refused_and_its_bytes_never_come_back(ckpt, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    replace_dense_w(ckpt, lambda g, k, shape, dtype: g.create_dataset(
        k, shape, dtype, external=[(str(secret), 0, math.prod(shape) * dtype.itemsize)]))
    assert_refused(ckpt, r"'model/dense.w' keeps its data outside the checkpoint, in .*secret.txt; refused")


def test_external_link_is_refused(ckpt, secret_h5):
    replace_dense_w(ckpt, lambda g, k, shape, dtype: g.__setitem__(k, h5py.ExternalLink(str(secret_h5), "/x")))
    assert_refused(ckpt, r"'model/dense.w' is an external link to .*other.h5:/x; refused")


def test_soft_link_is_refused(ckpt):
    def make(g, key, shape, dtype):
        g.file["stash"] = np.zeros(shape, dtype)
        g[key] = h5py.SoftLink("/stash")
    replace_dense_w(ckpt, make)
    assert_refused(ckpt, "'model/dense.w' is a soft link to /stash; refused")


def test_virtual_dataset_is_refused(ckpt, secret_h5):
    def make(g, key, shape, dtype):
        layout = h5py.VirtualLayout(shape, dtype)
        layout[...] = h5py.VirtualSource(str(secret_h5), "x", shape=shape)
        g.create_virtual_dataset(key, layout)
    replace_dense_w(ckpt, make)
    assert_refused(ckpt, "'model/dense.w' is a virtual dataset")


def test_a_key_that_is_a_path_is_not_followed(ckpt, secret_h5):
    """A key "ext/x" would make h5py walk through the unlisted external link "ext"."""
    with h5py.File(ckpt, "r+") as f:
        g = f["model"]
        g["ext"] = h5py.ExternalLink(str(secret_h5), "/")
        g.attrs["keys"] = json.dumps(json.loads(g.attrs["keys"]) + ["ext/x"])
    assert_refused(ckpt, r"damaged \(the keys or json attribute of 'model'")


# --- arrays the file does not hold as plain numbers ------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda g, k, shape, dtype: g.create_dataset(k, shape, dtype),
     r"'model/dense.w' \(\(24, 3\) float32\) needs 288 bytes but the file holds 0 of them"),
    (lambda g, k, shape, dtype: g.create_dataset(k, (2**40,), "u1", chunks=(2**20,)),
     r"'model/dense.w' \(\(1099511627776,\) uint8\) takes the arrays past the cap of 2,147,483,648 bytes"),
    (lambda g, k, shape, dtype: g.create_dataset(k, data=np.ones(shape, dtype), compression="gzip"),
     "'model/dense.w' is stored compressed"),
    (lambda g, k, shape, dtype: g.create_dataset(k, data=h5py.Empty(dtype)), "'model/dense.w' has no shape"),
    (lambda g, k, shape, dtype: g.create_dataset(k, data=["w"] * 3, dtype=h5py.string_dtype()),
     "'model/dense.w' has dtype object"),
    (lambda g, k, shape, dtype: g.create_dataset(k, (24,), [("re", "f4"), ("im", "i4")]),
     r"'model/dense.w' has dtype \[\('re'"),
    (lambda g, k, shape, dtype: g.create_dataset(k, (3,), h5py.ref_dtype), "'model/dense.w' has dtype object"),
    (lambda g, k, shape, dtype: g.create_dataset(k, (24,), np.dtype(("f4", (3,)))), r"has dtype \('<f4', \(3,\)\)"),
    (lambda g, k, shape, dtype: g.__setitem__(k, np.dtype("f4")), "'model/dense.w' is a named datatype"),
], ids=["never-written", "sparse-1TiB", "gzip", "empty-dataspace", "strings", "compound", "references",
        "subarray-dtype", "named-datatype"])
def test_arrays_that_are_not_plain_numbers_in_the_file_are_refused(ckpt, make, match):
    replace_dense_w(ckpt, make)
    assert_refused(ckpt, match)


def test_plain_chunked_and_compact_arrays_from_other_writers_are_read(ckpt):
    w = np.arange(72, dtype=np.float32).reshape(24, 3)

    def make(g, key, shape, dtype):
        g.create_dataset(key, data=w, chunks=(5, 2))              # edge chunks: storage > nbytes
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        compact = h5py.h5d.create(g.id, b"dense.b", h5py.h5t.NATIVE_FLOAT, h5py.h5s.create_simple((3,)), dcpl=dcpl)
        compact.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array([1, 2, 3], np.float32))
    with h5py.File(ckpt, "r+") as f:
        del f["model"]["dense.b"]
    replace_dense_w(ckpt, make)
    state = load_checkpoint(ckpt)
    assert np.array_equal(state["model"]["dense.w"], w) and list(state["model"]["dense.b"]) == [1, 2, 3]


# --- sizes, counts, depth and the text attributes --------------------------------------------

def test_caps_on_objects_and_bytes(ckpt, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_OBJECTS", 10)
    assert_refused(ckpt, "past the cap of 10 groups and arrays")
    monkeypatch.setattr(checkpoint, "MAX_OBJECTS", 10_000)
    monkeypatch.setattr(checkpoint, "MAX_ARRAY_BYTES", 1000)
    assert_refused(ckpt, "takes the arrays past the cap of 1,000 bytes")


def test_a_group_that_contains_itself_is_refused_at_a_fixed_depth(ckpt):
    with h5py.File(ckpt, "r+") as f:
        g = f["model"]
        g["loop"] = g                                   # a hard link: model/loop/loop/... forever
        g.attrs["keys"] = json.dumps(json.loads(g.attrs["keys"]) + ["loop"])
    assert_refused(ckpt, "is nested more than 32 groups deep")


def test_an_oversized_json_attribute_is_refused_before_parsing(ckpt):
    with h5py.File(ckpt, "r+") as f:
        f["model"].attrs["json"] = json.dumps({"pad": [0] * (checkpoint.MAX_TEXT_CHARS // 3 + 1)})
    assert_refused(ckpt, "'model' attribute 'json' is longer than 4,194,304 characters")


@pytest.mark.parametrize("value, match", [
    (np.arange(1000.0), "'/' attribute 'meta' is not a string"),
    ("[1, 2]", "its meta is a list, not a JSON object"),
])
def test_meta_must_be_a_json_object(ckpt, value, match):
    with h5py.File(ckpt, "r+") as f:
        f.attrs["meta"] = value
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint_meta(ckpt)


# --- what keeps working -----------------------------------------------------------------------

def test_a_checkpoint_from_save_checkpoint_loads_and_shapes_only_reads_no_array(ckpt, monkeypatch):
    state = load_checkpoint(ckpt)
    model = seed_cnn(input_shape=(3, 32, 32), width=0.125, seed=1)
    assert all(np.array_equal(v, state["model"][k]) for k, v in model.state_dict().items())
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *a: pytest.fail("shapes_only read an array"))
    shapes = load_checkpoint(ckpt, shapes_only=True)
    assert shapes["meta"] == state["meta"]
    assert shapes["model"]["dense.w"] == ArrayInfo((24, 3), np.dtype(np.float32))
    check_state_fits(shapes["meta"]["model"], shapes["model"])
    assert read_checkpoint_meta(ckpt) == state["meta"]


# --- evaluate.py on bad checkpoints -----------------------------------------------------------

def _load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tinyconv.training import TrainConfig, run_experiment
    tmp = tmp_path_factory.mktemp("untrusted")
    cfg = TrainConfig(cache_dir=str(tmp / "data"), image_size=(32, 32), synthetic_count=40, progress=False,
                      epochs=1, batch_size=16, width=0.125, eval_batch_size=64, patience=0)
    run_experiment(cfg, ("constant",), tmp / "run")
    return tmp / "run"


def _shape_mismatch(state, run):
    state["model"]["dense.w"] = state["model"]["dense.w"][:5]


def _huge_width(state, run):
    state["meta"]["model"]["width"] = 1e5


def _nan_weight(state, run):
    state["model"]["conv2d.w"][0, 0, 0, 0] = np.nan


def _external_storage(state, run):
    """Written afterwards: dense.w's data is another file's bytes."""
    (run / "secret.txt").write_bytes(SECRET)


@pytest.mark.parametrize("corrupt, match", [
    (_shape_mismatch, r"the weights do not fit the recorded model: dense.w has shape \(5, 3\), "
                      r"the model expects \(24, 3\)"),
    (_huge_width, r"model config: width must be a number in \(0, 8\], got 100000.0"),
    (_nan_weight, "conv2d.w holds NaN or infinity"),
    (_external_storage, r"'model/dense.w' keeps its data outside the checkpoint, in .*secret.txt"),
], ids=["shape-mismatch", "width-1e5", "nan-weight", "external-storage"])
def test_evaluate_on_a_bad_checkpoint_is_one_line(run_dir, tmp_path, capsys, corrupt, match):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    best = run / "checkpoints" / "best.h5"
    state = load_checkpoint(best)
    corrupt(state, run)
    save_checkpoint(best, state, meta=state["meta"])
    if corrupt is _external_storage:
        replace_dense_w(best, lambda g, k, shape, dtype: g.create_dataset(
            k, shape, dtype, external=[(str(run / "secret.txt"), 0, math.prod(shape) * dtype.itemsize)]))
    rc = _load_cli().main([str(run), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("evaluate.py: error: ") and str(best) in err[-1] and re.search(match, err[-1]), err
