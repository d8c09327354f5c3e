"""``tinyconv.load(path)``: a trained model that takes photos of any size and returns probabilities.

    model = tinyconv.load("runs/seed-plateau")        # a run folder, a checkpoint .h5,
    model = tinyconv.load("runs/seed-plateau/export") # an exported folder or its model.onnx
    p = model.predict(["me.jpg", pil_image, uint8_array])   # (N, K) float32
    model.attributes                                   # ["Eyeglasses", "Male", "Smiling"]

Every image goes through ``tinyconv.data.resize.resize_to_model``, the function ``prepare`` uses
for the training data (RGB conversion: grey replicated to three channels, alpha composited on
white; centre crop to the model's W:H; Pillow's antialiased BILINEAR resize), then the same
``uint8 / 255`` conversion as the training batches (checkpoints) or the ONNX graph's own.

What is refused, with :class:`ImageInputError` naming the file (or the position in the list):
not an image, damaged or truncated, over ``MAX_PIXELS``, a centre crop under ``MIN_SIDE`` pixels a
side, an array that is not uint8 (H, W[, 3|4]), anything else that is not a path, PIL image or
array (``None``, numbers, bytes, a dict or set of images). Images deeper than 8 bits are reduced by
their format's range before the policy (see :func:`to_8bit`). A model file is checked before use
(:func:`check_onnx`, and the metadata of both kinds), and every batch it returns must be (N, K)
probabilities in [0, 1]; otherwise :class:`ModelSourceError` names the file.
"""
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Set
from numbers import Integral
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .checkpoint import CheckpointError
from .data.batches import to_model_input
from .data.resize import FULL_SIZE, MAX_PIXELS, RESIZE_POLICY, crop_box, resize_to_model
from .data.resize import to_8bit as _to_8bit
from .export.source import DEFAULT_RUNS_DIR, ModelSourceError, find_checkpoint, load_trained, newest_run

# The smallest centre crop (the part of the image the model sees) accepted, in pixels a side, or the
# model's own input size when that is smaller. Below it the policy would stretch a few pixels over the
# whole input (a 1x1 image becomes a flat colour): a prediction on that means nothing.
MIN_SIDE = 16
BATCH = 16               # images per forward pass at CelebA's 218x178; fewer for larger inputs
MAX_ONNX_BYTES = 256 * 2**20  # a model.onnx above this is refused unread (the full-size model is ~2 MB)
MAX_INPUT_SIDE = 1024    # a model whose recorded input H or W exceeds this is refused (memory)


class ImageInputError(ValueError):
    """An input that is not a usable image; the message names the file (or the position in the list)."""


def to_8bit(img, where):
    """:func:`tinyconv.data.resize.to_8bit` (deep images by their format's range), its refusals raised as
    ImageInputError."""
    try:
        return _to_8bit(img, where)
    except ValueError as exc:
        raise ImageInputError(str(exc)) from None


def read_image(path, max_pixels=MAX_PIXELS):
    """Open and fully decode an image file -> PIL image (8-bit modes: deeper ones go through to_8bit)."""
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
        if exc.errno is not None:  # the file system's error (permission, I/O), not the image's
            raise ImageInputError(f"{path}: cannot read the file ({exc.strerror})") from None
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
        out = to_8bit(img, path)  # here, while the file's format is known
        return img.copy() if out is img else out


def _check_size(w, h, size, where):
    """Refuse an image whose centre crop (what the model sees) is under MIN_SIDE pixels a side."""
    th, tw = size
    left, top, right, bottom = crop_box((w, h), size)
    cw, ch = right - left, bottom - top
    min_w, min_h = min(MIN_SIDE, tw), min(MIN_SIDE, th)
    if cw < min_w or ch < min_h:
        raise ImageInputError(f"{where}: {w}x{h} pixels is too small: its centre crop at the model's "
                              f"{tw}:{th} shape is {cw}x{ch}, under the minimum of {min_w}x{min_h} "
                              "(tinyconv.predict.MIN_SIDE)")


def _one_image(item, size, where):
    """One image in any accepted form -> uint8 (H, W, 3) by the resize policy."""
    if isinstance(item, (str, os.PathLike)):
        item = read_image(item)
    if isinstance(item, Image.Image):
        if item.width * item.height > MAX_PIXELS:
            raise ImageInputError(f"{where}: {item.width}x{item.height} is over the {MAX_PIXELS / 1e6:.0f} "
                                  "megapixel limit")
        try:
            w, h = item.size
            if item.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that turn it by 90 degrees
                w, h = h, w
            _check_size(w, h, size, where)
            return resize_to_model(to_8bit(item, where), size)
        except ImageInputError:
            raise
        # a mode Pillow cannot turn into RGB (ValueError), a damaged file (OSError); an image whose file
        # was closed before its pixels were loaded fails an assert inside Pillow
        except (OSError, ValueError, AssertionError) as exc:
            raise ImageInputError(f"{where}: Pillow cannot read or convert this image "
                                  f"({exc or 'its file was closed before the pixels were loaded'})") from None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ImageInputError(f"{where}: expected a uint8 RGB array (0-255), got dtype {item.dtype}")
        if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise ImageInputError(f"{where}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got {item.shape}")
        if item.shape[0] * item.shape[1] > MAX_PIXELS:
            raise ImageInputError(f"{where}: {item.shape[1]}x{item.shape[0]} is over the megapixel limit")
        if min(item.shape[:2]) == 0:
            raise ImageInputError(f"{where}: an empty image {item.shape}")
        _check_size(item.shape[1], item.shape[0], size, where)
        return resize_to_model(item, size)
    got = "None" if item is None else type(item).__name__
    hint = " (encoded bytes: pass Image.open(io.BytesIO(data)))" if isinstance(item, (bytes, bytearray)) else ""
    raise ImageInputError(f"{where}: expected a file path, a PIL image or a uint8 array, got {got}{hint}")


def _as_list(images):
    """images as accepted by predict -> a list of single images; ImageInputError for anything else."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ImageInputError(f"images: an array of shape {images.shape} is neither one image (H, W[, C]) "
                              "nor a batch (N, H, W, C)")
    if isinstance(images, (Mapping, Set)):
        raise ImageInputError(f"images: got a {type(images).__name__}; pass a list (the rows of the result "
                              "follow its order)")
    if isinstance(images, (bytes, bytearray, memoryview)) or not isinstance(images, Iterable):
        return [images]  # _one_image names the type
    return list(images)


def prepare_images(images, size):
    """images (one, or a list, or a uint8 (N, H, W, 3) array) -> uint8 (N, H, W, 3) at ``size`` (H, W)."""
    return _prepare(_as_list(images), size)


def _prepare(items, size, start=0):
    """A list of single images -> uint8 (N, H, W, 3); errors count positions from ``start``."""
    out = []
    for i, item in enumerate(items, start):
        if isinstance(item, (str, os.PathLike)):
            where = str(item)
        else:
            name = getattr(item, "filename", "") if isinstance(item, Image.Image) else ""
            where = f"image #{i}" + (f" ({name})" if name else "")
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
        H, W = self.image_size
        self._batch = max(1, min(BATCH, BATCH * FULL_SIZE[0] * FULL_SIZE[1] // (H * W)))

    def predict(self, images):
        items = _as_list(images)
        probs = [np.zeros((0, len(self.attributes)), np.float32)]
        for i in range(0, len(items), self._batch):
            x = _prepare(items[i:i + self._batch], self.image_size, start=i)
            probs.append(self._checked(self._run_batch(x), len(x)))
        return np.concatenate(probs)

    def _checked(self, p, n):
        """The model's output for n images, if it is (n, K) probabilities; ModelSourceError otherwise."""
        p = np.asarray(p)
        K = len(self.attributes)
        if p.shape != (n, K):
            raise ModelSourceError(f"{self.source}: returned an array of shape {p.shape} for {n} images, "
                                   f"expected ({n}, {K}) for its {K} attributes")
        if not np.isfinite(p).all():
            raise ModelSourceError(f"{self.source}: returned NaN or infinite values, not probabilities")
        if p.size and (p.min() < 0 or p.max() > 1):
            raise ModelSourceError(f"{self.source}: returned values from {p.min():g} to {p.max():g}, "
                                   "not probabilities (outside [0, 1])")
        return p.astype(np.float32)

    def predict_one(self, image):
        """{attribute: probability} for one image."""
        return dict(zip(self.attributes, (float(p) for p in self.predict([image])[0])))

    def __repr__(self):
        return f"Predictor({self.kind}: {self.source}, attributes={self.attributes}, image_size={self.image_size})"


def _model_facts(source, attributes, image_size):
    """A model's recorded attributes and input size, checked -> (list of names, (H, W))."""
    if not (isinstance(attributes, list) and attributes and all(isinstance(a, str) and a for a in attributes)):
        raise ModelSourceError(f"{source}: its 'attributes' metadata is {str(attributes)[:80]!r}, "
                               "not a list of attribute names")
    if len(set(attributes)) != len(attributes):
        raise ModelSourceError(f"{source}: its 'attributes' metadata names an attribute twice ({attributes})")
    if not (isinstance(image_size, list) and len(image_size) == 2
            and all(isinstance(v, Integral) and not isinstance(v, bool) and 1 <= v <= MAX_INPUT_SIDE
                    for v in image_size)):
        raise ModelSourceError(f"{source}: its 'image_size' metadata is {str(image_size)[:80]!r}, expected "
                               f"[H, W] with each between 1 and {MAX_INPUT_SIDE}")
    return attributes, (int(image_size[0]), int(image_size[1]))


def _from_checkpoint(path):
    model, meta = load_trained(path)
    attributes, image_size = _model_facts(path, meta["attributes"], meta["image_size"])
    config = meta["model"] if isinstance(meta["model"], dict) else {}
    if "num_outputs" in config and config["num_outputs"] != len(attributes):
        raise ModelSourceError(f"{path}: the model has {config['num_outputs']} outputs but its metadata names "
                               f"{len(attributes)} attributes ({', '.join(attributes)})")
    if isinstance(config.get("input_shape"), list) and config["input_shape"][1:] != list(image_size):
        raise ModelSourceError(f"{path}: the model's input is {config['input_shape']} but its metadata says "
                               f"image_size {list(image_size)}")

    def run_batch(x_u8):
        return model.predict_proba(to_model_input(x_u8, np))  # uint8 / 255, as in training

    return Predictor("checkpoint", path, attributes, image_size, meta, run_batch)


def _tensors(graph):
    """Every tensor a graph holds, its subgraphs' included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def _signature(value_info):
    """A graph input or output -> (name, element type, dims with None for a symbolic dimension)."""
    from onnx import TensorProto
    if not value_info.type.HasField("tensor_type"):
        return value_info.name, "not a tensor", ()
    t = value_info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return value_info.name, TensorProto.DataType.Name(t.elem_type).lower(), dims


def _text(sig):
    name, dtype, dims = sig
    return f"{name} {dtype} ({', '.join('N' if d is None else str(d) for d in dims)})"


def check_onnx(path):
    """Check a model.onnx before ONNX Runtime opens it -> (attributes, (H, W), metadata strings).

    Refused with ModelSourceError naming the file: over MAX_ONNX_BYTES; not a readable ONNX model
    (other bytes, truncated); tensors stored in external data files (ONNX Runtime would read other
    files on the model's say); no tinyconv metadata (attributes, image_size); and a graph other than
    the one export.py writes for that metadata: one input ``image`` uint8 (N, H, W, 3) with a dynamic
    N, outputs ``probabilities`` float (N, K) then one float (N,) per attribute, named by output_name.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from .export.onnx_export import INPUT_NAME, PROBS_NAME, output_name
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ONNX_BYTES + 1)
    except OSError as exc:
        raise ModelSourceError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if len(data) > MAX_ONNX_BYTES:
        raise ModelSourceError(f"{path}: over {MAX_ONNX_BYTES // 2**20} MiB, far larger than any tinyconv "
                               "model; refused unread (tinyconv.predict.MAX_ONNX_BYTES)")
    try:
        model = onnx.load_model_from_string(data)
    except DecodeError:
        raise ModelSourceError(f"{path}: not an ONNX model (another kind of file, or damaged or truncated)") from None
    if not model.HasField("graph"):
        raise ModelSourceError(f"{path}: not an ONNX model (no graph: an empty file, or another kind of file)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) for t in _tensors(model.graph)):
        raise ModelSourceError(f"{path}: keeps tensors in external data files; export.py writes one "
                               "self-contained file, and external data is refused")
    if model.functions:
        raise ModelSourceError(f"{path}: defines ONNX functions, which export.py never writes")
    props = {p.key: p.value for p in model.metadata_props}
    try:
        attributes, image_size = json.loads(props["attributes"]), json.loads(props["image_size"])
    except (KeyError, ValueError):
        raise ModelSourceError(f"{path}: not exported by tinyconv (no attributes / image_size metadata)") from None
    attributes, (H, W) = _model_facts(path, attributes, image_size)
    inits = {t.name for t in model.graph.initializer}
    got = [_signature(v) for v in model.graph.input if v.name not in inits]
    want = [(INPUT_NAME, "uint8", (None, H, W, 3))]
    if got != want:
        raise ModelSourceError(f"{path}: its graph takes {', '.join(map(_text, got)) or 'no input'}; export.py "
                               f"writes {_text(want[0])} for its metadata's image_size [{H}, {W}]")
    got = [_signature(v) for v in model.graph.output]
    want = [(PROBS_NAME, "float", (None, len(attributes)))] + [(output_name(a), "float", (None,)) for a in attributes]
    if got != want:
        k = next((k for k, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
        found = _text(got[k]) if k < len(got) else "nothing"
        expected = _text(want[k]) if k < len(want) else "no more outputs"
        raise ModelSourceError(f"{path}: not the graph export.py writes for the attributes in its metadata "
                               f"({', '.join(attributes)}): output #{k} is {found}, expected {expected}")
    return attributes, (H, W), props


def _from_onnx(path):
    from .export.onnx_export import PROBS_NAME, ort_session
    attributes, image_size, props = check_onnx(path)
    meta = {k: _json_or_text(v) for k, v in props.items()}
    if meta.get("resize_policy") != RESIZE_POLICY:
        raise ModelSourceError(f"{path}: exported with another resize policy ({meta.get('resize_policy')!r}); "
                               "re-export it with this tinyconv")
    try:
        sess = ort_session(path)
    except ImportError:
        raise ModelSourceError(f"{path}: ONNX Runtime is not installed (pip install -e .)") from None
    except Exception as exc:  # onnxruntime raises its own exception types on a bad file
        raise ModelSourceError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None

    def run_batch(x_u8):
        try:
            return sess.run([PROBS_NAME], {"image": np.ascontiguousarray(x_u8)})[0]
        except Exception as exc:  # onnxruntime's own exception types again
            raise ModelSourceError(f"{path}: ONNX Runtime failed to run it "
                                   f"({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None

    return Predictor("onnx", path, attributes, image_size, meta, run_batch)


def _json_or_text(v):
    try:
        return json.loads(v)
    except ValueError:
        return v


def resolve(path=None, runs_dir=DEFAULT_RUNS_DIR, announce=None):
    """(kind, file): "onnx" for model.onnx or a folder holding one, else "checkpoint".

    An experiment folder gives its run with the lowest validation loss; None the newest run (or
    experiment, by the same rule), or the newest export/model.onnx when there is no checkpoint.
    ``announce`` is called with each line saying which run was chosen and why (export/source.py).
    """
    if path is None:
        try:
            return "checkpoint", find_checkpoint(None, runs_dir, announce=announce)
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
    return "checkpoint", find_checkpoint(path, runs_dir, announce=announce)


def load(path=None, runs_dir=DEFAULT_RUNS_DIR, announce=None):
    """Load a model for prediction from a checkpoint .h5, a run folder, an experiment folder (its run
    with the lowest validation loss), an exported folder or a model.onnx; None loads the newest run's
    best checkpoint. ``announce(line)`` hears which run was chosen and why. Raises ModelSourceError or
    CheckpointError."""
    kind, file = resolve(path, runs_dir, announce)
    return _from_onnx(file) if kind == "onnx" else _from_checkpoint(file)


__all__ = ["load", "Predictor", "ImageInputError", "ModelSourceError", "CheckpointError", "read_image",
           "prepare_images", "to_8bit", "check_onnx", "MAX_PIXELS", "MIN_SIDE", "newest_run"]
