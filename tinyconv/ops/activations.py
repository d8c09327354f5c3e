"""ReLU and (inverted) Dropout, the reference, plain xp."""
from typing import NamedTuple

import numpy as np

from ..backend import device_of, get_array_module, to_device


class ReLUSaved(NamedTuple):
    mask: object            # x > 0, bool


def relu_forward(x, train):
    """y = max(x, 0) -> (y, ReLUSaved or None)."""
    xp = get_array_module(x)
    mask = x > 0
    return xp.where(mask, x, x.dtype.type(0)), (ReLUSaved(mask) if train else None)


def relu_backward(saved, dy):
    """dx = dy where x > 0, else 0 (the subgradient 0 at x == 0)."""
    return dy * saved.mask


def relu_saved_bytes(x_shape, itemsize):
    """The bool mask, one byte per value."""
    N, C, H, W = x_shape
    return N * C * H * W


class DropoutSaved(NamedTuple):
    mask: object            # keep / (1 - p): 0 or 1 / (1 - p), in x's dtype


def dropout_forward(x, p, rng, train):
    """Training: y = x * mask / (1 - p), mask ~ Bernoulli(1 - p) drawn by ``rng`` on the CPU (the
    same masks on every device for a seed); inference, or p = 0: y = x -> (y, DropoutSaved or None)."""
    if not train or p == 0:
        return x, None
    keep = rng.random(x.shape) >= p
    mask = to_device((keep / (1 - p)).astype(x.dtype), device_of(x))
    return x * mask, DropoutSaved(mask)


def dropout_backward(saved, dy):
    return dy if saved is None else dy * saved.mask


def dropout_saved_bytes(x_shape, p, itemsize):
    """The scaled mask, the size of x (nothing when p = 0)."""
    return int(np.prod(x_shape)) * itemsize if p else 0
