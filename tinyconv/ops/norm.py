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

Synchronised BatchNorm (data-parallel ranks with ``--sync-bn``, tinyconv/distributed.py): while
:data:`SYNC` holds a communicator, training-mode statistics are those of the whole global batch.
Each rank sums its shifted values d = x - running_mean (the shift every rank shares) and d^2 in
float64 and one allreduce adds the ranks' sums and counts, so mean and var are the global batch's;
the backward allreduces its two sums (dbeta, dgamma) for dx, while the parameter gradients stay
the rank's own sums (the gradient allreduce adds them). R ranks then compute what one process
computes on the whole batch, up to the order of the float64 sums. The numba implementation
(norm_numba.py, fused_numba.py) takes part the same way (``merge_moments``, ``synced_sums``: the same
messages); tinyconv.ops sends the CUDA path's BatchNorm here while SYNC is set (its kernels take no
communicator).
"""
from typing import NamedTuple

from ..backend import get_array_module
from .grads import store_grad


# The communicator of synchronised BatchNorm (see the module docstring), or None.
SYNC = None
SYNCS = True     # this implementation takes part in synchronised BatchNorm (so do the numba ones)


class BatchNormSaved(NamedTuple):
    xhat: object            # (N, C, H, W)
    inv_std: object         # (C,)
    train: bool             # batch statistics (True) or the running ones (False)
    count: int = None       # M over every rank, when the statistics were synchronised


def _merge(packed, shift, C):
    """(mean, var, M) from the allreduced sums (sum d, sum d^2, M), d = x - shift, in float64."""
    xp = get_array_module(packed)
    SYNC.allreduce_small(packed)
    M = int(round(float(packed[2 * C])))
    m1 = packed[:C] / max(M, 1)
    return shift + m1, xp.maximum(packed[C:2 * C] / max(M, 1) - m1 * m1, 0.0), M


def synced_moments(x, shift, C):
    """(mean, var, M) of the global batch, from this rank's ``x`` (None: no rows here) in float64.
    The message every rank sends: (sum d, sum d^2, M) per channel, d = x - shift."""
    xp = get_array_module(shift)
    packed = xp.zeros(2 * C + 1, dtype=xp.float64)
    if x is not None:
        d = x.astype(xp.float64) - shift[:, None, None]
        packed[:C], packed[C:2 * C] = d.sum(axis=(0, 2, 3)), (d * d).sum(axis=(0, 2, 3))
        packed[2 * C] = x.size // C
    return _merge(packed, shift, C)


def merge_moments(mean, var, M, shift):
    """synced_moments from this rank's own float64 (mean, biased var) over M values per channel (the
    numba statistics): the same message, sum d = M (mean - shift), sum d^2 = M (var + (mean - shift)^2)."""
    C, xp = len(mean), get_array_module(mean)
    packed = xp.empty(2 * C + 1, dtype=xp.float64)
    packed[:C] = M * (mean - shift)
    packed[C:2 * C] = M * (var + (mean - shift) ** 2)
    packed[2 * C] = M
    return _merge(packed, shift, C)


def synced_sums(dbeta, dgamma, M):
    """(dbeta, dgamma, M) added over the ranks (float64): what dx needs under synchronised BatchNorm."""
    xp = get_array_module(dbeta)
    C = len(dbeta)
    both = SYNC.allreduce_small(xp.concatenate([dbeta.astype(xp.float64), dgamma.astype(xp.float64), xp.asarray([float(M)])]))
    return both[:C], both[C:2 * C], int(round(float(both[2 * C])))


def sync_empty_rank(layers):
    """What a rank with no rows in a step does for synchronised BatchNorm: take part in every
    allreduce the others make (forward in layer order, updating the running statistics like them;
    backward in reverse order) with zero sums. ``layers``: the model's BatchNorm2D layers."""
    for layer in layers:
        rm = layer.buffers["running_mean"]
        mean, var, M = synced_moments(None, rm.astype(get_array_module(rm).float64), layer.channels)
        update_running_stats(layer.buffers, mean, var, M, layer.momentum)
    for layer in reversed(layers):
        xp = get_array_module(layer.buffers["running_mean"])
        synced_sums(xp.zeros(layer.channels), xp.zeros(layer.channels), 0)


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
    count = None
    if train and SYNC is not None:
        mean, var, count = synced_moments(x, buffers["running_mean"].astype(xp.float64), x.shape[1])
        update_running_stats(buffers, mean, var, count, momentum)
    elif train:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        update_running_stats(buffers, mean, var, x.size // x.shape[1], momentum)
    else:
        mean, var = buffers["running_mean"], buffers["running_var"]
    inv_std = 1 / xp.sqrt(var.astype(x.dtype) + x.dtype.type(eps))
    xhat = (x - mean.astype(x.dtype)[:, None, None]) * inv_std[:, None, None]
    y = params["gamma"][:, None, None] * xhat + params["beta"][:, None, None]
    return y, BatchNormSaved(xhat, inv_std, train, count)


def batchnorm_backward(saved, dy, params, grads, accumulate=False):
    """grads["gamma"], grads["beta"] from dy; returns dx."""
    xhat, inv_std, train, count = saved
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    store_grad(grads, "beta", dbeta, accumulate)
    store_grad(grads, "gamma", dgamma, accumulate)
    scale = (params["gamma"] * inv_std)[:, None, None]
    if not train:                # statistics were constants: a per-channel affine map
        return dy * scale
    M = dy.size // dy.shape[1]
    if count is not None:        # synchronised: the sums and the count of the whole global batch
        dbeta, dgamma, M = synced_sums(dbeta, dgamma, M)
        dbeta, dgamma = dbeta.astype(dy.dtype), dgamma.astype(dy.dtype)
    return (scale / M) * (M * dy - dbeta[:, None, None] - xhat * dgamma[:, None, None])


def batchnorm_saved_bytes(x_shape, itemsize):
    """xhat, the size of x (and inv_std, C values)."""
    N, C, H, W = x_shape
    return (N * C * H * W + C) * itemsize
