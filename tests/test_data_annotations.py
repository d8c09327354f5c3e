"""Annotation files as untrusted input: a name listed twice, bytes that are not UTF-8, odd files."""
import os
import re

import h5py
import pytest

from tinyconv.data import DataError, detect_layout, prepare
from tinyconv.data.celeba import read_annotations

from conftest_data import copy_official, make_kaggle_layout, synth_root  # noqa: F401  (a fixture)


def append_line(path, line):
    with open(path, "a", newline="") as f:
        f.write(line + ("\r\n" if path.suffix == ".csv" else "\n"))


def attr_line(path, name):
    return next(ln for ln in path.read_text().splitlines() if ln.startswith(name))


def bump_count(path):
    """The official attribute file's first line is the row count: keep it right after appending."""
    lines = path.read_text().splitlines()
    lines[0] = str(int(lines[0]) + 1)
    path.write_text("\n".join(lines) + "\n")


def official_attr_duplicate(root, same):
    path = root / "list_attr_celeba.txt"
    line = attr_line(path, "000003.jpg")
    if not same:  # flip the last value
        line = line[:-2] + (" 1" if line.endswith("-1") else "-1")
    append_line(path, line)
    bump_count(path)
    return path, 3 + 2, 40 + 3  # file, first line of 000003.jpg, the appended line


def kaggle_attr_duplicate(root, same):
    path = root / "list_attr_celeba.csv"
    line = attr_line(path, "000003.jpg")
    if not same:
        line = line[:-2] + "1" if line.endswith("-1") else line[:-1] + "-1"
    append_line(path, line)
    return path, 3 + 1, 40 + 2


def official_partition_duplicate(root, same):
    path = root / "list_eval_partition.txt"
    old = attr_line(path, "000003.jpg").split()[1]
    append_line(path, f"000003.jpg {old if same else '2'}")
    return path, 3, 41


def kaggle_partition_duplicate(root, same):
    path = root / "list_eval_partition.csv"
    old = attr_line(path, "000003.jpg").split(",")[1]
    append_line(path, f"000003.jpg,{old if same else '2'}")
    return path, 4, 42


DUPLICATES = {
    "official-attr": (copy_official, official_attr_duplicate),
    "kaggle-attr": (make_kaggle_layout, kaggle_attr_duplicate),
    "official-partition": (copy_official, official_partition_duplicate),
    "kaggle-partition": (make_kaggle_layout, kaggle_partition_duplicate),
}


@pytest.mark.parametrize("same", [False, True], ids=["conflicting", "exact"])
@pytest.mark.parametrize("case", list(DUPLICATES))
def test_a_name_listed_twice_is_an_error_naming_both_lines(case, same, synth_root, tmp_path):
    """Before: the partition files let the last line win (000003.jpg silently moved to test), the
    attribute files said only "duplicate file names". An exact repeat is an error too (documented)."""
    make, duplicate = DUPLICATES[case]
    root = make(synth_root, tmp_path / "src")
    path, first, again = duplicate(root, same)
    with pytest.raises(DataError) as e:
        read_annotations(detect_layout(root))
    msg = str(e.value)
    assert msg.startswith(f"{path}: line {again}: 000003.jpg is listed twice")
    assert f"line {first}" in msg and ("repeats" if same else "contradicts") in msg
    with pytest.raises(DataError, match=re.escape(f"line {again}")):
        prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False)
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("name", ["list_attr_celeba.txt", "list_eval_partition.txt", "list_attr_celeba.csv"])
def test_a_byte_that_is_not_utf8_names_file_and_line(name, synth_root, tmp_path):
    """Before: a UnicodeDecodeError traceback. A Latin-1 'é' in a file name on line 5."""
    make = make_kaggle_layout if name.endswith(".csv") else copy_official
    root = make(synth_root, tmp_path / "src")
    path = root / name
    lines = path.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b"0000", b"000\xe9", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as e:
        read_annotations(detect_layout(root))
    assert str(e.value) == f"{path}: line 5: byte 0xe9 is not UTF-8 text (save the file as UTF-8)"


def test_stray_image_with_a_non_utf8_name_is_ignored(synth_root, tmp_path):
    """Before: a UnicodeEncodeError traceback (the fingerprint encoded the listing as UTF-8)."""
    root = copy_official(synth_root, tmp_path / "src")
    clean = prepare(root, tmp_path / "clean.h5", image_size=(8, 8), progress=False)
    before = detect_layout(root).fingerprint()
    stray = os.path.join(os.fsencode(root / "img_align_celeba"), b"\xff\xfe_extra.jpg")
    with open(stray, "wb") as f:
        f.write(b"not listed anywhere")
    source = detect_layout(root)
    assert all(n.isascii() for n in source.image_names())
    assert source.fingerprint() != before  # the stray file still counts as a change of the folder
    out = prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False)
    with h5py.File(out) as f, h5py.File(clean) as g:
        assert list(f["filenames"][()]) == list(g["filenames"][()])
        assert (f["images"][()] == g["images"][()]).all()


def test_utf8_byte_order_mark_is_accepted(synth_root, tmp_path):
    """Before: 'line 1 should be the number of images' (Windows editors write a BOM)."""
    root = copy_official(synth_root, tmp_path / "src")
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        path = root / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    plain = read_annotations(detect_layout(synth_root))
    ann = read_annotations(detect_layout(root))
    assert ann.filenames == plain.filenames and (ann.values == plain.values).all()
    assert (ann.partition == plain.partition).all()


def test_an_annotation_path_that_is_a_folder_is_an_error(synth_root, tmp_path):
    """Before: an IsADirectoryError traceback."""
    root = copy_official(synth_root, tmp_path / "src")
    (root / "list_eval_partition.txt").unlink()
    (root / "list_eval_partition.txt").mkdir()
    with pytest.raises(DataError, match=r"list_eval_partition.txt: not a regular file"):
        detect_layout(root)
