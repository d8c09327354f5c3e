"""numba CPU kernels for BatchNorm2D (training and inference), replacing the mean/var/xhat temporaries of
``tinyconv.layers.norm.BatchNorm2D`` with two passes over x forward and two over (x, dy) backward.

Sums run in float64 (whatever x's dtype): M = N*H*W terms per channel, and float32 running sums
would lose digits for large M. Loops run per channel (statistics, for a range of channels: the
threads split the channels, so each sum is made by one thread in one order) or per (n, c) plane
(the threads split the images).

The two reduction kernels allow LLVM to reassociate (``fastmath={"reassoc"}``) so that it can
vectorise the float64 sums (without it a sum is one serial chain of additions: 2.5x slower here).
Reordering a float64 sum of M terms moves it by at most about M * 1.1e-16 relative, far below
float32 rounding (6e-8) for any batch that fits in memory; no other fast-math flag is used.

Fused ReLU (``relu`` set: a ReLU follows inside a model's forward, see kernels/fuse_gpu.py): the forward writes
max(y, 0), and the backward masks dy by y > 0, with y recomputed from x by ``_bn_out``, the very
expression the forward used (compiled without fast-math even when inlined into a fast-math kernel:
LLVM's flags are per instruction), so the mask is bit for bit the ReLU's x > 0 and nothing the size
of x is cached for it.
"""
import numba
import numpy as np

from .pool_cpu import first_max4


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def channel_mean_var(x, mean, var, c0, c1):
    """Per channel c in c0 .. c1-1, over (n, h, w): mean and biased variance, into float64 arrays (C,).

    Shifted sums (by x[0, c, 0, 0]) keep E[d^2] - E[d]^2 exact enough when |mean| >> std.
    """
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    M = N * HW
    x3 = x.reshape(N, C, HW)
    for c in range(c0, c1):
        shift = np.float64(x3[0, c, 0])
        s1 = 0.0
        s2 = 0.0
        for n in range(N):
            for k in range(HW):
                d = np.float64(x3[n, c, k]) - shift
                s1 += d
                s2 += d * d
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


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def backward_sums(x, dy, mean, inv_std, gamma, beta, relu, dbeta, dgamma, c0, c1):
    """For c in c0 .. c1-1: dbeta[c] = sum g;  dgamma[c] = sum g * xhat, xhat = (x - mean) * inv_std
    (float64 sums), g = dy, or with ``relu`` dy where y > 0 and 0 elsewhere."""
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    x3 = x.reshape(N, C, HW)
    dy3 = dy.reshape(N, C, HW)
    for c in range(c0, c1):
        mu, s, ga, be = mean[c], inv_std[c], gamma[c], beta[c]
        sb = 0.0
        sg = 0.0
        if relu:
            for n in range(N):
                for k in range(HW):
                    v = x3[n, c, k]
                    d = dy3[n, c, k] if _bn_out(v, mu, s, ga, be) > 0 else dy3.dtype.type(0)
                    sb += d
                    sg += np.float64(d) * np.float64((v - mu) * s)
        else:
            for n in range(N):
                for k in range(HW):
                    d = dy3[n, c, k]
                    sb += d
                    sg += np.float64(d) * np.float64((x3[n, c, k] - mu) * s)
        dbeta[c] = sb
        dgamma[c] = sg


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


# -- BatchNorm2D -> ReLU -> MaxPool2D forward in one pass (non-overlapping windows: stride >= kernel) --
# The forward never writes the full-resolution BatchNorm+ReLU output: each window is normalised,
# rectified and reduced while in cache. Same expressions and the same first-maximum rule as the
# separate kernels (``_bn_out``, then ``v if v > 0 else 0``, then MaxPool2D's strict ``>``), so the
# pooled output and argmax are bit for bit those of normalize + pool_cpu.maxpool_forward. (The
# backward reuses the separate kernels: pool_cpu.maxpool_backward into a full-size buffer, then
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
