"""numba CPU kernels for BatchNorm2D (training mode), replacing the mean/var/xhat temporaries of
``tinyconv.layers.norm.BatchNorm2D`` with two passes over x forward and two over (x, dy) backward.

Sums run in float64 (whatever x's dtype): M = N*H*W terms per channel, and float32 running sums
would lose digits for large M. Loops run per channel (statistics, for a range of channels: the
threads split the channels, so each sum is made by one thread in one order) or per (n, c) plane
(the threads split the images).

The two reduction kernels allow LLVM to reassociate (``fastmath={"reassoc"}``) so that it can
vectorise the float64 sums (without it a sum is one serial chain of additions: 2.5x slower here).
Reordering a float64 sum of M terms moves it by at most about M * 1.1e-16 relative, far below
float32 rounding (6e-8) for any batch that fits in memory; no other fast-math flag is used.
"""
import numba
import numpy as np


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


@numba.njit(cache=True, nogil=True)
def normalize(x, mean, inv_std, gamma, beta, y):
    """y = gamma * ((x - mean) * inv_std) + beta per channel (mean, inv_std in x's dtype)."""
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    src = x.reshape(N * C, HW)
    dst = y.reshape(N * C, HW)
    for task in range(N * C):
        c = task % C
        mu, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        for k in range(HW):
            dst[task, k] = g * ((src[task, k] - mu) * s) + b


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def backward_sums(x, dy, mean, inv_std, dbeta, dgamma, c0, c1):
    """For c in c0 .. c1-1: dbeta[c] = sum dy;  dgamma[c] = sum dy * xhat, xhat = (x - mean) * inv_std
    (float64 sums)."""
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    x3 = x.reshape(N, C, HW)
    dy3 = dy.reshape(N, C, HW)
    for c in range(c0, c1):
        mu, s = mean[c], inv_std[c]
        sb = 0.0
        sg = 0.0
        for n in range(N):
            for k in range(HW):
                d = dy3[n, c, k]
                sb += d
                sg += np.float64(d) * np.float64((x3[n, c, k] - mu) * s)
        dbeta[c] = sb
        dgamma[c] = sg


@numba.njit(cache=True, nogil=True)
def backward_dx(x, dy, mean, inv_std, scale, dbeta, dgamma, M, dx):
    """dx = scale / M * (M * dy - dbeta - xhat * dgamma), scale = gamma * inv_std (all per channel)."""
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    xs = x.reshape(N * C, HW)
    ds = dy.reshape(N * C, HW)
    dst = dx.reshape(N * C, HW)
    for task in range(N * C):
        c = task % C
        mu, s, a, db, dg = mean[c], inv_std[c], scale[c] / M, dbeta[c], dgamma[c]
        for k in range(HW):
            dst[task, k] = a * (M * ds[task, k] - db - (xs[task, k] - mu) * s * dg)
