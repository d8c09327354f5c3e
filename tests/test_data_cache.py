"""load_dataset's cache: reuse, invalidation, .h5 sources, interrupted prepare, the synthetic flag."""
import importlib
import os
import time

import h5py
import numpy as np
import pytest

import tinyconv.data.dataset as dataset_mod
from tinyconv.data import DataError, Dataset, load_dataset, prepare

from conftest_data import copy_official, make_h5, make_torchvision_layout, synth_root  # noqa: F401

# the package re-exports the function prepare(), which hides the submodule of the same name
prepare_mod = importlib.import_module("tinyconv.data.prepare")


def count_prepares(monkeypatch):
    calls = []
    real = dataset_mod.prepare

    def spy(*a, **k):
        calls.append(a[0])
        return real(*a, **k)
    monkeypatch.setattr(dataset_mod, "prepare", spy)
    return calls


def test_cache_reused_then_rebuilt_when_source_changes(synth_root, tmp_path, monkeypatch):
    root = copy_official(synth_root, tmp_path / "celeba")
    calls = count_prepares(monkeypatch)
    cache = tmp_path / "cache"
    with load_dataset(root, image_size=(54, 44), cache_dir=cache, progress=False) as ds:
        path, n = ds.path, ds.split_size("train")
        assert path.parent == cache and path.name.startswith("celeba-54x44-") and path.suffix == ".h5"
        assert ds.synthetic  # the fixture is the synthetic set: the marker file travels with it
    with load_dataset(root, image_size=(54, 44), cache_dir=cache, progress=False) as ds:
        assert ds.path == path
    assert len(calls) == 1  # reused, fingerprint matched

    # change one label: the attribute file's bytes change -> stale -> rebuilt
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    tok = lines[2].split()
    tok[16] = "1" if tok[16] == "-1" else "-1"  # Eyeglasses (column 15) of 000001.jpg
    lines[2] = tok[0] + "".join(f" {int(t):2d}" for t in tok[1:])
    attr.write_text("\n".join(lines) + "\n")
    with load_dataset(root, image_size=(54, 44), cache_dir=cache, progress=False) as ds:
        assert ds.path == path
        assert ds.filenames("train")[0] == "000001.jpg"
        assert ds.labels("train")[0, 0] == (1 if tok[16] == "1" else 0)
    assert len(calls) == 2

    # replace an image (new bytes, new mtime) -> rebuilt again
    img = root / "img_align_celeba" / "000003.jpg"
    data = img.read_bytes()
    img.write_bytes(data)
    st = os.stat(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    load_dataset(root, image_size=(54, 44), cache_dir=cache, progress=False).close()
    assert len(calls) == 3

    # other settings -> another file, the first one is kept
    with load_dataset(root, image_size=(54, 44), attributes=["Male"], cache_dir=cache, progress=False) as ds:
        assert ds.path != path and ds.attributes == ["Male"]
    assert path.exists()


def test_h5_source_checked_against_request(tmp_path):
    f = make_h5(tmp_path / "d.h5", 50)
    with load_dataset(f, image_size=None, attributes=None) as ds:
        assert ds.image_size == (54, 44) and ds.attributes == ["A0", "A1", "A2"]
    with pytest.raises(DataError, match=r"d.h5.*54x44.*218x178"):
        load_dataset(f, image_size=(218, 178), attributes=None)
    with pytest.raises(DataError, match=r"d.h5.*attributes"):
        load_dataset(f, image_size=None, attributes=["Smiling"])
    with pytest.raises(DataError, match="missing.h5"):
        load_dataset(tmp_path / "missing.h5")


def test_interrupted_prepare_leaves_no_complete_looking_file(synth_root, tmp_path, monkeypatch):
    real, seen = prepare_mod._decode, []

    def interrupted(*a):
        seen.append(1)
        if len(seen) == 10:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(prepare_mod, "_decode", interrupted)
    out = tmp_path / "out" / "x.h5"
    with pytest.raises(KeyboardInterrupt):
        prepare(synth_root, out, image_size=(54, 44), progress=False, workers=2)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # the temporary file is gone too


def test_file_without_complete_flag_is_rejected_and_rebuilt(synth_root, tmp_path, monkeypatch):
    f = make_h5(tmp_path / "d.h5", 20)
    with h5py.File(f, "a") as h:
        del h.attrs["complete"]
    with pytest.raises(DataError, match="incomplete"):
        Dataset(f)
    cache = tmp_path / "cache"
    root = make_torchvision_layout(synth_root, tmp_path / "tv")
    with load_dataset(root, image_size=(54, 44), cache_dir=cache, progress=False) as ds:
        path = ds.path
        assert not ds.synthetic and ds.source_layout == "torchvision-folder"
    with h5py.File(path, "a") as h:
        del h.attrs["complete"]
    calls = count_prepares(monkeypatch)
    load_dataset(root, image_size=(54, 44), cache_dir=cache, progress=False).close()
    assert len(calls) == 1


def test_dataset_accessors(tmp_path):
    with Dataset(make_h5(tmp_path / "d.h5", 100)) as ds:
        assert [ds.split_size(s) for s in ("train", "validation", "test")] == [80, 10, 10]
        lab = ds.labels("validation")
        assert lab.dtype == np.uint8 and lab.shape == (10, 3)
        assert np.array_equal(lab, (np.arange(80, 90)[:, None] >> np.arange(3)) & 1)
        assert ds.filenames("test")[0] == "000091.jpg"
        imgs = ds.images("test", [3, 0, 3])
        assert imgs.shape == (3, 54, 44, 3) and imgs.dtype == np.uint8
        assert list(imgs[:, 0, 0, 0]) == [93, 90, 93]
        assert ds.num_batches("train", 32) == 3 and ds.num_batches("train", 32, drop_last=True) == 2
        with pytest.raises(ValueError, match="unknown split"):
            ds.labels("val")


def test_builtin_synthetic_set_is_built_once(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "data"
    t = time.perf_counter()
    ds = load_dataset(None, image_size=(54, 44), cache_dir=cache, synthetic_count=30, progress=False)
    assert time.perf_counter() - t < 30
    assert ds.synthetic and "NOT CelebA" in capsys.readouterr().err
    assert ds.source_layout == "official-folder"
    assert sum(ds.split_size(s) for s in ("train", "validation", "test")) <= 30
    path = ds.path
    ds.close()
    calls = count_prepares(monkeypatch)
    monkeypatch.setattr(dataset_mod, "synthesize", lambda *a, **k: pytest.fail("drew the set twice"))
    with load_dataset(None, image_size=(54, 44), cache_dir=cache, synthetic_count=30, progress=False) as ds:
        assert ds.path == path
    assert calls == []
