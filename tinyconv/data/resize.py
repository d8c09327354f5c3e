"""THE resize policy, shared by ``prepare`` (training data), prediction and the browser app.

A model trained on CelebA's aligned 218x178 faces must see every other image the same way, or its
accuracy silently drops (the "resizing obscured by the API" problem). One function does it:

0. **Orientation**: a photo's EXIF orientation tag is applied first (``ImageOps.exif_transpose``),
   as browsers and phone galleries do, so a phone picture is cropped upright, not as stored.
1. **Colour**: convert to 8-bit RGB. Grey (``L``, ``I;16``...) is replicated into three channels;
   anything with alpha (``RGBA``, ``LA``, ``P`` with transparency) is **composited on white**
   (transparent pixels become white; alpha is never silently dropped); other modes (CMYK, YCbCr)
   use Pillow's ``convert("RGB")``.
2. **Centre crop** to the target aspect ratio W:H (178:218 for the full size). With source size
   ``w x h`` and target ``tw x th``::

       if w * th > tw * h:   # source too wide: keep the full height
           cw, ch = min(w, floor(h * tw / th + 0.5)), h
       else:                 # source too tall (or exact): keep the full width
           cw, ch = w, min(h, floor(w * th / tw + 0.5))
       left, top = (w - cw) // 2, (h - ch) // 2      # odd leftovers go to the right / bottom
       box = (left, top, left + cw, top + ch)

   Rounding is half-up (never Python's banker's ``round``), and ``//`` floors, so a browser can
   reproduce the box with ``Math.floor``.
3. **Resize** the box to ``tw x th`` with Pillow's ``BILINEAR`` filter, which Pillow applies with
   antialiasing (its triangle kernel widens with the reduction factor, like torchvision's
   ``antialias=True``).

An image that already has the target size is returned unchanged (no crop, no resampling).
"""
import math

import numpy as np
from PIL import Image, ImageOps

FULL_SIZE = (218, 178)  # (H, W) of CelebA's aligned images
# Decompression-bomb guard, shared by prepare (training images) and predict (photos): an image whose
# header says more pixels than this is refused before a pixel is decoded. 50 megapixels: a 12 MP
# phone photo is far below; a decoded RGB image at the limit is 150 MB.
MAX_PIXELS = 50_000_000
RESIZE_FILTER = "BILINEAR"
RESIZE_POLICY = ("apply the EXIF orientation, convert to RGB (alpha composited on white), centre-crop to the target W:H aspect "
                 "ratio (crop size rounded half-up, offsets floored), then resize with Pillow's "
                 "antialiased BILINEAR filter; identity when the image already has the target size")

_FILTER = getattr(Image.Resampling, RESIZE_FILTER)


def crop_box(src_size, size):
    """The centre-crop box ``(left, top, right, bottom)`` for a ``(w, h)`` source and an ``(H, W)`` target."""
    w, h = src_size
    th, tw = size
    if w * th > tw * h:
        cw, ch = min(w, math.floor(h * tw / th + 0.5)), h
    else:
        cw, ch = w, min(h, math.floor(w * th / tw + 0.5))
    left, top = (w - cw) // 2, (h - ch) // 2
    return (left, top, left + cw, top + ch)


def to_rgb(img):
    """A PIL image in RGB mode; alpha is composited on white (see the module docstring)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    img = to_8bit(img, "image")        # 16-bit grey and float images by their format's range
    return img.convert("RGB")


def to_8bit(img, where):
    """Reduce an image deeper than 8 bits to mode L by its format's range; other images pass unchanged.

    - 16-bit grey (``I;16``, ``I;16B``...; ``I`` from a 16-bit PNG or PGM): the top byte, ``v >> 8``,
      as Pillow itself reads 16-bit RGB files (never scaled by the image's own maximum).
    - Float (``F``, e.g. a float TIFF): 0.0 is black and 1.0 white, ``floor(v * 255 + 0.5)``; values
      outside [0, 1], NaN or infinity are refused rather than clipped.
    - Any other 32-bit integer image (``I`` from a TIFF or built in memory) has no defined range and
      is refused.
    The EXIF orientation is applied first (the converted image carries no EXIF).
    """
    mode = img.mode
    if not (mode.startswith("I") or mode == "F"):
        return img
    if img.getexif().get(0x0112, 1) != 1:  # 0x0112: Orientation; resize_to_model could not see it later
        img = ImageOps.exif_transpose(img)
    a = np.asarray(img)
    if mode.startswith("I;16"):
        return Image.fromarray((a.astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":
        if img.format not in ("PNG", "PPM") or (a.size and (a.min() < 0 or a.max() > 65535)):
            raise ValueError(f"{where}: a 32-bit integer image (Pillow mode I) has no defined range; "
                                  "save it as an 8- or 16-bit image")
        return Image.fromarray((a.astype(np.uint16) >> 8).astype(np.uint8))
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{where}: a float image with NaN or infinite values")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"{where}: a float image with values from {a.min():g} to {a.max():g}; "
                              "float images are read as 0.0 (black) to 1.0 (white): scale it to that "
                              "range or save it as an 8-bit image")
    return Image.fromarray(np.floor(a * np.float32(255) + np.float32(0.5)).astype(np.uint8))


def _from_array(a):
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise TypeError(f"resize_to_model expects a uint8 array, got {a.dtype}")
    if a.ndim == 2:
        return Image.fromarray(a, "L")
    if a.ndim == 3 and a.shape[2] == 3:
        return Image.fromarray(a, "RGB")
    if a.ndim == 3 and a.shape[2] == 4:
        return Image.fromarray(a, "RGBA")
    raise ValueError(f"resize_to_model expects an (H, W), (H, W, 3) or (H, W, 4) array, got {a.shape}")


def resize_to_model(img, size=FULL_SIZE):
    """Apply the resize policy: PIL image or uint8 array (H, W[, 3|4]) -> uint8 array (H', W', 3).

    ``size`` is ``(H', W')``; the default is CelebA's (218, 178).
    """
    th, tw = int(size[0]), int(size[1])
    if th <= 0 or tw <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    if isinstance(img, np.ndarray):
        if img.dtype == np.uint8 and img.ndim == 3 and img.shape == (th, tw, 3):
            return np.array(img)  # already the model's size: identity (a copy, never a view)
        img = _from_array(img)
    elif img.getexif().get(0x0112, 1) != 1:   # 0x0112: Orientation; 1 means upright already
        img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if img.size == (tw, th):
        return np.asarray(img, dtype=np.uint8).copy()
    box = crop_box(img.size, (th, tw))
    # crop() first, then resize(): the filter never reads pixels outside the box, which is the
    # behaviour a browser reimplementation gets from cropping into a canvas first.
    out = img.crop(box).resize((tw, th), _FILTER)
    return np.asarray(out, dtype=np.uint8).copy()
