"""img_align_celeba.zip as untrusted input: only img_align_celeba/NAME counts; bombs are refused unread."""
import importlib
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from tinyconv.data import DataError, prepare
from tinyconv.data.celeba import detect_layout

from conftest_data import make_zip_layout, synth_root  # noqa: F401  (a fixture)

celeba_mod = importlib.import_module("tinyconv.data.celeba")


def add_members(zip_path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(zip_path, "a", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def prepared(out):
    with h5py.File(out) as f:
        names = [s.decode() for s in f["filenames"][()]]
        return dict(zip(names, f["images"][()])), json.loads(f.attrs["skipped"])


def other_image(root):
    """Bytes of a real image that is not 000005.jpg: a swap would be visible in the pixels."""
    return (root / "img_align_celeba" / "000009.jpg").read_bytes()


@pytest.mark.parametrize("member", ["../../evil/000005.jpg", "/abs/path/000005.jpg",
                                    "img_align_celeba/../000005.jpg", "img_align_celeba\\000005.jpg",
                                    "C:/img_align_celeba/000005.jpg"])
def test_member_with_an_unsafe_name_refuses_the_zip(member, synth_root, tmp_path):
    """Before: such a member replaced the real 000005.jpg (matched by base name, last one won)."""
    root = make_zip_layout(synth_root, tmp_path / "src")
    add_members(root / "img_align_celeba.zip", {member: other_image(synth_root)})
    with pytest.raises(DataError) as e:
        prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False)
    assert str(e.value).startswith(f"{root / 'img_align_celeba.zip'}: member {member!r} has an unsafe name")
    assert not (tmp_path / "x.h5").exists()


def test_member_repeated_refuses_the_zip(synth_root, tmp_path):
    root = make_zip_layout(synth_root, tmp_path / "src")
    with pytest.warns(UserWarning, match="Duplicate name"):  # zipfile warns, and writes it anyway
        add_members(root / "img_align_celeba.zip", {"img_align_celeba/000005.jpg": other_image(synth_root)})
    with pytest.raises(DataError, match=r"img_align_celeba.zip: member 'img_align_celeba/000005.jpg' "
                                        r"is in the zip twice"):
        prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False)


def test_images_outside_the_folder_are_ignored(synth_root, tmp_path):
    """Before: copies/000005.jpg (a different face) silently replaced img_align_celeba/000005.jpg."""
    clean = prepare(make_zip_layout(synth_root, tmp_path / "clean"), tmp_path / "clean.h5",
                    image_size=(16, 16), progress=False)
    root = make_zip_layout(synth_root, tmp_path / "src")
    add_members(root / "img_align_celeba.zip", {"copies/000005.jpg": other_image(synth_root),
                                                "__MACOSX/img_align_celeba/._000006.jpg": b"resource fork"})
    out = prepare(root, tmp_path / "x.h5", image_size=(16, 16), progress=False)
    got, skipped = prepared(out)
    want, _ = prepared(clean)
    assert skipped == [] and list(got) == list(want)
    assert all(np.array_equal(got[n], want[n]) for n in want)


def test_zip_without_the_folder_says_where_images_must_be(synth_root, tmp_path):
    root = make_zip_layout(synth_root, tmp_path / "src")
    (root / "img_align_celeba.zip").unlink()
    add_members(root / "img_align_celeba.zip", {"faces/000001.jpg": other_image(synth_root)})
    with pytest.raises(DataError, match=r"no image under img_align_celeba/ \(found e.g. 'faces/000001.jpg'\)"):
        prepare(root, tmp_path / "x.h5", progress=False)


def test_zip_bomb_by_ratio_is_skipped_and_listed(synth_root, tmp_path):
    """5 MiB of zeros deflate to 5 kB (about 1000:1): refused before it is inflated."""
    root = make_zip_layout(synth_root, tmp_path / "src")
    zip_path = root / "img_align_celeba.zip"
    with zipfile.ZipFile(zip_path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members["img_align_celeba/000005.jpg"] = bytes(5 << 20)
    zip_path.unlink()
    add_members(zip_path, members, zipfile.ZIP_DEFLATED)
    got, skipped = prepared(prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False))
    assert "000005.jpg" not in got and len(got) > 20
    assert [s["file"] for s in skipped] == [f"{zip_path}:img_align_celeba/000005.jpg"]
    assert "compression ratio" in skipped[0]["reason"] and "zip bombs" in skipped[0]["reason"]


def test_member_over_the_size_cap_is_refused_unread(synth_root, tmp_path, monkeypatch):
    """The declared size is checked before the member is opened (a 1 GiB member of a 4 MB zip was
    inflated into memory before). The cap is lowered here so that a real image exceeds it."""
    root = make_zip_layout(synth_root, tmp_path / "src")
    info = zipfile.ZipFile(root / "img_align_celeba.zip").getinfo("img_align_celeba/000005.jpg")
    monkeypatch.setattr(celeba_mod, "MAX_IMAGE_BYTES", info.file_size - 1)
    opened, real_open = [], zipfile.ZipFile.open

    def spy(self, member, *a, **k):
        opened.append(getattr(member, "filename", member))
        return real_open(self, member, *a, **k)
    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    got, skipped = prepared(prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False, workers=1))
    too_big = {Path(s["file"].split(":")[-1]).name for s in skipped}
    assert "000005.jpg" in too_big and "000005.jpg" not in got
    assert all("declared size" in s["reason"] for s in skipped)
    assert "img_align_celeba/000005.jpg" not in opened and opened  # the others were read


def test_corrupt_member_is_skipped_not_fatal(synth_root, tmp_path):
    """Before: zipfile's BadZipFile (bad CRC) escaped the per-image handling and aborted prepare."""
    root = make_zip_layout(synth_root, tmp_path / "src")
    zip_path = root / "img_align_celeba.zip"
    info = zipfile.ZipFile(zip_path).getinfo("img_align_celeba/000007.jpg")
    data = bytearray(zip_path.read_bytes())
    start = info.header_offset + 30 + len(info.filename)  # stored member: its bytes follow the header
    data[start + 1000] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    got, skipped = prepared(prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False))
    assert [s["file"] for s in skipped] == [f"{zip_path}:img_align_celeba/000007.jpg"]
    assert "CRC" in skipped[0]["reason"] and "000007.jpg" not in got and len(got) > 20


def test_zip_layout_still_detected(synth_root, tmp_path):
    root = make_zip_layout(synth_root, tmp_path / "src")
    source = detect_layout(root)
    assert source.layout == "official-zip" and len(source.image_names()) == 40
