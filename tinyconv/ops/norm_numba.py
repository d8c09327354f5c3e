"""BatchNorm on NumPy float32/float64 arrays: numba kernels, two passes over x forward and two over
(x, dy) backward, instead of the reference's (norm.py) mean/var/xhat temporaries. Saves x, mean and
inv_std (not xhat): backward recomputes xhat on the fly.

Sums run in float64 (whatever x's dtype): M = N*H*W terms per channel, and float32 running sums
would lose digits for large M. Loops run per channel (statistics, for a range of channels: the
threads split the channels, so each sum is made by one thread in one order) or per (n, c) plane
(the threads split the images).

No kernel here uses fast-math: every sum is added in the order the source writes, so a result does
not depend on the CPU (LLVM vectorises differently per CPU, and with reassociation allowed that
changes the order of a sum, and so its last bits) nor on the thread count. The per-channel sums
are vectorisable all the same: they accumulate along the plane (``acc[k]`` for each pixel k, four
images at a time, elementwise, so in SIMD lanes with no reordering), and only the plane's HW
partial sums are added serially at the end (``_channel_sums``). Fused and unfused calls sum the
same per-element values in the same order, so they agree bit for bit on any CPU.

Fused ReLU (``relu`` set: the bn_relu ops of fused_numba.py): the forward writes
max(y, 0), and the backward masks dy by y > 0, with y recomputed from x by ``_bn_out``, the very
expression the forward used (no kernel uses fast-math, and LLVM does not contract into FMAs without
it), so the mask is bit for bit the ReLU's x > 0 and nothing the size of x is cached
for it.
"""
from typing import NamedTuple

import numba
import numpy as np

from ..kernels.threads import parts_for, run_parts, split
from .grads import store_grad
from . import norm
from .norm import update_running_stats

SYNCS = True     # takes part in synchronised BatchNorm (norm.SYNC): see statistics() and gradients()


@numba.njit(cache=True, nogil=True, inline="always")
def _terms(v, w, mode, shift, mu, s, g, b):
    """The two per-element terms a kernel sums, for x = v and dy = w: (d, d*d) with d = v - shift for
    the statistics (mode 0); (d, d * xhat), xhat = (v - mu) * s, for the backward, with d = dy
    (mode 1) or dy masked by y > 0 (mode 2, the fused ReLU)."""
    if mode == 0:
        d = np.float64(v) - shift
        return d, d * d
    d = np.float64(w)
    if mode == 2 and not _bn_out(v, mu, s, g, b) > 0:
        d = 0.0
    return d, d * np.float64((v - mu) * s)


@numba.njit(cache=True, nogil=True, inline="always")
def _channel_sums(x3, dy3, c, mode, shift, mu, s, g, b, acc0, acc1):
    """(sum of the first term, sum of the second) of ``_terms`` over (n, k) for channel c, in float64
    and in one fixed order: per pixel k, four images at a time ((t0 + t1) + (t2 + t3)) added into
    acc[k], then the remaining images one by one; then the HW pixel sums from k = 0 up. The loops
    over k are elementwise, so they vectorise without reassociation. ``acc0``/``acc1``: float64
    scratch of HW elements. x3, dy3: (N, C, HW) views (dy3 is x3 for the statistics)."""
    N, HW = x3.shape[0], x3.shape[2]
    acc0[:] = 0.0
    acc1[:] = 0.0
    n = 0
    while n + 4 <= N:
        for k in range(HW):
            p0, q0 = _terms(x3[n, c, k], dy3[n, c, k], mode, shift, mu, s, g, b)
            p1, q1 = _terms(x3[n + 1, c, k], dy3[n + 1, c, k], mode, shift, mu, s, g, b)
            p2, q2 = _terms(x3[n + 2, c, k], dy3[n + 2, c, k], mode, shift, mu, s, g, b)
            p3, q3 = _terms(x3[n + 3, c, k], dy3[n + 3, c, k], mode, shift, mu, s, g, b)
            acc0[k] += (p0 + p1) + (p2 + p3)
            acc1[k] += (q0 + q1) + (q2 + q3)
        n += 4
    for n in range(n, N):
        for k in range(HW):
            p, q = _terms(x3[n, c, k], dy3[n, c, k], mode, shift, mu, s, g, b)
            acc0[k] += p
            acc1[k] += q
    s0 = 0.0
    s1 = 0.0
    for k in range(HW):
        s0 += acc0[k]
        s1 += acc1[k]
    return s0, s1


@numba.njit(cache=True, nogil=True)
def channel_mean_var(x, mean, var, c0, c1):
    """Per channel c in c0 .. c1-1, over (n, h, w): mean and biased variance, into float64 arrays (C,).

    Shifted sums (by x[0, c, 0, 0]) keep E[d^2] - E[d]^2 exact enough when |mean| >> std.
    """
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    M = N * HW
    x3 = x.reshape(N, C, HW)
    acc0 = np.empty(HW)
    acc1 = np.empty(HW)
    for c in range(c0, c1):
        shift = np.float64(x3[0, c, 0])
        s1, s2 = _channel_sums(x3, x3, c, 0, shift, 0.0, 0.0, 0.0, 0.0, acc0, acc1)
        m1 = s1 / M
        mean[c] = shift + m1
        var[c] = max(s2 / M - m1 * m1, 0.0)


@numba.njit(cache=True, nogil=True, inline="always")
def _bn_out(v, mu, s, g, b):
    """One output of the normalisation, before the ReLU (the same expression forward and backward)."""
    return g * ((v - mu) * s) + b


@numba.njit(cache=True, nogil=True)
def normalize(x, mean, inv_std, gamma, beta, relu, y):
    """y = gamma * ((x - mean) * inv_std) + beta per channel (mean, inv_std in x's dtype); then
    max(y, 0) when ``relu`` (as ReLU writes it: y if y > 0 else 0)."""
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    src = x.reshape(N * C, HW)
    dst = y.reshape(N * C, HW)
    for task in range(N * C):
        c = task % C
        mu, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        if relu:
            for k in range(HW):
                v = _bn_out(src[task, k], mu, s, g, b)
                dst[task, k] = v if v > 0 else 0
        else:
            for k in range(HW):
                dst[task, k] = _bn_out(src[task, k], mu, s, g, b)


@numba.njit(cache=True, nogil=True)
def backward_sums(x, dy, mean, inv_std, gamma, beta, relu, dbeta, dgamma, c0, c1):
    """For c in c0 .. c1-1: dbeta[c] = sum g;  dgamma[c] = sum g * xhat, xhat = (x - mean) * inv_std
    (float64 sums, ``_channel_sums``' order), g = dy, or with ``relu`` dy where y > 0 and 0 elsewhere."""
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    x3 = x.reshape(N, C, HW)
    dy3 = dy.reshape(N, C, HW)
    acc0 = np.empty(HW)
    acc1 = np.empty(HW)
    mode = 2 if relu else 1
    for c in range(c0, c1):
        dbeta[c], dgamma[c] = _channel_sums(x3, dy3, c, mode, 0.0, mean[c], inv_std[c], gamma[c], beta[c],
                                            acc0, acc1)


@numba.njit(cache=True, nogil=True, inline="always")
def _backward_dx(xs, ds, C, mean, inv_std, gamma, beta, relu, scale, dbeta, dgamma, M, batch_stats, dst):
    """The body of backward_dx on (N*C, HW) views."""
    zero = ds.dtype.type(0)
    HW = xs.shape[1]
    for task in range(xs.shape[0]):
        c = task % C
        mu, s, a, db, dg = mean[c], inv_std[c], scale[c] / M, dbeta[c], dgamma[c]
        if not batch_stats:                         # inference: constant statistics, dx = scale * g
            sc = scale[c]
            ga, be = gamma[c], beta[c]
            for k in range(HW):
                d = ds[task, k]
                if relu and not _bn_out(xs[task, k], mu, s, ga, be) > 0:
                    d = zero
                dst[task, k] = sc * d
        elif relu:
            ga, be = gamma[c], beta[c]
            for k in range(HW):
                v = xs[task, k]
                d = ds[task, k] if _bn_out(v, mu, s, ga, be) > 0 else zero
                dst[task, k] = a * (M * d - db - (v - mu) * s * dg)
        else:
            for k in range(HW):
                dst[task, k] = a * (M * ds[task, k] - db - (xs[task, k] - mu) * s * dg)


@numba.njit(cache=True, nogil=True)
def backward_dx(x, dy, mean, inv_std, gamma, beta, relu, scale, dbeta, dgamma, M, batch_stats, dx):
    """dx = scale / M * (M * g - dbeta - xhat * dgamma), scale = gamma * inv_std (all per channel),
    g = dy, or with ``relu`` dy masked by y > 0 (as in backward_sums). Without ``batch_stats``
    (inference: the statistics were constants) dx = scale * g."""
    N, C, HW = x.shape[0], x.shape[1], x.shape[2] * x.shape[3]
    _backward_dx(x.reshape(N * C, HW), dy.reshape(N * C, HW), C, mean, inv_std, gamma, beta, relu, scale,
                 dbeta, dgamma, M, batch_stats, dx.reshape(N * C, HW))


@numba.njit(cache=True, nogil=True)
def backward_dx_inplace(x, dy, mean, inv_std, gamma, beta, relu, scale, dbeta, dgamma, M, batch_stats):
    """backward_dx writing dx over dy. One view for both, so that LLVM sees one pointer: passing
    the same array to backward_dx as dy and dx fails its runtime overlap test and runs the scalar
    loop (14x slower measured here)."""
    N, C, HW = x.shape[0], x.shape[1], x.shape[2] * x.shape[3]
    ds = dy.reshape(N * C, HW)
    _backward_dx(x.reshape(N * C, HW), ds, C, mean, inv_std, gamma, beta, relu, scale, dbeta, dgamma, M,
                 batch_stats, ds)


# -- the op ------------------------------------------------------------------------------------------
class BatchNormNumbaSaved(NamedTuple):
    x: np.ndarray            # the input, by reference
    mean: np.ndarray         # (C,) in x's dtype
    inv_std: np.ndarray
    train: bool


def statistics(x, buffers, train, momentum, eps):
    """(mean, inv_std) in x's dtype: the batch's (float64 sums; the threads split the channels), with
    the running statistics updated, or the running ones."""
    C = x.shape[1]
    if train:
        mean, var = np.empty(C, dtype=np.float64), np.empty(C, dtype=np.float64)
        parts = parts_for(C, x.size)
        run_parts(lambda i: channel_mean_var(x, mean, var, *split(C, parts, i)), parts)
        M = x.size // C
        if norm.SYNC is not None:                 # the global batch's, from every rank's (M, mean, var)
            mean, var, M = norm.merge_moments(mean, var, M, buffers["running_mean"].astype(np.float64))
        update_running_stats(buffers, mean, var, M, momentum)
    else:
        mean, var = buffers["running_mean"], buffers["running_var"]
    inv_std = 1 / np.sqrt(var.astype(x.dtype) + x.dtype.type(eps))
    return mean.astype(x.dtype), inv_std


def normalize_images(x, mean, inv_std, gamma, beta, relu, y):
    """``normalize`` with the threads splitting the images."""
    parts = parts_for(x.shape[0], x.size)

    def part(i):
        a, b = split(x.shape[0], parts, i)
        normalize(x[a:b], mean, inv_std, gamma, beta, relu, y[a:b])
    run_parts(part, parts)


def gradients(x, dy, mean, inv_std, gamma_beta, relu, train, params, grads, accumulate, in_place):
    """grads["beta"], grads["gamma"] (``backward_sums``, the threads split the channels), then dx
    (``backward_dx``, the threads split the images), written over dy when ``in_place``. ``gamma_beta``:
    what y > 0 is recomputed with when ``relu`` (the forward's values)."""
    C = x.shape[1]
    dbeta, dgamma = np.empty(C, dtype=np.float64), np.empty(C, dtype=np.float64)
    parts = parts_for(C, x.size)
    run_parts(lambda i: backward_sums(x, dy, mean, inv_std, *gamma_beta, relu, dbeta, dgamma,
                                      *split(C, parts, i)), parts)
    store_grad(grads, "beta", dbeta.astype(x.dtype), accumulate)       # this rank's sums (the gradient
    store_grad(grads, "gamma", dgamma.astype(x.dtype), accumulate)     # allreduce adds the ranks')
    M = x.size // C
    if norm.SYNC is not None and train:           # dx needs the global batch's sums and count
        dbeta, dgamma, M = norm.synced_sums(dbeta, dgamma, M)
    dbeta, dgamma = dbeta.astype(x.dtype), dgamma.astype(x.dtype)
    scale = params["gamma"] * inv_std
    M = x.dtype.type(M)
    dx = dy if in_place else np.empty_like(dy)
    parts = parts_for(x.shape[0], x.size)

    def part(i):
        a, b = split(x.shape[0], parts, i)
        if in_place:
            backward_dx_inplace(x[a:b], dy[a:b], mean, inv_std, *gamma_beta, relu, scale, dbeta, dgamma, M, train)
        else:
            backward_dx(x[a:b], dy[a:b], mean, inv_std, *gamma_beta, relu, scale, dbeta, dgamma, M, train,
                        dx[a:b])
    run_parts(part, parts)
    return dx


def batchnorm_forward(x, params, buffers, train, momentum, eps):
    """norm.batchnorm_forward in two passes over x (statistics, then y)."""
    x = np.ascontiguousarray(x)
    mean, inv_std = statistics(x, buffers, train, momentum, eps)
    y = np.empty_like(x)
    normalize_images(x, mean, inv_std, params["gamma"], params["beta"], False, y)
    return y, BatchNormNumbaSaved(x, mean, inv_std, train)


def batchnorm_backward(saved, dy, params, grads, accumulate=False):
    """norm.batchnorm_backward in two passes over (x, dy) (the two sums, then dx)."""
    x, mean, inv_std, train = saved
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    return gradients(x, dy, mean, inv_std, (params["gamma"], params["beta"]), False, train, params, grads,
                     accumulate, in_place=False)


def batchnorm_saved_bytes(x_shape, itemsize):
    """x by reference; mean and inv_std, C values each."""
    return 2 * x_shape[1] * itemsize
