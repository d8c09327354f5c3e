"""BatchNorm on CuPy float32 arrays (kernels/cuda/norm.cu), with the following ReLU optionally applied
in the same kernel (the bn_relu ops of fused_cuda.py).

Training forward: statistics (per-channel partial sums in float64, a CuPy sum over the slots, a
finalize that also updates the running statistics: 3 launches), then one pass for y (and
max(y, 0) with the ReLU). Backward: the two per-channel sums the same way (3 launches), then one
pass for dx. Saves x, mean, inv_std and, with the ReLU, y (all by reference; y > 0 is the mask).
Compare the reference (norm.py): about 25 elementwise launches and 4 temporaries the size of x.
"""
from typing import NamedTuple

import numpy as np

from ..kernels import common_gpu
from ..kernels.common_gpu import f32, i32, i64, launch, launch_rows
from .grads import store_grad

TARGET_THREADS = 1 << 18     # threads of a partial-sum launch, all channels together
MIN_PER_THREAD = 16          # elements each thread sums, at least


class BatchNormCudaSaved(NamedTuple):
    x: object                # the input, by reference
    mean: object
    inv_std: object
    y: object                # the output, with the ReLU (its mask: y > 0); None without
    train: bool


def _channel_sums(name, C, N, HW, *args):
    """(C, 2) float64 sums from the ``name`` partial kernel."""
    import cupy
    threads = common_gpu.THREADS
    bx = max(1, min(TARGET_THREADS // (C * threads), -(-N * HW // (MIN_PER_THREAD * threads))))
    partial = cupy.empty((C, 2, bx * threads), dtype=np.float64)
    common_gpu.kernel("norm", name)((bx, C), (threads,), args + (partial,))
    return partial.sum(axis=2)


def forward(x, params, buffers, train, momentum, eps, relu):
    """batchnorm_forward, then max(y, 0) when ``relu``."""
    import cupy
    x = cupy.ascontiguousarray(x)
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    if train:
        M = N * HW
        sums = _channel_sums("bn_stats_partial", C, N, HW, x, i32(N), i32(C), i32(HW))
        mean = cupy.empty(C, dtype=np.float32)
        inv_std = cupy.empty(C, dtype=np.float32)
        launch("norm", "bn_stats_finalize", C, sums, i32(C), i32(HW), i64(M), x, f32(eps),
               f32(1 - momentum), f32(momentum), f32(momentum * M / max(M - 1, 1)), mean, inv_std,
               buffers["running_mean"], buffers["running_var"])
    else:
        mean = buffers["running_mean"]
        inv_std = 1 / cupy.sqrt(buffers["running_var"] + np.float32(eps))
    y = cupy.empty_like(x)
    launch_rows("norm", "bn_forward", N * C, HW,
                x, i64(N * C), i32(C), i32(HW), mean, inv_std, params["gamma"], params["beta"], i32(relu), y)
    return y, BatchNormCudaSaved(x, mean, inv_std, y if relu else None, train)


def backward(saved, dy, params, grads, accumulate=False):
    """batchnorm_backward, with dy masked by y > 0 when the forward applied the ReLU."""
    import cupy
    x, mean, inv_std, y, train = saved
    dy = cupy.ascontiguousarray(dy, dtype=np.float32)
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    relu = y is not None
    y_arg = y if relu else x                                # not read when relu is 0
    sums = _channel_sums("bn_backward_partial", C, N, HW,
                         x, dy, y_arg, i32(relu), i32(N), i32(C), i32(HW), mean, inv_std)
    dbeta = cupy.empty(C, dtype=np.float32)
    dgamma = cupy.empty(C, dtype=np.float32)
    launch("norm", "bn_backward_finalize", C, sums, i32(C), dbeta, dgamma)
    store_grad(grads, "beta", dbeta, accumulate)
    store_grad(grads, "gamma", dgamma, accumulate)
    gamma = params["gamma"]
    if not train:            # statistics were constants: dx = g * gamma * inv_std
        g = cupy.where(y > 0, dy, np.float32(0)) if relu else dy
        return g * (gamma * inv_std)[:, None, None]
    dx = cupy.empty_like(dy)
    launch_rows("norm", "bn_backward_dx", N * C, HW,
                x, dy, y_arg, i32(relu), i64(N * C), i32(C), i32(HW), mean, inv_std, gamma,
                dbeta, dgamma, f32(N * HW), dx)
    return dx


def batchnorm_forward(x, params, buffers, train, momentum, eps):
    return forward(x, params, buffers, train, momentum, eps, relu=False)


def batchnorm_backward(saved, dy, params, grads, accumulate=False):
    return backward(saved, dy, params, grads, accumulate)


def batchnorm_saved_bytes(x_shape, itemsize):
    """x by reference; mean and inv_std, C values each."""
    return 2 * x_shape[1] * itemsize
