"""BatchNorm2D on CuPy float32 arrays (cuda/norm.cu), optionally with the following ReLU fused in.

Training forward: statistics (per-channel partial sums in float64, a CuPy sum over the slots, a
finalize that also updates the running statistics: 3 launches), then one pass for y (and
max(y, 0) when fused). Backward: the two per-channel sums the same way (3 launches), then one
pass for dx. Caches x, mean, inv_std and, when fused, y (all by reference; y > 0 is the ReLU mask).
Compare the plain path: about 25 elementwise launches and 4 temporaries the size of x.
"""
import numpy as np

from .common_gpu import THREADS, f32, i32, i64, kernel, launch, launch_rows

TARGET_THREADS = 1 << 18     # threads of a partial-sum launch, all channels together
MIN_PER_THREAD = 16          # elements each thread sums, at least


def _channel_sums(name, C, N, HW, *args):
    """(C, 2) float64 sums from the ``name`` partial kernel."""
    import cupy
    M = N * HW
    bx = max(1, min(TARGET_THREADS // (C * THREADS), -(-M // (MIN_PER_THREAD * THREADS))))
    S = bx * THREADS
    partial = cupy.empty((C, 2, S), dtype=np.float64)
    kernel("norm", name)((bx, C), (THREADS,), args + (partial,))
    return partial.sum(axis=2)


def forward(layer, x, train, relu=False):
    import cupy
    x = cupy.ascontiguousarray(x)
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    if train:
        M = N * HW
        sums = _channel_sums("bn_stats_partial", C, N, HW, x, i32(N), i32(C), i32(HW))
        mean = cupy.empty(C, dtype=np.float32)
        inv_std = cupy.empty(C, dtype=np.float32)
        mom = layer.momentum
        launch("norm", "bn_stats_finalize", C, sums, i32(C), i32(HW), i64(M), x, f32(layer.eps),
               f32(1 - mom), f32(mom), f32(mom * M / max(M - 1, 1)), mean, inv_std,
               layer.buffers["running_mean"], layer.buffers["running_var"])
    else:
        mean = layer.buffers["running_mean"]
        inv_std = 1 / cupy.sqrt(layer.buffers["running_var"] + np.float32(layer.eps))
    y = cupy.empty_like(x)
    launch_rows("norm", "bn_forward", N * C, HW,
                x, i64(N * C), i32(C), i32(HW), mean, inv_std, gamma, beta, i32(relu), y)
    layer.relu_applied = relu
    layer.cache = ("gpu", x, mean, inv_std, y if relu else None, train)
    return y


def backward(layer, dy):
    import cupy
    _, x, mean, inv_std, y, train = layer.cache
    dy = cupy.ascontiguousarray(dy, dtype=np.float32)
    N, C = x.shape[0], x.shape[1]
    HW = x.shape[2] * x.shape[3]
    relu = y is not None
    y_arg = y if relu else x                                # not read when relu is 0
    sums = _channel_sums("bn_backward_partial", C, N, HW,
                         x, dy, y_arg, i32(relu), i32(N), i32(C), i32(HW), mean, inv_std)
    dbeta = _grad(layer, "beta", C)
    dgamma = _grad(layer, "gamma", C)
    launch("norm", "bn_backward_finalize", C, sums, i32(C), dbeta, dgamma)
    layer.grads["beta"], layer.grads["gamma"] = dbeta, dgamma
    gamma = layer.params["gamma"]
    if not train:            # statistics were constants: dx = g * gamma * inv_std
        g = cupy.where(y > 0, dy, np.float32(0)) if relu else dy
        return g * (gamma * inv_std)[:, None, None]
    dx = cupy.empty_like(dy)
    launch_rows("norm", "bn_backward_dx", N * C, HW,
                x, dy, y_arg, i32(relu), i64(N * C), i32(C), i32(HW), mean, inv_std, gamma,
                dbeta, dgamma, f32(N * HW), dx)
    return dx


def _grad(layer, key, C):
    from .common_gpu import grad_out
    return grad_out(layer.grads, key, (C,))
