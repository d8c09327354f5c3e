"""tinyconv.predict.load: checkpoints, run folders, exported folders and model.onnx agree; inputs of any size."""
import numpy as np
import pytest
from PIL import Image

from tinyconv.data.batches import to_model_input
from tinyconv.data.resize import resize_to_model
from tinyconv.predict import ImageInputError, ModelSourceError, load
from test_export_helpers import ATTRS, face_images, make_run

H, W = 54, 44


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    run_dir, model = make_run(tmp / "runs")
    return run_dir, model


@pytest.fixture(scope="module")
def exported(run):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tinyconv.export.exporter import export
    export(run[0], coreml=False, log=lambda *a: None)
    return run[0] / "export"


@pytest.fixture
def photos(tmp_path):
    """Three photos that are not the model's size: a wide JPEG, a tall PNG, and the full 178x218."""
    faces = face_images(3, 218, 178, seed=4)
    paths = []
    for i, (img, size, ext) in enumerate(zip(faces, [(300, 200), (90, 160), (178, 218)], ["jpg", "png", "png"])):
        p = tmp_path / f"photo{i}.{ext}"
        Image.fromarray(img).resize(size).save(p)
        paths.append(p)
    return paths


def test_checkpoint_prediction_is_resize_then_tinyconv(run, photos):
    run_dir, model = run
    m = load(run_dir / "checkpoints" / "best.h5")
    assert m.attributes == ATTRS and m.image_size == (H, W) and m.kind == "checkpoint" and m.synthetic
    p = m.predict(photos)
    assert p.shape == (3, 3) and p.dtype == np.float32
    expected = np.stack([resize_to_model(Image.open(f), (H, W)) for f in photos])
    np.testing.assert_array_equal(p, model.predict_proba(to_model_input(expected, np)))


def test_every_source_kind_gives_the_same_numbers(run, exported, photos):
    ref = load(run[0]).predict(photos)
    for source in (exported, exported / "model.onnx"):
        m = load(source)
        assert m.kind == "onnx" and m.attributes == ATTRS and m.image_size == (H, W) and m.synthetic
        assert np.abs(m.predict(photos) - ref).max() <= 1e-5
    assert np.abs(load(None, runs_dir=run[0].parent).predict(photos) - ref).max() == 0


def test_accepts_paths_pil_images_and_arrays(run, photos):
    m = load(run[0])
    pil = Image.open(photos[0])
    arr = np.asarray(pil)
    a, b, c = m.predict(str(photos[0])), m.predict(pil), m.predict(arr)
    assert a.shape == (1, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    batch = np.stack([arr, arr])  # an (N, H, W, 3) array is a batch
    assert m.predict(batch).shape == (2, 3)
    assert m.predict([]).shape == (0, 3)
    assert set(m.predict_one(pil)) == set(ATTRS)


def test_grey_and_rgba_are_converted_as_documented(run):
    m = load(run[0])
    grey = np.random.default_rng(0).integers(0, 256, (120, 100), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(m.predict(Image.fromarray(grey, "L")), m.predict(rgb))  # grey -> 3 channels
    rgba = np.zeros((120, 100, 4), np.uint8)  # fully transparent black -> white
    white = np.full((120, 100, 3), 255, np.uint8)
    np.testing.assert_array_equal(m.predict(Image.fromarray(rgba, "RGBA")), m.predict(white))


def _png_claiming_size(path, w, h):
    """A tiny valid PNG whose header claims w x h pixels (a decompression bomb's header, cheaply)."""
    import struct
    import zlib
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_bad_inputs_get_clear_messages_naming_the_file(run, tmp_path, photos):
    m = load(run[0])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photos[0].read_bytes()[:600])  # the header itself is cut
    half = tmp_path / "half.jpg"
    half.write_bytes(photos[0].read_bytes()[:len(photos[0].read_bytes()) // 2])  # the pixel data is cut
    cases = {text: "not an image", truncated: "truncated", half: "truncated", tmp_path / "absent.png": "no such file",
             _png_claiming_size(tmp_path / "big.png", 10000, 10000): "decompression bomb",
             _png_claiming_size(tmp_path / "huge.png", 30000, 30000): "decompression bomb",
             tmp_path: "not a file"}
    for path, words in cases.items():
        with pytest.raises(ImageInputError) as info:
            m.predict([path])
        assert str(path) in str(info.value) and words in str(info.value)
    with pytest.raises(ImageInputError, match="uint8"):
        m.predict(np.zeros((50, 40, 3), np.float32))
    with pytest.raises(ImageInputError, match="image #1"):
        m.predict([photos[0], np.zeros((50, 40, 5), np.uint8)])
    with pytest.raises(ImageInputError, match="expected a file path"):
        m.predict([42])


def test_bad_model_sources(tmp_path):
    with pytest.raises(ModelSourceError, match="no runs folder"):
        load(None, runs_dir=tmp_path / "runs")
    with pytest.raises(ModelSourceError, match="checkpoints/best.h5"):
        load(tmp_path)
    (tmp_path / "model.mlpackage").mkdir()
    with pytest.raises(ModelSourceError, match="Apple"):
        load(tmp_path / "model.mlpackage")
