"""The one resize policy: crop boxes computed by hand, colour modes, identity."""
import numpy as np
import pytest
from PIL import Image

from tinyconv.data import RESIZE_FILTER, RESIZE_POLICY, crop_box, resize_to_model


@pytest.mark.parametrize("src, size, box", [
    ((178, 218), (218, 178), (0, 0, 178, 218)),    # already the aspect ratio
    ((178, 218), (109, 89), (0, 0, 178, 218)),     # exactly half
    ((178, 218), (54, 44), (0, 0, 178, 218)),      # 218*44/54 = 177.63 -> 178: no crop
    ((640, 480), (218, 178), (124, 0, 516, 480)),  # landscape: cw = floor(391.93 + .5) = 392, left = 248 // 2
    ((100, 300), (218, 178), (0, 89, 100, 211)),   # tall: ch = floor(100*218/178 + .5) = 122, top = 89
    ((200, 200), (218, 178), (18, 0, 181, 200)),   # square: cw = floor(163.80 + .5) = 163, left = 18
    ((101, 101), (10, 10), (0, 0, 101, 101)),      # square to square
    ((7, 4), (2, 1), (2, 0, 4, 4)),                # too wide: cw = floor(4*1/2 + .5) = 2, left = 5 // 2 = 2
    ((4, 7), (1, 2), (0, 2, 4, 4)),                # too tall: ch = floor(4*1/2 + .5) = 2, top = 5 // 2 = 2
])
def test_crop_box_matches_hand_computation(src, size, box):
    assert crop_box(src, size) == box


def test_crop_rounds_half_up_and_floors_offset():
    # 300x100 -> target 1x1: cw = floor(100*1/1 + .5) = 100; left = (300 - 100) // 2 = 100
    assert crop_box((300, 100), (1, 1)) == (100, 0, 200, 100)
    # 5x2 source, target (H, W) = (4, 6): too wide; cw = floor(2*6/4 + .5) = floor(3.5) = 3, left = 1
    assert crop_box((5, 2), (4, 6)) == (1, 0, 4, 2)
    # exact half: 9x2 to (4, 5): cw = floor(2.5 + .5) = 3 (Python's round(2.5) would give 2), left = 3
    assert crop_box((9, 2), (4, 5)) == (3, 0, 6, 2)
    # odd leftover goes right: 8x2 to (4, 5): cw = 3, left = (8 - 3) // 2 = 2, right margin 3
    assert crop_box((8, 2), (4, 5)) == (2, 0, 5, 2)


def test_identity_at_target_size():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    out = resize_to_model(a)
    assert out.dtype == np.uint8 and out.shape == (218, 178, 3)
    assert np.array_equal(out, a) and out is not a
    assert np.array_equal(resize_to_model(Image.fromarray(a)), a)


def test_output_equals_crop_then_named_filter():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = resize_to_model(a, (54, 44))
    box = crop_box((640, 480), (54, 44))
    want = np.asarray(Image.fromarray(a).crop(box).resize((44, 54), getattr(Image.Resampling, RESIZE_FILTER)))
    assert out.shape == (54, 44, 3)
    assert np.array_equal(out, want)
    assert "centre-crop" in RESIZE_POLICY and RESIZE_FILTER in RESIZE_POLICY


def test_cropped_side_strips_never_leak_in():
    # red left and right strips outside the crop box must not appear after the resize
    a = np.zeros((218, 400, 3), np.uint8)
    left, _, right, _ = crop_box((400, 218), (218, 178))
    a[:, :left, 0] = 255
    a[:, right:, 0] = 255
    out = resize_to_model(a, (109, 89))
    assert out[..., 0].max() == 0


def test_grey_and_rgba_on_white():
    grey = Image.fromarray(np.full((218, 178), 77, np.uint8), "L")
    out = resize_to_model(grey)
    assert out.shape == (218, 178, 3) and (out == 77).all()
    rgba = np.zeros((218, 178, 4), np.uint8)
    rgba[..., 0] = 200          # red, fully transparent on the left half
    rgba[:, 89:, 3] = 255       # opaque on the right half
    out = resize_to_model(rgba)
    assert (out[:, :89] == 255).all()                       # transparent -> white
    assert (out[:, 89:] == [200, 0, 0]).all()
    half = np.zeros((10, 10, 4), np.uint8)
    half[..., 3] = 128          # black at 50% alpha over white -> about 127
    assert abs(int(resize_to_model(half, (10, 10))[0, 0, 0]) - 127) <= 1


def test_bad_array_input():
    with pytest.raises(TypeError):
        resize_to_model(np.zeros((5, 5, 3), np.float32))
    with pytest.raises(ValueError):
        resize_to_model(np.zeros((5, 5, 2), np.uint8))


def test_exif_orientation_is_applied_before_cropping(tmp_path):
    """A phone photo stored sideways with Orientation=6 ("rotate 90 CW to view") is cropped upright."""
    from PIL import Image
    from tinyconv.data import resize_to_model
    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)          # tall, as viewed
    stored = np.ascontiguousarray(np.rot90(upright, k=1))                  # (200, 300): as the sensor wrote it
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    with Image.open(path) as img:
        got = resize_to_model(img, (218, 178))
    np.testing.assert_array_equal(got, resize_to_model(upright, (218, 178)))


def test_a_16bit_grey_image_is_read_by_its_format_range_in_prepare_as_in_predict():
    """One conversion for training data and prediction: 16-bit grey is v >> 8 (not scaled by the image's
    own maximum, which made one bright pixel change every other pixel), float images 0-1."""
    import numpy as np
    from PIL import Image
    from tinyconv.data.resize import resize_to_model, to_8bit
    a = np.full((218, 178), 200, dtype=np.uint16)
    a[0, 0] = 256                                  # one pixel above 255: the old code rescaled everything
    img = Image.fromarray(a)                       # mode I;16
    np.testing.assert_array_equal(np.asarray(to_8bit(img, "x")), (a >> 8).astype(np.uint8))
    out = resize_to_model(img, (218, 178))
    assert out.shape == (218, 178, 3) and out[100, 100].tolist() == [0, 0, 0]
    f = Image.fromarray(np.full((218, 178), 0.5, dtype=np.float32))   # mode F
    assert resize_to_model(f, (218, 178))[5, 5].tolist() == [128, 128, 128]
