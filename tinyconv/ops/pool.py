"""Max pooling (floor mode) and global average pooling, the reference, plain xp.

Max pooling: y[n, c, p, q] = max over (i, j) of x[n, c, p*sh + i, q*sw + j]. Saves, per output, the
offset i*kw + j (row-major inside the window) of the first maximum: backward sends dy there and
nowhere else, as PyTorch does on ties. Rows and columns that floor mode drops get zero gradient.
"""
from typing import NamedTuple

from ..backend import get_array_module
from .geometry import geometry


class MaxPoolSaved(NamedTuple):
    x_shape: tuple
    argmax: object          # (N, C, out_h, out_w) uint8: the winning offset in each window
    kernel: tuple
    stride: tuple


def _window(a, i, j, stride, out_hw):
    """The (N, C, out_h, out_w) strided view of ``a`` at kernel offset (i, j)."""
    (sh, sw), (out_h, out_w) = stride, out_hw
    return a[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]


def maxpool_forward(x, kernel, stride, train):
    """-> (y, MaxPoolSaved or None). One strided pass per window offset (kh*kw of them)."""
    xp = get_array_module(x)
    g = geometry(x.shape, kernel, stride)
    out_hw = (g.out_h, g.out_w)
    y = _window(x, 0, 0, stride, out_hw).copy()
    argmax = xp.zeros(y.shape, dtype=xp.uint8)
    for idx in range(1, g.kh * g.kw):
        v = _window(x, idx // g.kw, idx % g.kw, stride, out_hw)
        better = v > y                           # strict: the first maximum wins ties
        xp.copyto(y, v, where=better)
        argmax[better] = idx
    return y, (MaxPoolSaved(x.shape, argmax, tuple(kernel), tuple(stride)) if train else None)


def maxpool_backward(saved, dy):
    """dx: dy sent to each window's argmax, 0 elsewhere (overlapping windows add up)."""
    xp = get_array_module(dy)
    x_shape, argmax, (kh, kw), stride = saved
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    overlapping = stride[0] < kh or stride[1] < kw
    for idx in range(kh * kw):
        contrib = xp.where(argmax == idx, dy, 0)
        view = _window(dx, idx // kw, idx % kw, stride, dy.shape[2:])
        if overlapping:
            view += contrib
        else:                                    # windows are disjoint: each input is written once
            view[...] = contrib
    return dx


def maxpool_saved_bytes(x_shape, kernel, stride, itemsize):
    """The uint8 argmax, one byte per output."""
    g = geometry(x_shape, kernel, stride)
    return g.N * g.C * g.P


def global_avg_pool_forward(x):
    """y[n, c] = mean over h, w of x[n, c] -> (y, x.shape)."""
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool_backward(x_shape, dy):
    """dx = dy / (H*W) at every position."""
    xp = get_array_module(dy)
    N, C, H, W = x_shape
    dx = xp.empty(x_shape, dtype=dy.dtype)
    dx[...] = (dy / (H * W))[:, :, None, None]
    return dx
