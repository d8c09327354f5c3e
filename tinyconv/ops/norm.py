"""Batch normalisation over N, H, W for each channel (Ioffe & Szegedy 2015), the reference, plain xp.

Forward, with M = N*H*W values per channel:
    mean = sum(x) / M      var = sum((x - mean)^2) / M      inv_std = 1 / sqrt(var + eps)
    xhat = (x - mean) * inv_std                              y = gamma * xhat + beta
Training uses the batch's mean and (biased) variance and updates the running statistics with the
unbiased variance: new = (1 - momentum) * old + momentum * batch (PyTorch's rule); inference uses
the running statistics. Saves xhat and inv_std.

Backward in training mode, sums over N, H, W:
    dbeta = sum(dy)    dgamma = sum(dy * xhat)
    dx = gamma * inv_std / M * (M * dy - dbeta - xhat * dgamma)
The three terms: the direct path through xhat, the path through the mean, the path through the
variance (derived in docs/walkthroughs/2-pool-batchnorm.md). In inference mode the statistics are
constants and dx = gamma * inv_std * dy.
"""
from typing import NamedTuple

from ..backend import get_array_module
from .grads import store_grad


class BatchNormSaved(NamedTuple):
    xhat: object            # (N, C, H, W)
    inv_std: object         # (C,)
    train: bool             # batch statistics (True) or the running ones (False)


def update_running_stats(buffers, mean, var, M, momentum):
    """running = (1 - momentum) * running + momentum * batch; the variance unbiased (M / (M - 1))."""
    rm, rv = buffers["running_mean"], buffers["running_var"]
    rm *= 1 - momentum
    rm += momentum * mean.astype(rm.dtype)
    rv *= 1 - momentum
    rv += (momentum * M / max(M - 1, 1)) * var.astype(rv.dtype)


def batchnorm_forward(x, params, buffers, train, momentum, eps):
    """y = gamma * xhat + beta -> (y, BatchNormSaved); updates the running statistics in training."""
    xp = get_array_module(x)
    if train:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        update_running_stats(buffers, mean, var, x.size // x.shape[1], momentum)
    else:
        mean, var = buffers["running_mean"], buffers["running_var"]
    inv_std = 1 / xp.sqrt(var.astype(x.dtype) + x.dtype.type(eps))
    xhat = (x - mean.astype(x.dtype)[:, None, None]) * inv_std[:, None, None]
    y = params["gamma"][:, None, None] * xhat + params["beta"][:, None, None]
    return y, BatchNormSaved(xhat, inv_std, train)


def batchnorm_backward(saved, dy, params, grads, accumulate=False):
    """grads["gamma"], grads["beta"] from dy; returns dx."""
    xhat, inv_std, train = saved
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    store_grad(grads, "beta", dbeta, accumulate)
    store_grad(grads, "gamma", dgamma, accumulate)
    scale = (params["gamma"] * inv_std)[:, None, None]
    if not train:                # statistics were constants: a per-channel affine map
        return dy * scale
    M = dy.size // dy.shape[1]
    return (scale / M) * (M * dy - dbeta[:, None, None] - xhat * dgamma[:, None, None])


def batchnorm_saved_bytes(x_shape, itemsize):
    """xhat, the size of x (and inv_std, C values)."""
    N, C, H, W = x_shape
    return (N * C * H * W + C) * itemsize
