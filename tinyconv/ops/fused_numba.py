"""The fused ops on NumPy float32/float64 arrays: BatchNorm -> ReLU (-> MaxPool) in the numba kernels.

bn_relu: norm_numba's kernels with ``relu`` set: the forward writes max(y, 0); the backward masks dy
by y > 0, with y recomputed from x by the forward's own expression and the forward's gamma and beta
(copies), so neither y nor a mask is kept, and the result is bit for bit that of the unfused numba
ops (batchnorm, then relu), by construction: see norm_numba.py.

bn_relu_maxpool: the forward normalises, rectifies and pools each window in one pass (below); the
full-size BatchNorm+ReLU output, the largest array of the block, is never written. The backward
routes the pooled gradient to each window's argmax (pool_numba's kernel) into one full-size buffer;
the BatchNorm sums read it and its dx pass overwrites it.
"""
from typing import NamedTuple

import numba
import numpy as np

from ..kernels.threads import parts_for, run_parts, split
from .geometry import geometry
from .norm_numba import SYNCS, _bn_out, gradients, normalize_images, statistics  # noqa: F401 (SYNCS: see norm)
from .pool_numba import first_max4, unpool


# -- BatchNorm2D -> ReLU -> MaxPool2D forward in one pass (non-overlapping windows: stride >= kernel) --
# The forward never writes the full-resolution BatchNorm+ReLU output: each window is normalised,
# rectified and reduced while in cache. Same expressions and the same first-maximum rule as the
# separate kernels (``_bn_out``, then ``v if v > 0 else 0``, then MaxPool2D's strict ``>``), so the
# pooled output and argmax are bit for bit those of normalize + pool_numba.max_planes. (The
# backward reuses the separate kernels: pool_numba.unpool_planes into a full-size buffer, then
# backward_sums and backward_dx_inplace over that buffer. Fused versions that route dy per plane
# measured slower here: numba's per-window scatter costs more than the streaming passes it saves.)

@numba.njit(cache=True, nogil=True)
def normalize_relu_maxpool(x, mean, inv_std, gamma, beta, kh, kw, sh, sw, y, argmax):
    """y[n, c, p, q] = max over the window at (p*sh, q*sw) of max(BN(x), 0); argmax as MaxPool2D's
    (offset i*kw + j of the first maximum)."""
    N, C, W = x.shape[0], x.shape[1], x.shape[3]
    out_h, out_w = y.shape[2], y.shape[3]
    zero = y.dtype.type(0)
    r0 = np.empty(W, dtype=y.dtype)                 # 2x2: a pair of rows, normalised and rectified
    r1 = np.empty(W, dtype=y.dtype)
    for task in range(N * C):
        n = task // C
        c = task % C
        mu, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        if kh == 2 and kw == 2 and sh == 2 and sw == 2:   # the default model's windows
            for p in range(out_h):
                for w in range(W):
                    v = _bn_out(x[n, c, 2 * p, w], mu, s, g, b)
                    r0[w] = v if v > 0 else zero
                    v = _bn_out(x[n, c, 2 * p + 1, w], mu, s, g, b)
                    r1[w] = v if v > 0 else zero
                for q in range(out_w):
                    best, idx = first_max4(r0[2 * q], r0[2 * q + 1], r1[2 * q], r1[2 * q + 1])
                    y[n, c, p, q] = best
                    argmax[n, c, p, q] = idx
            continue
        for p in range(out_h):
            for q in range(out_w):
                best = zero
                best_idx = 0
                for i in range(kh):
                    for j in range(kw):
                        v = _bn_out(x[n, c, p * sh + i, q * sw + j], mu, s, g, b)
                        v = v if v > 0 else zero
                        if (i == 0 and j == 0) or v > best:
                            best = v
                            best_idx = i * kw + j
                y[n, c, p, q] = best
                argmax[n, c, p, q] = best_idx


# -- the ops -----------------------------------------------------------------------------------------
class BNReLUNumbaSaved(NamedTuple):
    x: np.ndarray            # the input, by reference
    mean: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray        # as they were in the forward (copies): y > 0 is recomputed with them
    beta: np.ndarray
    train: bool


class BNReLUMaxPoolNumbaSaved(NamedTuple):
    bn: BNReLUNumbaSaved
    argmax: np.ndarray       # (N, C, out_h, out_w) uint8, as MaxPool2D's
    kernel: tuple
    stride: tuple


def bn_relu_forward(x, params, buffers, train, momentum, eps):
    x = np.ascontiguousarray(x)
    mean, inv_std = statistics(x, buffers, train, momentum, eps)
    gamma, beta = params["gamma"], params["beta"]
    y = np.empty_like(x)
    normalize_images(x, mean, inv_std, gamma, beta, True, y)
    return y, (BNReLUNumbaSaved(x, mean, inv_std, gamma.copy(), beta.copy(), train) if train else None)


def bn_relu_backward(saved, dy, params, grads, accumulate=False):
    dy = np.ascontiguousarray(dy, dtype=saved.x.dtype)
    return gradients(saved.x, dy, saved.mean, saved.inv_std, (saved.gamma, saved.beta), True, saved.train,
                     params, grads, accumulate, in_place=False)


def bn_relu_maxpool_forward(x, params, buffers, train, momentum, eps, kernel, stride):
    x = np.ascontiguousarray(x)
    g = geometry(x.shape, kernel, stride)
    mean, inv_std = statistics(x, buffers, train, momentum, eps)
    gamma, beta = params["gamma"], params["beta"]
    y = np.empty((g.N, g.C, g.out_h, g.out_w), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.uint8)
    parts = parts_for(g.N, x.size)

    def part(i):                                # the threads split the images
        a, b = split(g.N, parts, i)
        normalize_relu_maxpool(x[a:b], mean, inv_std, gamma, beta, *kernel, *stride, y[a:b], argmax[a:b])
    run_parts(part, parts)
    if not train:
        return y, None
    bn = BNReLUNumbaSaved(x, mean, inv_std, gamma.copy(), beta.copy(), train)
    return y, BNReLUMaxPoolNumbaSaved(bn, argmax, tuple(kernel), tuple(stride))


def bn_relu_maxpool_backward(saved, dy, params, grads, accumulate=False):
    bn, argmax = saved.bn, saved.argmax
    if dy.shape != argmax.shape:
        raise ValueError(f"BatchNorm2D -> ReLU -> MaxPool2D expects a gradient of shape {argmax.shape}, "
                         f"got {dy.shape}")
    dy = np.ascontiguousarray(dy, dtype=bn.x.dtype)
    routed = unpool(dy, argmax, saved.kernel, saved.stride, np.empty_like(bn.x))
    # dx over the routed gradient (our own array: one full-size array less)
    return gradients(bn.x, routed, bn.mean, bn.inv_std, (bn.gamma, bn.beta), True, bn.train, params, grads,
                     accumulate, in_place=True)


def bn_relu_saved_bytes(x_shape, itemsize):
    """x by reference; mean, inv_std, gamma and beta, C values each."""
    return 4 * x_shape[1] * itemsize


def bn_relu_maxpool_saved_bytes(x_shape, kernel, stride, itemsize):
    """As bn_relu, and the uint8 argmax, one byte per output."""
    g = geometry(x_shape, kernel, stride)
    return bn_relu_saved_bytes(x_shape, itemsize) + g.N * g.C * g.P
