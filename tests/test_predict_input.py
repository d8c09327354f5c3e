"""Bad or unusual images in tinyconv.predict: deep images by their format's range, tiny images and
things that are not images refused with the file or position named."""
import numpy as np
import pytest
from PIL import Image

from tinyconv.predict import MIN_SIDE, ImageInputError, load, to_8bit
from test_export_helpers import make_run


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    run_dir, _ = make_run(tmp_path_factory.mktemp("predict_input") / "runs")  # a 54x44 model
    return load(run_dir)


def _grey_as_rgb(a):
    return np.repeat(a[:, :, None], 3, axis=2)


def test_to_8bit_uses_the_format_range():
    i16 = Image.fromarray(np.array([[0, 255, 256, 32768, 65535]], np.uint16))
    assert i16.mode == "I;16"
    assert np.asarray(to_8bit(i16, "x")).tolist() == [[0, 0, 1, 128, 255]]
    f = Image.fromarray(np.array([[0.0, 0.5 / 255, 0.5, 1.0]], np.float32))
    assert np.asarray(to_8bit(f, "x")).tolist() == [[0, 1, 128, 255]]
    rgb = Image.new("RGB", (2, 2))
    assert to_8bit(rgb, "x") is rgb


@pytest.mark.parametrize("ext", ["png", "tif", "pgm"])
def test_16bit_grey_files_are_scaled_by_the_format_not_the_image_maximum(model, tmp_path, ext):
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 256, (120, 100)).astype(np.uint16)  # all <= 255 of 65535: nearly black
    bright_pixel = dark.copy()
    bright_pixel[0, 0] = 256                                    # one pixel above 255
    full = rng.integers(0, 65536, (120, 100)).astype(np.uint16)
    for a in (dark, bright_pixel, full):
        path = tmp_path / f"grey16.{ext}"
        Image.fromarray(a).save(path)
        assert Image.open(path).mode in ("I;16", "I")  # Pillow reads a 16-bit PGM as mode I
        want = model.predict(_grey_as_rgb((a >> 8).astype(np.uint8)))
        np.testing.assert_array_equal(model.predict([path]), want)


def test_float_tiff_is_read_as_0_to_1(model, tmp_path):
    a = np.random.default_rng(1).random((120, 100), dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "F"
    want = model.predict(_grey_as_rgb(np.floor(a * 255 + 0.5).astype(np.uint8)))
    np.testing.assert_array_equal(model.predict([path]), want)


@pytest.mark.parametrize("values, words", [
    (np.full((120, 100), 200.0, np.float32), "values from 200 to 200"),  # a 0-255 float image
    (np.full((120, 100), np.nan, np.float32), "NaN"),
])
def test_float_images_outside_0_to_1_are_refused_not_clipped(model, tmp_path, values, words):
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageInputError) as info:
        model.predict([path])
    assert str(path) in str(info.value) and words in str(info.value)


def test_32bit_integer_images_are_refused(model, tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(np.full((120, 100), 70000, np.int32)).save(path)
    assert Image.open(path).mode == "I"
    for item, name in ((path, str(path)), (Image.new("I", (100, 120)), "image #0")):
        with pytest.raises(ImageInputError) as info:
            model.predict([item])
        assert name in str(info.value) and "32-bit integer image" in str(info.value)


def test_images_too_small_for_a_face_are_refused_naming_them(model, tmp_path):
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (200, 150, 100)).save(one)
    cases = {one: str(one), "empty": "image #0", "strip": "image #0", "array": "image #0"}
    items = {one: one, "empty": Image.new("RGB", (0, 0)), "strip": Image.new("RGB", (1000, 3)),
             "array": np.zeros((10, 10, 3), np.uint8)}
    for key, item in items.items():
        with pytest.raises(ImageInputError) as info:
            model.predict([item])
        assert cases[key] in str(info.value) and "too small" in str(info.value), key
    # the limit is on the centre crop: 16x20 crops to 16x20 (accepted), 15x20 to 15x18 (refused)
    assert MIN_SIDE == 16
    assert model.predict(Image.new("RGB", (16, 20))).shape == (1, 3)
    with pytest.raises(ImageInputError, match="15x18"):
        model.predict(Image.new("RGB", (15, 20)))


def test_things_that_are_not_images_name_their_type_and_position(model, tmp_path):
    good = np.zeros((60, 50, 3), np.uint8)
    cases = [(None, r"image #0: .*got None$"), (5, r"image #0: .*got int$"), (3.5, "got float"),
             (b"\x89PNG\r\n", r"image #0: .*got bytes \(encoded bytes"),
             ([good, None], r"image #1: .*got None$"), ([good, 5], r"image #1: .*got int$"),
             ([good] * 17 + [b"x"], r"image #17: .*got bytes"),   # positions count across batches
             ({"a.jpg": 1}, "got a dict; pass a list"), ({"a.jpg", "b.jpg"}, "got a set; pass a list"),
             (np.zeros(5, np.uint8), r"array of shape \(5,\)")]
    for images, pattern in cases:
        with pytest.raises(ImageInputError, match=pattern):
            model.predict(images)


def test_a_closed_pil_image_is_an_image_input_error(model, tmp_path):
    path = tmp_path / "face.png"
    Image.new("RGB", (60, 70)).save(path)
    with Image.open(path) as img:
        pass
    with pytest.raises(ImageInputError, match="image #0"):
        model.predict([img])


def test_a_16bit_photo_keeps_its_exif_orientation(model, tmp_path):
    a = np.random.default_rng(2).integers(0, 65536, (60, 90)).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to show it
    path = tmp_path / "sideways16.png"
    Image.fromarray(a).save(path, exif=exif.tobytes())
    upright = Image.fromarray((a >> 8).astype(np.uint8)).transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(model.predict([path]), model.predict(upright))


def test_a_file_system_error_is_not_called_a_damaged_image(model, tmp_path, monkeypatch):
    path = tmp_path / "face.png"
    Image.new("RGB", (60, 70)).save(path)

    def denied(*args, **kwargs):  # what open() raises on a file without read permission (tests run as root)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageInputError, match=r"face.png: cannot read the file \(Permission denied\)$"):
        model.predict([path])
