"""Layouts, the blurry filter, attribute selection by name, and every kind of bad input."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tinyconv.data import DataError, detect_layout, prepare
from tinyconv.data.celeba import ATTRIBUTE_NAMES, parse_attr_txt

from conftest_data import (copy_official, make_kaggle_layout, make_torchvision_layout, make_zip_layout,
                           read_official, synth_root)  # noqa: F401  (synth_root is a fixture)

LAYOUTS = {
    "official-folder": copy_official,
    "official-zip": make_zip_layout,
    "torchvision-folder": make_torchvision_layout,
    "kaggle": make_kaggle_layout,
}


def expected_rows(root, attributes, drop_blurry=True):
    """What prepare must store, computed straight from the text files: sorted (partition, name)."""
    files, names, values, part = read_official(root)
    cols = [names.index(a) for a in attributes]
    blurry = names.index("Blurry")
    rows = [i for i in range(len(files)) if not (drop_blurry and values[i, blurry] == 1)]
    rows.sort(key=lambda i: (part[files[i]], files[i]))
    labels = (values[rows][:, cols] == 1).astype(np.uint8)
    return [files[i] for i in rows], labels, np.array([part[files[i]] for i in rows], np.uint8)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_prepares_the_same_data(layout, synth_root, tmp_path):
    root = LAYOUTS[layout](synth_root, tmp_path / "src")
    assert detect_layout(root).layout == layout
    out = prepare(root, tmp_path / "out.h5", image_size=(54, 44), progress=False)
    files, labels, part = expected_rows(synth_root, ["Eyeglasses", "Male", "Smiling"])
    with h5py.File(out, "r") as f:
        assert [s.decode() for s in f["filenames"][()]] == files
        assert np.array_equal(f["labels"][()], labels)
        assert np.array_equal(f["partition"][()], part)
        assert f["images"].shape == (len(files), 54, 44, 3) and f["images"].chunks == (1, 54, 44, 3)
        assert f.attrs["source_layout"] == layout
        assert list(f.attrs["image_size"]) == [54, 44]
        assert list(f.attrs["attributes"]) == ["Eyeglasses", "Male", "Smiling"]
        assert f.attrs["complete"]
        images = f["images"][()]
    # the same pixels whatever the layout: compare with the first image decoded by hand
    from tinyconv.data import resize_to_model
    want = resize_to_model(Image.open(synth_root / "img_align_celeba" / files[0]), (54, 44))
    assert np.array_equal(images[0], want)


def test_blurry_filter_drops_exactly_the_blurry_rows(synth_root, tmp_path):
    files, names, values, _ = read_official(synth_root)
    n_blurry = int((values[:, names.index("Blurry")] == 1).sum())
    assert n_blurry > 0, "the fixture should contain blurry images"
    kept = prepare(synth_root, tmp_path / "a.h5", image_size=(54, 44), progress=False)
    allrows = prepare(synth_root, tmp_path / "b.h5", image_size=(54, 44), drop_blurry=False,
                      attributes=["Blurry"], progress=False)
    with h5py.File(kept) as a, h5py.File(allrows) as b:
        assert len(a["labels"]) == len(files) - n_blurry
        assert a.attrs["dropped_blurry"] == n_blurry
        assert len(b["labels"]) == len(files) and int(b["labels"][()].sum()) == n_blurry
        blurry_names = {files[i] for i in np.flatnonzero(values[:, names.index("Blurry")] == 1)}
        assert not blurry_names & {s.decode() for s in a["filenames"][()]}


def test_attributes_selected_by_header_name_not_index(synth_root, tmp_path):
    # move the Smiling column to the front: a loader that used index 31 would read the wrong column
    root = copy_official(synth_root, tmp_path / "src")
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    j = names.index("Smiling")
    perm = [j] + [i for i in range(len(names)) if i != j]
    out = [lines[0], " ".join(names[i] for i in perm)]
    for ln in lines[2:]:
        tok = ln.split()
        out.append(tok[0] + "".join(f" {int(tok[1 + i]):2d}" for i in perm))
    (root / "list_attr_celeba.txt").write_text("\n".join(out) + "\n")
    f1 = prepare(root, tmp_path / "perm.h5", image_size=(54, 44), attributes=["Smiling", "Heavy_Makeup"],
                 progress=False)
    _, labels, _ = expected_rows(synth_root, ["Smiling", "Heavy_Makeup"])
    with h5py.File(f1) as f:
        assert np.array_equal(f["labels"][()], labels)


def test_unknown_attribute_lists_valid_names(synth_root, tmp_path):
    with pytest.raises(DataError) as e:
        prepare(synth_root, tmp_path / "x.h5", attributes=["Smiling", "Glasses"], progress=False)
    msg = str(e.value)
    assert "Glasses" in msg and "Eyeglasses" in msg and "Wearing_Necktie" in msg
    assert "list_attr_celeba.txt" in msg
    assert not (tmp_path / "x.h5").exists()


def test_missing_root_and_missing_files(synth_root, tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        prepare(tmp_path / "nowhere", tmp_path / "x.h5", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not a CelebA folder"):
        detect_layout(empty)
    root = copy_official(synth_root, tmp_path / "nopart")
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="list_eval_partition.txt"):
        detect_layout(root)
    root = copy_official(synth_root, tmp_path / "noimg")
    shutil.rmtree(root / "img_align_celeba")
    with pytest.raises(DataError, match="img_align_celeba"):
        detect_layout(root)


def test_truncated_attribute_file(synth_root, tmp_path):
    root = copy_official(synth_root, tmp_path / "src")
    path = root / "list_attr_celeba.txt"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # cut in the middle of the last row
    with pytest.raises(DataError) as e:
        parse_attr_txt(path)
    assert "list_attr_celeba.txt" in str(e.value) and "line 42" in str(e.value)
    path.write_text("\n".join(text.splitlines()[:1]))  # only the count line
    with pytest.raises(DataError, match="truncated"):
        parse_attr_txt(path)


def test_row_count_disagrees_with_header(synth_root, tmp_path):
    root = copy_official(synth_root, tmp_path / "src")
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")  # whole rows missing
    with pytest.raises(DataError, match=r"header says 40 images but the file has 37 rows"):
        prepare(root, tmp_path / "x.h5", progress=False)
    path.write_text("\n".join(["41"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"header says 41"):
        prepare(root, tmp_path / "x.h5", progress=False)


def test_bad_values_and_bad_partition(synth_root, tmp_path):
    root = copy_official(synth_root, tmp_path / "src")
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(" 1", " 0", 1) if " 1" in lines[5] else lines[5].replace("-1", " 0", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 6"):
        prepare(root, tmp_path / "x.h5", progress=False)
    root = copy_official(synth_root, tmp_path / "src2")
    part = root / "list_eval_partition.txt"
    part.write_text("\n".join(part.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match="list_eval_partition.txt.*1 attribute rows have no partition"):
        prepare(root, tmp_path / "x.h5", progress=False)


def test_filenames_not_matching_images(synth_root, tmp_path):
    root = copy_official(synth_root, tmp_path / "src")
    files, names, values, _ = read_official(synth_root)
    sharp = [f for f, v in zip(files, values[:, names.index("Blurry")]) if v != 1]
    (root / "img_align_celeba" / sharp[3]).unlink()
    with pytest.raises(DataError) as e:
        prepare(root, tmp_path / "x.h5", progress=False)
    assert sharp[3] in str(e.value) and "img_align_celeba" in str(e.value)
    assert not (tmp_path / "x.h5").exists()


def test_corrupt_jpegs_are_skipped_and_reported(synth_root, tmp_path, capsys):
    root = copy_official(synth_root, tmp_path / "src")
    files, labels, _ = expected_rows(synth_root, ["Eyeglasses", "Male", "Smiling"])
    truncated, garbage = root / "img_align_celeba" / files[2], root / "img_align_celeba" / files[7]
    truncated.write_bytes(truncated.read_bytes()[:600])
    garbage.write_bytes(b"this is not a jpeg")
    out = prepare(root, tmp_path / "x.h5", image_size=(54, 44), progress=False)
    err = capsys.readouterr().err
    assert files[2] in err and files[7] in err and "skipped 2" in err
    with h5py.File(out) as f:
        skipped = json.loads(f.attrs["skipped"])
        assert sorted(Path(s["file"]).name for s in skipped) == sorted([files[2], files[7]])
        kept = [s.decode() for s in f["filenames"][()]]
        assert kept == [x for i, x in enumerate(files) if i not in (2, 7)]
        # labels stay aligned with the images that remain
        assert np.array_equal(f["labels"][()], np.delete(labels, [2, 7], axis=0))
        assert len(f["images"]) == len(kept)


def test_wrong_size_image_resized_by_policy_or_error(synth_root, tmp_path):
    root = copy_official(synth_root, tmp_path / "src")
    files, _, _ = expected_rows(synth_root, ["Eyeglasses", "Male", "Smiling"])
    big = np.random.default_rng(0).integers(0, 256, (300, 250, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "img_align_celeba" / files[4], quality=95)
    out = prepare(root, tmp_path / "x.h5", image_size=(54, 44), progress=False)
    from tinyconv.data import resize_to_model
    with h5py.File(out) as f:
        assert [Path(p).name for p in json.loads(f.attrs["resized"])] == [files[4]]
        want = resize_to_model(Image.open(root / "img_align_celeba" / files[4]), (54, 44))
        assert np.array_equal(f["images"][4], want)
    with pytest.raises(DataError, match=files[4]):
        prepare(root, tmp_path / "y.h5", wrong_size="error", progress=False)
    assert not (tmp_path / "y.h5").exists()


def test_official_header_has_all_40_names_and_padding(synth_root):
    lines = (synth_root / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "40"
    assert tuple(lines[1].split()) == ATTRIBUTE_NAMES
    row = lines[2]
    assert row.startswith("000001.jpg ") and len(row) == len("000001.jpg") + 3 * 40
    assert all(row[11 + 3 * j - 1: 11 + 3 * j + 2].strip() in ("-1", "1") for j in range(40))
