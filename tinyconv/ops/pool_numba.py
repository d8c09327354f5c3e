"""Max pooling on NumPy float32/float64 arrays: numba kernels, one pass over each (image, channel)
plane instead of the reference's (pool.py) kh*kw strided passes; the same argmax convention.

    y[n, c, p, q] = max over (i, j) of x[n, c, p*sh + i, q*sw + j]
    argmax[n, c, p, q] = i*kw + j of the FIRST maximum (row-major in the window; ties go first)
The threads split the images (kernels/threads.py).
"""
from typing import NamedTuple

import numba
import numpy as np

from ..kernels.threads import parts_for, run_parts, split
from .geometry import geometry


@numba.njit(cache=True, nogil=True, inline="always")
def first_max4(v0, v1, v2, v3):
    """(max, index of its first occurrence) of a 2x2 window given row-major: ties go first."""
    best, idx = v0, 0
    if v1 > best:
        best, idx = v1, 1
    if v2 > best:
        best, idx = v2, 2
    if v3 > best:
        best, idx = v3, 3
    return best, idx


@numba.njit(cache=True, nogil=True)
def max_planes(x, kh, kw, sh, sw, y, argmax):
    """y and argmax of every (n, c) plane."""
    N, C = x.shape[0], x.shape[1]
    out_h, out_w = y.shape[2], y.shape[3]
    for task in range(N * C):
        n = task // C
        c = task % C
        if kh == 2 and kw == 2:                # the default model's 2x2 window, unrolled
            for p in range(out_h):
                h = p * sh
                for q in range(out_w):
                    w = q * sw
                    best, best_idx = first_max4(x[n, c, h, w], x[n, c, h, w + 1],
                                                x[n, c, h + 1, w], x[n, c, h + 1, w + 1])
                    y[n, c, p, q] = best
                    argmax[n, c, p, q] = best_idx
            continue
        for p in range(out_h):
            for q in range(out_w):
                best = x[n, c, p * sh, q * sw]
                best_idx = 0
                for i in range(kh):
                    for j in range(kw):
                        v = x[n, c, p * sh + i, q * sw + j]
                        if v > best:            # strict: the first maximum wins ties
                            best = v
                            best_idx = i * kw + j
                y[n, c, p, q] = best
                argmax[n, c, p, q] = best_idx


@numba.njit(cache=True, nogil=True)
def unpool_planes(dy, argmax, kh, kw, sh, sw, dx):
    """dx[n, c, p*sh + i, q*sw + j] += dy[n, c, p, q] where (i, j) is the window's argmax; 0 elsewhere.

    One (n, c) plane at a time: zero it, then add (+= handles overlapping windows). Rows and
    columns that floor mode dropped stay 0.
    """
    N, C = dx.shape[0], dx.shape[1]
    H, W = dx.shape[2], dx.shape[3]
    out_h, out_w = dy.shape[2], dy.shape[3]
    for task in range(N * C):
        n = task // C
        c = task % C
        if kh == 2 and kw == 2 and sh == 2 and sw == 2:
            # disjoint 2x2 windows: write each covered dx once (dy at the argmax, 0 elsewhere),
            # then zero the row and column that floor mode dropped, if any
            for p in range(out_h):
                for q in range(out_w):
                    d = dy[n, c, p, q]
                    idx = argmax[n, c, p, q]
                    dx[n, c, 2 * p, 2 * q] = d if idx == 0 else 0
                    dx[n, c, 2 * p, 2 * q + 1] = d if idx == 1 else 0
                    dx[n, c, 2 * p + 1, 2 * q] = d if idx == 2 else 0
                    dx[n, c, 2 * p + 1, 2 * q + 1] = d if idx == 3 else 0
            for h in range(2 * out_h, H):
                for w in range(W):
                    dx[n, c, h, w] = 0
            for h in range(2 * out_h):
                for w in range(2 * out_w, W):
                    dx[n, c, h, w] = 0
            continue
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0
        for p in range(out_h):
            for q in range(out_w):
                idx = argmax[n, c, p, q]
                dx[n, c, p * sh + idx // kw, q * sw + idx % kw] += dy[n, c, p, q]


# -- the op ------------------------------------------------------------------------------------------
class MaxPoolNumbaSaved(NamedTuple):
    x_shape: tuple
    argmax: np.ndarray
    kernel: tuple
    stride: tuple


def unpool(dy, argmax, kernel, stride, dx):
    """``unpool_planes`` with the threads splitting the images."""
    parts = parts_for(dx.shape[0], dx.size)

    def part(i):
        a, b = split(dx.shape[0], parts, i)
        unpool_planes(dy[a:b], argmax[a:b], *kernel, *stride, dx[a:b])
    run_parts(part, parts)
    return dx


def maxpool_forward(x, kernel, stride, train):
    x = np.ascontiguousarray(x)
    g = geometry(x.shape, kernel, stride)
    y = np.empty((g.N, g.C, g.out_h, g.out_w), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.uint8)
    parts = parts_for(g.N, x.size)

    def part(i):                                # the threads split the images
        a, b = split(g.N, parts, i)
        max_planes(x[a:b], *kernel, *stride, y[a:b], argmax[a:b])
    run_parts(part, parts)
    return y, (MaxPoolNumbaSaved(x.shape, argmax, tuple(kernel), tuple(stride)) if train else None)


def maxpool_backward(saved, dy):
    dy = np.ascontiguousarray(dy)
    return unpool(dy, saved.argmax, saved.kernel, saved.stride, np.empty(saved.x_shape, dtype=dy.dtype))


def maxpool_saved_bytes(x_shape, kernel, stride, itemsize):
    """The uint8 argmax, one byte per output."""
    g = geometry(x_shape, kernel, stride)
    return g.N * g.C * g.P
