"""HDF5 checkpoints: exact round trip, atomic replacement, clear errors on bad files."""
import os

import h5py
import numpy as np
import pytest

from tinyconv import checkpoint
from tinyconv.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint


def sample_state():
    rng = np.random.default_rng(7)
    rng.random(3)                                   # move the state off its seed
    nan_bits = np.array([0x7FC00001, 0xFFC12345, 0x3F800000, 0x00000001], np.uint32)
    return {
        "model": {"conv1": {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                            "b": np.zeros(4, np.float32)},
                  "bn1": {"running_mean": rng.standard_normal(4), "count": np.array(7, np.int64)}},
        "optimizer": {"t": 12, "lr": 0.001, "m": {"conv1.w": np.full((4, 3, 3, 3), 1e-8, np.float32)}},
        "rng": rng.bit_generator.state,             # a dict with 128-bit Python ints
        "odd_arrays": {"nan_payloads": nan_bits.view(np.float32), "u64": np.array([2**64 - 1, 0], np.uint64),
                       "f16": np.array([1.5, -0.0], np.float16), "mask": np.array([True, False]),
                       "c64": np.array([1 + 2j], np.complex64), "empty": np.zeros((0, 5), np.float64),
                       "zero_d": np.array(3.25), "np_scalar": np.float32(0.1), "np_int": np.int64(-5)},
        "scalars": {"epoch": 3, "huge": 3**100, "neg": -(2**70), "pi": 0.1 + 0.2, "nan": float("nan"),
                    "inf": float("-inf"), "flag": False, "name": "seed_cnn µ", "nothing": None},
        "history": [{"epoch": 1, "val_loss": 0.7}, {"epoch": 2, "val_loss": 0.65, "note": None}],
        "empty": {},
        "schedule": {"schedule": "LRDecayOnPlateau", "epoch": 3, "current": 0.05, "last_change": None},
    }


def assert_same(a, b, where="state"):
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), f"{where}: bits differ"
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


def test_round_trip_is_exact(tmp_path):
    state = sample_state()
    path = tmp_path / "last.h5"
    save_checkpoint(path, state, meta={"epoch": 3, "metrics": {"val_loss": 0.65}})
    back = load_checkpoint(path)
    assert_same(state, back)
    assert read_checkpoint_meta(path) == {"epoch": 3, "metrics": {"val_loss": 0.65}}


def test_rng_state_resumes_the_same_stream(tmp_path):
    rng = np.random.default_rng(123)
    rng.random(10)
    save_checkpoint(tmp_path / "c.h5", {"rng": rng.bit_generator.state})
    expected = rng.random(5)
    other = np.random.default_rng()
    other.bit_generator.state = load_checkpoint(tmp_path / "c.h5")["rng"]
    assert np.array_equal(other.random(5), expected)


def test_file_is_marked_and_meta_defaults_to_empty(tmp_path):
    save_checkpoint(tmp_path / "c.h5", {"x": np.ones(2)})
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f.attrs["format"] == "tinyconv-checkpoint" and f.attrs["version"] == 1
    assert read_checkpoint_meta(tmp_path / "c.h5") == {}


def test_overwrite_replaces_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "last.h5"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path) == {"epoch": 2}
    assert os.listdir(tmp_path) == ["last.h5"]


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, exc):
    path = tmp_path / "last.h5"
    save_checkpoint(path, sample_state(), meta={"epoch": 3})
    before = path.read_bytes()
    calls = []
    real = checkpoint._write_array

    def dies_on_third_array(*args):
        calls.append(1)
        if len(calls) == 3:
            raise exc
        real(*args)

    monkeypatch.setattr(checkpoint, "_write_array", dies_on_third_array)
    with pytest.raises(type(exc)):
        save_checkpoint(path, {"a": np.ones(3), "b": np.ones(3), "c": np.ones(3)}, meta={"epoch": 4})
    assert len(calls) == 3
    assert path.read_bytes() == before
    assert_same(load_checkpoint(path), sample_state())
    assert read_checkpoint_meta(path) == {"epoch": 3}
    assert os.listdir(tmp_path) == ["last.h5"]


def test_crash_at_the_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.h5"
    save_checkpoint(path, {"epoch": 1})

    def no_rename(src, dst):
        assert os.path.dirname(src) == os.path.dirname(dst) and src.endswith(f".tmp-{os.getpid()}")
        raise OSError("killed before the rename")

    monkeypatch.setattr(checkpoint.os, "replace", no_rename)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.h5"]


@pytest.mark.parametrize("state, match", [
    ({"t": (1, 2)}, "'t': cannot store a tuple .*come back as a list"),
    ({"a": {"b": [1, np.float64(2.0)]}}, r"'a/b\[1\]': cannot store a float64"),
    ({"d": [{1: 2}]}, r"'d\[0\]': dict key 1 is not a string"),
    ({"d": {"x": {1: 2}}}, "key 'd/x/1': keys must be"),
    ({"a/b": 1}, "keys must be non-empty strings without '/'"),
    ({3: 1}, "keys must be"),
    ({"s": np.array(["ab"])}, "dtype <U2 cannot be stored exactly"),
    ({"o": np.array([1, None])}, "dtype object"),
    ({"f": open}, "cannot store a builtin_function_or_method"),
])
def test_unstorable_values_raise_type_error_and_write_nothing(tmp_path, state, match):
    with pytest.raises(TypeError, match=match):
        save_checkpoint(tmp_path / "c.h5", state)
    assert os.listdir(tmp_path) == []


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'nope.h5'}: no such file"):
        load_checkpoint(tmp_path / "nope.h5")


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "c.h5"
    path.write_bytes(b"\x80\x04 this is a pickle, say" * 10)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: not an HDF5 file"):
        load_checkpoint(path)
    with pytest.raises(ValueError):                 # CheckpointError is a ValueError
        read_checkpoint_meta(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "c.h5"
    save_checkpoint(path, sample_state())
    data = path.read_bytes()
    for size in (0, 7, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=f"checkpoint {path}: (not an HDF5|a damaged HDF5)"):
            load_checkpoint(path)


def test_hdf5_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 3)))
    with pytest.raises(CheckpointError, match="an HDF5 file but not a tinyconv checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a tinyconv checkpoint"):
        read_checkpoint_meta(path)


def test_newer_version_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    save_checkpoint(path, {"x": 1})
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 99
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_damaged_group_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "c.h5"
    save_checkpoint(path, {"model": {"w": np.ones(3)}})
    with h5py.File(path, "r+") as f:
        del f["model"]["w"]
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)


@pytest.mark.gpu
def test_cupy_leaves_are_saved_as_numpy(tmp_path):
    cp = pytest.importorskip("cupy")
    from tinyconv.backend import gpu_available
    if not gpu_available():
        pytest.skip("no CUDA device")
    w = cp.arange(6, dtype=cp.float32).reshape(2, 3)
    save_checkpoint(tmp_path / "c.h5", {"w": w})
    back = load_checkpoint(tmp_path / "c.h5")["w"]
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    assert np.array_equal(back, w.get())
