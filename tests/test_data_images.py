"""Image files as untrusted input: the decompression-bomb guard, size and format limits, and that
one bad image never costs the others (skipped and listed, like a corrupt one)."""
import importlib
import io
import json
from pathlib import Path

import h5py
import pytest
from PIL import Image, ImageFile

from tinyconv.data import DataError, prepare
from tinyconv.data.resize import MAX_PIXELS

from conftest_data import copy_official, synth_root  # noqa: F401  (a fixture)

prepare_mod = importlib.import_module("tinyconv.data.prepare")
celeba_mod = importlib.import_module("tinyconv.data.celeba")


def skipped_and_kept(out):
    with h5py.File(out) as f:
        return json.loads(f.attrs["skipped"]), [s.decode() for s in f["filenames"][()]]


def test_pixel_cap_is_checked_from_the_header_before_decoding(synth_root, tmp_path, monkeypatch):
    """An 8000x8000 PNG of 8 kB (64 megapixels, over the 50 MP cap shared with predict). Before: it
    was decoded (192 MB as RGB) and resized; four such files took 1.3 GB."""
    root = copy_official(synth_root, tmp_path / "src")
    big = Image.new("1", (8000, 8000))
    assert 8000 * 8000 > MAX_PIXELS
    buf = io.BytesIO()
    big.save(buf, "PNG")
    (root / "img_align_celeba" / "000004.jpg").write_bytes(buf.getvalue())  # the name does not matter
    loaded, real_load = [], ImageFile.ImageFile.load

    def spy(img):
        loaded.append(img.size)
        return real_load(img)
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    skipped, kept = skipped_and_kept(prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False))
    assert [Path(s["file"]).name for s in skipped] == ["000004.jpg"]
    assert skipped[0]["reason"].startswith("8000x8000 is 64 megapixels, over the limit of 50")
    assert (8000, 8000) not in loaded and (178, 218) in loaded  # never decoded; the others were
    assert "000004.jpg" not in kept and len(kept) > 20


def test_file_over_the_byte_cap_is_skipped(synth_root, tmp_path, monkeypatch):
    """The cap (MAX_IMAGE_BYTES, 200 MB) is lowered so that one padded image exceeds it."""
    root = copy_official(synth_root, tmp_path / "src")
    path = root / "img_align_celeba" / "000004.jpg"
    monkeypatch.setattr(celeba_mod, "MAX_IMAGE_BYTES", 20_000)
    path.write_bytes(path.read_bytes() + bytes(20_000))  # trailing bytes: still a valid JPEG
    skipped, kept = skipped_and_kept(prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False))
    assert [Path(s["file"]).name for s in skipped] == ["000004.jpg"]
    size = path.stat().st_size
    assert skipped[0]["reason"] == f"ImageTooLarge: {size:,} bytes, over the limit of 20,000 for one image"


def test_only_jpeg_and_png_are_decoded(synth_root, tmp_path):
    """A BMP named .jpg was decoded before; Pillow's other decoders (EPS runs Ghostscript) are never
    reached now."""
    root = copy_official(synth_root, tmp_path / "src")
    path = root / "img_align_celeba" / "000004.jpg"
    Image.open(path).save(path, "BMP")
    skipped, kept = skipped_and_kept(prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False))
    assert [Path(s["file"]).name for s in skipped] == ["000004.jpg"]
    assert skipped[0]["reason"].startswith("UnidentifiedImageError")


def test_any_failure_of_one_image_skips_that_image_only(synth_root, tmp_path, monkeypatch):
    """Pillow raises many exception types on hostile bytes; before, one outside the expected few
    aborted the whole run ("decoding failed")."""
    real, calls = prepare_mod.resize_to_model, []

    def fragile(img, size):
        calls.append(1)
        if len(calls) == 3:
            raise ZeroDivisionError("a decoder bug")
        return real(img, size)
    monkeypatch.setattr(prepare_mod, "resize_to_model", fragile)
    skipped, kept = skipped_and_kept(prepare(synth_root, tmp_path / "x.h5", image_size=(8, 8), progress=False,
                                             workers=1))
    assert [s["reason"] for s in skipped] == ["ZeroDivisionError: a decoder bug"]
    assert len(kept) == len(calls) - 1 == 34 and Path(skipped[0]["file"]).name not in kept


def test_no_decodable_image_is_an_error_not_an_empty_file(synth_root, tmp_path):
    """Before: an empty prepared file was written (exit 0), to fail later in training."""
    root = copy_official(synth_root, tmp_path / "src")
    for p in (root / "img_align_celeba").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"img_align_celeba: none of the 35 images could be decoded \(e.g. "):
        prepare(root, tmp_path / "x.h5", image_size=(8, 8), progress=False)
    assert list(tmp_path.glob("*.h5")) == [] and list(tmp_path.glob(".*partial")) == []
