"""``tinyconv.load(path)``: a trained model that takes photos of any size and returns probabilities.

    model = tinyconv.load("runs/seed-plateau")        # a run folder, a checkpoint .h5,
    model = tinyconv.load("runs/seed-plateau/export") # an exported folder or its model.onnx
    p = model.predict(["me.jpg", pil_image, uint8_array])   # (N, K) float32
    model.attributes                                   # ["Eyeglasses", "Male", "Smiling"]

Every image goes through ``tinyconv.data.resize.resize_to_model``, the function ``prepare`` uses
for the training data (RGB conversion: grey replicated to three channels, alpha composited on
white; centre crop to the model's W:H; Pillow's antialiased BILINEAR resize), then the same
``uint8 / 255`` conversion as the training batches (checkpoints) or the ONNX graph's own.
Bad input raises :class:`ImageInputError` naming the file; the message is meant for users.
"""
import json
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .checkpoint import CheckpointError
from .data.batches import to_model_input
from .data.resize import RESIZE_POLICY, resize_to_model
from .export.source import DEFAULT_RUNS_DIR, ModelSourceError, find_checkpoint, load_trained, newest_run

MAX_PIXELS = 50_000_000  # decompression-bomb guard: 50 megapixels (a 12 MP phone photo is far below)
BATCH = 16               # images per forward pass (bounds memory at 218x178)


class ImageInputError(ValueError):
    """An input that is not a usable image; the message names the file (or the position in the list)."""


def read_image(path, max_pixels=MAX_PIXELS):
    """Open and fully decode an image file -> PIL image (any mode; resize_to_model converts it)."""
    path = Path(path)
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if not path.is_file():
        raise ImageInputError(f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size below
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except OSError as exc:
        raise ImageInputError(f"{path}: damaged or truncated image file, cannot be opened ({exc})") from None
    with img:
        w, h = img.size
        # The header gives the size before any pixel is decoded: refuse before allocating.
        if w * h > max_pixels:
            raise ImageInputError(f"{path}: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the limit of "
                                  f"{max_pixels / 1e6:.0f} (a guard against decompression bombs); "
                                  "shrink the image first")
        try:
            img.load()  # decode now, so a truncated file fails here, with its name
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageInputError(f"{path}: damaged or truncated image file ({exc})") from None
        return img.copy()


def _one_image(item, size, where):
    """One image in any accepted form -> uint8 (H, W, 3) by the resize policy."""
    if isinstance(item, (str, os.PathLike)):
        item = read_image(item)
    if isinstance(item, Image.Image):
        if item.width * item.height > MAX_PIXELS:
            raise ImageInputError(f"{where}: {item.width}x{item.height} is over the {MAX_PIXELS / 1e6:.0f} "
                                  "megapixel limit")
        return resize_to_model(item, size)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ImageInputError(f"{where}: expected a uint8 RGB array (0-255), got dtype {item.dtype}")
        if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise ImageInputError(f"{where}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got {item.shape}")
        if item.shape[0] * item.shape[1] > MAX_PIXELS:
            raise ImageInputError(f"{where}: {item.shape[1]}x{item.shape[0]} is over the megapixel limit")
        if min(item.shape[:2]) == 0:
            raise ImageInputError(f"{where}: an empty image {item.shape}")
        return resize_to_model(item, size)
    raise ImageInputError(f"{where}: expected a file path, a PIL image or a uint8 array, "
                          f"got {type(item).__name__}")


def prepare_images(images, size):
    """images (one, or a list, or a uint8 (N, H, W, 3) array) -> uint8 (N, H, W, 3) at ``size`` (H, W)."""
    if isinstance(images, (str, os.PathLike, Image.Image)) or \
            (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        images = [images]
    out = []
    for i, item in enumerate(images):
        where = str(item) if isinstance(item, (str, os.PathLike)) else f"image #{i}"
        out.append(_one_image(item, size, where))
    if not out:
        return np.zeros((0, size[0], size[1], 3), np.uint8)
    return np.stack(out)


class Predictor:
    """A loaded model. ``predict(images) -> (N, K)`` probabilities, columns in ``attributes`` order.

    Attributes: ``attributes``, ``image_size`` (H, W), ``source`` (the file loaded), ``kind``
    ("checkpoint" or "onnx"), ``metadata`` (the checkpoint's meta or the ONNX metadata),
    ``synthetic`` (True when trained on the built-in synthetic faces, not CelebA).
    """

    def __init__(self, kind, source, attributes, image_size, metadata, run_batch):
        self.kind, self.source = kind, str(source)
        self.attributes = list(attributes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.metadata = metadata
        self.synthetic = bool(metadata.get("synthetic", False))
        self._run_batch = run_batch

    def predict(self, images):
        x = prepare_images(images, self.image_size)
        if len(x) == 0:
            return np.zeros((0, len(self.attributes)), np.float32)
        return np.concatenate([self._run_batch(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]).astype(np.float32)

    def predict_one(self, image):
        """{attribute: probability} for one image."""
        return dict(zip(self.attributes, (float(p) for p in self.predict([image])[0])))

    def __repr__(self):
        return f"Predictor({self.kind}: {self.source}, attributes={self.attributes}, image_size={self.image_size})"


def _from_checkpoint(path):
    model, meta = load_trained(path)

    def run_batch(x_u8):
        return model.predict_proba(to_model_input(x_u8, np))  # uint8 / 255, as in training

    return Predictor("checkpoint", path, meta["attributes"], meta["image_size"], meta, run_batch)


def _from_onnx(path):
    from .export.onnx_export import PROBS_NAME, ort_session
    try:
        sess = ort_session(path)
    except ImportError:
        raise ModelSourceError(f"{path}: ONNX Runtime is not installed (pip install -e .[onnx])") from None
    except Exception as exc:  # onnxruntime raises its own exception types on a bad file
        raise ModelSourceError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
    props = sess.get_modelmeta().custom_metadata_map
    try:
        attributes = json.loads(props["attributes"])
        image_size = json.loads(props["image_size"])
    except (KeyError, ValueError):
        raise ModelSourceError(f"{path}: not exported by tinyconv (no attributes / image_size metadata)") from None
    meta = {k: _json_or_text(v) for k, v in props.items()}
    if meta.get("resize_policy") != RESIZE_POLICY:
        raise ModelSourceError(f"{path}: exported with another resize policy ({meta.get('resize_policy')!r}); "
                               "re-export it with this tinyconv")

    def run_batch(x_u8):
        return sess.run([PROBS_NAME], {"image": np.ascontiguousarray(x_u8)})[0]

    return Predictor("onnx", path, attributes, image_size, meta, run_batch)


def _json_or_text(v):
    try:
        return json.loads(v)
    except ValueError:
        return v


def resolve(path=None, runs_dir=DEFAULT_RUNS_DIR):
    """(kind, file): "onnx" for model.onnx or a folder holding one, else "checkpoint".

    None: the newest run's checkpoints/best.h5, or its export/model.onnx when it has no checkpoint.
    """
    if path is None:
        try:
            return "checkpoint", find_checkpoint(None, runs_dir)
        except ModelSourceError:
            exports = sorted(Path(runs_dir).glob("*/export/model.onnx"), key=lambda p: p.stat().st_mtime)
            if exports:
                return "onnx", exports[-1]
            raise
    path = Path(path)
    if path.is_dir() and (path / "model.onnx").is_file():
        return "onnx", path / "model.onnx"
    if path.is_file() and path.suffix.lower() == ".onnx":
        return "onnx", path
    if path.suffix == ".mlpackage" or (path.is_dir() and (path / "model.mlpackage").exists()):
        raise ModelSourceError(f"{path}: a Core ML package runs only on Apple platforms; pass the "
                               "model.onnx beside it or the checkpoint")
    return "checkpoint", find_checkpoint(path, runs_dir)


def load(path=None, runs_dir=DEFAULT_RUNS_DIR):
    """Load a model for prediction from a checkpoint .h5, a run folder, an exported folder or a
    model.onnx; None loads the newest run's best checkpoint. Raises ModelSourceError or CheckpointError."""
    kind, file = resolve(path, runs_dir)
    return _from_onnx(file) if kind == "onnx" else _from_checkpoint(file)


__all__ = ["load", "Predictor", "ImageInputError", "ModelSourceError", "CheckpointError", "read_image",
           "prepare_images", "MAX_PIXELS", "newest_run"]
