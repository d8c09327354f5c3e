"""A prepared file is untrusted: Dataset checks the schema before it reads an array, and refuses
links and storage that would read other files."""
import importlib
import re

import h5py
import numpy as np
import pytest

from tinyconv.data import DataError, Dataset, load_dataset

from conftest_data import copy_official, make_h5, synth_root  # noqa: F401  (a fixture)

dataset_mod = importlib.import_module("tinyconv.data.dataset")
N = 20


def replace(f, name, data, **kw):
    del f[name]
    f.create_dataset(name, data=data, **kw)


def external_labels(f, path):
    other = path.parent / "other.h5"
    with h5py.File(other, "w") as g:
        g["labels"] = f["labels"][()]
    del f["labels"]
    f["labels"] = h5py.ExternalLink(str(other), "/labels")


def soft_labels(f, path):
    f.move("labels", "labels_elsewhere")
    f["labels"] = h5py.SoftLink("/labels_elsewhere")


def external_storage(f, path):
    raw = path.parent / "labels.raw"
    labels = f["labels"][()]
    raw.write_bytes(labels.tobytes())
    del f["labels"]
    f.create_dataset("labels", shape=labels.shape, dtype=np.uint8, external=[(str(raw), 0, labels.nbytes)])


def virtual_labels(f, path):
    labels = f["labels"][()]
    f["labels_source"] = labels
    layout = h5py.VirtualLayout(shape=labels.shape, dtype=np.uint8)
    layout[:] = h5py.VirtualSource(f["labels_source"])
    del f["labels"]
    f.create_virtual_dataset("labels", layout)


def unwritten_images(f, path):
    del f["images"]
    d = f.create_dataset("images", (N, 54, 44, 3), np.uint8, chunks=(1, 54, 44, 3))
    d[: N // 2] = 7  # the other half reads back as zeros: never written


CASES = {
    # name: (change to a valid file, the message after "<path>: ", a text or a pattern)
    "no attributes": (lambda f, p: f.attrs.__delitem__("attributes"),
                      "missing attribute 'attributes': not a tinyconv prepared file"),
    "no image_size": (lambda f, p: f.attrs.__delitem__("image_size"), "missing attribute 'image_size'"),
    "no format_version": (lambda f, p: f.attrs.__delitem__("format_version"), "missing attribute 'format_version'"),
    "newer format": (lambda f, p: f.attrs.__setitem__("format_version", 2), "format_version is 2"),
    "complete as text": (lambda f, p: f.attrs.__setitem__("complete", "no"), "incomplete file"),
    "labels shorter": (lambda f, p: replace(f, "labels", f["labels"][:-1]),
                       "'labels' has shape (19, 3), expected (20, 3) (20 images, 3 attributes): the arrays disagree"),
    "partition longer": (lambda f, p: replace(f, "partition", np.zeros(N + 5, np.uint8)),
                         "'partition' has shape (25,), expected (20,)"),
    "filenames shorter": (lambda f, p: replace(f, "filenames", f["filenames"][:3], dtype=h5py.string_dtype()),
                          "'filenames' has shape (3,), expected (20,)"),
    "one more attribute": (lambda f, p: f.attrs.__setitem__("attributes", ["A0", "A1", "A2", "A3"]),
                           "'labels' has shape (20, 3), expected (20, 4)"),
    "repeated attribute": (lambda f, p: f.attrs.__setitem__("attributes", ["A0", "A1", "A0"]),
                           "attribute 'attributes' must list distinct names"),
    "partition 3": (lambda f, p: f["partition"].__setitem__(5, 3), "'partition' row 5 is 3; expected 0, 1 or 2"),
    "label 2": (lambda f, p: f["labels"].__setitem__((7, 1), 2), "'labels' row 7 holds [1, 2, 1]; labels are 0 or 1"),
    "float images": (lambda f, p: replace(f, "images", np.zeros((N, 54, 44, 3), np.float32)),
                     "'images' is float32 with 4 dimensions, expected uint8 with 4"),
    "images other size": (lambda f, p: f.attrs.__setitem__("image_size", [32, 32]),
                          "'images' has shape (20, 54, 44, 3), expected (N, 32, 32, 3) from image_size"),
    "image_size zero": (lambda f, p: f.attrs.__setitem__("image_size", [0, 44]), "attribute 'image_size' must be"),
    "no images": (lambda f, p: replace(f, "images", np.zeros((0, 54, 44, 3), np.uint8)), "holds 0 images"),
    "images a group": (lambda f, p: (f.__delitem__("images"), f.create_group("images")), "'images' is a group"),
    "int filenames": (lambda f, p: replace(f, "filenames", np.arange(N)),
                      "'filenames' holds int64, expected strings"),
    "filenames not UTF-8": (lambda f, p: replace(f, "filenames", np.array([b"\xff\xfe.jpg"] * N, dtype="S6")),
                            "'filenames' entry 0 is not UTF-8"),
    "skipped not JSON": (lambda f, p: f.attrs.__setitem__("skipped", "[{"), "attribute 'skipped' is not a JSON list"),
    "synthetic as text": (lambda f, p: f.attrs.__setitem__("synthetic", "yes"),
                          "attribute 'synthetic' has the wrong type"),
    "external link": (external_labels, "'labels' is a ExternalLink, not data stored in this file; refusing it"),
    "soft link": (soft_labels, "'labels' is a SoftLink, not data stored in this file; refusing it"),
    "external storage": (external_storage, "'labels' reads data from other files (external storage); refusing it"),
    "virtual dataset": (virtual_labels, "'labels' reads data from other files (a virtual dataset); refusing it"),
    "unwritten images": (unwritten_images, re.compile(r"'images' holds \d+ bytes of its 142560: rows were never "
                                                      r"written")),  # the first number is HDF5's bookkeeping
}


@pytest.mark.parametrize("case", list(CASES))
def test_schema_violation_is_a_data_error_naming_file_and_problem(case, tmp_path):
    """Before: a missing 'attributes' was a KeyError traceback, and arrays of different lengths or
    out-of-range values were accepted (a run trained to exit 0 on them)."""
    path = make_h5(tmp_path / "d.h5", N)
    change, message = CASES[case]
    with h5py.File(path, "a") as f:
        change(f, path)
    message = message.pattern if isinstance(message, re.Pattern) else re.escape(message)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {message}"):
        Dataset(path)


def test_damaged_bytes_are_a_data_error(tmp_path):
    """A checksummed dataset with a flipped byte: h5py's read error becomes one DataError line."""
    path = make_h5(tmp_path / "d.h5", N)
    with h5py.File(path, "a") as f:
        replace(f, "labels", f["labels"][()], chunks=(N, 3), fletcher32=True)
        offset = f["labels"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: damaged file "):
        Dataset(path)


def test_compressed_datasets_are_read(tmp_path):
    path = make_h5(tmp_path / "d.h5", N)
    with h5py.File(path, "a") as f:
        replace(f, "images", f["images"][()], chunks=(1, 54, 44, 3), compression="gzip", shuffle=True)
    with Dataset(path) as ds:
        assert ds.images("train", [3])[0, 0, 0, 0] == 3


def test_oversized_chunks_are_refused(tmp_path, monkeypatch):
    """One chunk is what one random read decompresses: a whole-file chunk could be gigabytes."""
    path = make_h5(tmp_path / "d.h5", N)
    with h5py.File(path, "a") as f:
        replace(f, "images", f["images"][()], chunks=(N, 54, 44, 3))
    monkeypatch.setattr(dataset_mod, "MAX_CHUNK_BYTES", 54 * 44 * 3 * 4)
    with pytest.raises(DataError, match=r"'images' chunks of \(20, 54, 44, 3\) are over"):
        Dataset(path)


def test_tampered_cache_is_rebuilt_not_used(synth_root, tmp_path, capsys):
    """A cache file whose fingerprint still matches but whose arrays disagree is rebuilt."""
    root = copy_official(synth_root, tmp_path / "src")
    cache = tmp_path / "cache"
    with load_dataset(root, image_size=(8, 8), cache_dir=cache, progress=False) as ds:
        path, labels = ds.path, ds.labels("train")
    with h5py.File(path, "a") as f:
        replace(f, "partition", f["partition"][:-1])
    capsys.readouterr()
    with load_dataset(root, image_size=(8, 8), cache_dir=cache, progress=False) as ds:
        assert ds.path == path and np.array_equal(ds.labels("train"), labels)
    assert "'partition' has shape" in capsys.readouterr().err  # said why it rebuilt
