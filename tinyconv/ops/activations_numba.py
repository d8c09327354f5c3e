"""ReLU on NumPy float32/float64 arrays: numba kernels, y and the mask in one pass forward, one
pass backward (the reference, activations.py, makes temporaries). The threads split the elements."""
from typing import NamedTuple

import numba
import numpy as np

from ..kernels.threads import parts_for, run_parts, split


@numba.njit(cache=True, nogil=True)
def relu_and_mask(x, y, mask):
    """Flat (contiguous) arrays: mask[i] = x[i] > 0; y[i] = x[i] if mask[i] else 0."""
    for i in range(x.size):
        v = x[i]
        m = v > 0
        mask[i] = m
        y[i] = v if m else 0


@numba.njit(cache=True, nogil=True)
def masked(dy, mask, dx):
    """dx[i] = dy[i] where the input was > 0, else 0."""
    for i in range(dy.size):
        dx[i] = dy[i] if mask[i] else 0


class ReLUNumbaSaved(NamedTuple):
    mask: np.ndarray


def _elementwise(kernel, a, b, out):
    """kernel(a, b, out) over flat views, the threads taking equal slices."""
    a, b, out = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    parts = parts_for(a.size, a.size)

    def part(i):
        lo, hi = split(a.size, parts, i)
        kernel(a[lo:hi], b[lo:hi], out[lo:hi])
    run_parts(part, parts)


def relu_forward(x, train):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    mask = np.empty(x.shape, dtype=np.bool_)
    _elementwise(relu_and_mask, x, y, mask)
    return y, (ReLUNumbaSaved(mask) if train else None)


def relu_backward(saved, dy):
    dy = np.ascontiguousarray(dy)
    if dy.shape != saved.mask.shape:
        return dy * saved.mask                  # broadcasting, as the reference does
    dx = np.empty_like(dy)
    _elementwise(masked, dy, saved.mask, dx)
    return dx


def relu_saved_bytes(x_shape, itemsize):
    """The bool mask, one byte per value."""
    N, C, H, W = x_shape
    return N * C * H * W
