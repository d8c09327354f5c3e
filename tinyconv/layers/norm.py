"""Batch normalisation over N, H, W for each channel (Ioffe & Szegedy 2015)."""
import numpy as np

from ..backend import DEFAULT_DTYPE, get_array_module
from ..kernels import fuse_gpu, use_cpu_kernels
from ..kernels.common_gpu import use_gpu_kernels
from ..kernels.threads import parts_for, run_parts, split
from .base import Layer


class BatchNorm2D(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel, x (N, C, H, W).

    Training uses the batch's mean and (biased) variance and updates the running statistics
    with the unbiased variance: new = (1 - momentum) * old + momentum * batch (PyTorch's rule).
    Inference uses the running statistics. Caches xhat and 1/sqrt(var + eps).

    Backward in training mode, with M = N*H*W and sums over N, H, W:
        dbeta = sum(dy)    dgamma = sum(dy * xhat)
        dx = gamma / sqrt(var + eps) / M * (M * dy - dbeta - xhat * dgamma)
    The three terms: the direct path through xhat, the path through the mean, the path through
    the variance (derived in docs/walkthroughs/2-pool-batchnorm.md).

    On NumPy arrays both modes run numba kernels (tinyconv/kernels/norm_cpu.py): in training,
    statistics with float64 sums in one pass; y in a second (with a following ReLU, and a following
    non-overlapping MaxPool2D, applied when fused: kernels/fuse_gpu.py); x,
    mean and inv_std are cached instead of xhat, and backward recomputes xhat (and y, for the
    ReLU's mask) on the fly (two passes, no temporaries the size of x). The threads
    split the statistics by channel and the elementwise passes by image (kernels/threads.py).
    """

    # Inside a model's forward, when a ReLU follows (kernels/fuse_gpu.py), the CUDA and numba paths
    # apply max(y, 0) themselves, and the numba path a following non-overlapping MaxPool2D too
    # (kernels/norm_cpu.py: the full-size BatchNorm+ReLU output is never written); those layers then
    # pass values through, and backward masks dy by y > 0. What the last forward did, for inspection:
    relu_applied = False
    pool_applied = False

    def __init__(self, channels, momentum=0.1, eps=1e-5, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.params["gamma"] = np.ones(channels, dtype=dtype)
        self.params["beta"] = np.zeros(channels, dtype=dtype)
        self.buffers["running_mean"] = np.zeros(channels, dtype=dtype)
        self.buffers["running_var"] = np.ones(channels, dtype=dtype)
        self.cache = None

    def output_shape(self, input_shape):
        if input_shape[0] != self.channels:
            raise ValueError(f"{self.name or 'BatchNorm2D'} expects {self.channels} channels, got {input_shape[0]}")
        return input_shape

    def forward(self, x, train=True):
        self.relu_applied = self.pool_applied = False
        partners = fuse_gpu.partners(self)             # (ReLU, MaxPool2D or None) to fuse, or None
        if x.size > 0 and use_gpu_kernels(x, *self.params.values(), *self.buffers.values()):
            from ..kernels import norm_gpu             # CUDA kernels: tinyconv/kernels/norm_gpu.py
            y = norm_gpu.forward(self, x, train, relu=partners is not None)
            if partners is not None:
                fuse_gpu.applied(partners[0])
            return y
        xp = get_array_module(x)
        gamma, beta = self.params["gamma"], self.params["beta"]
        fast = use_cpu_kernels(x, gamma) and x.dtype == gamma.dtype and x.size > 0
        if fast:
            from ..kernels import norm_cpu
            x = np.ascontiguousarray(x)
        if fast and train:
            mean = np.empty(self.channels, dtype=np.float64)
            var = np.empty(self.channels, dtype=np.float64)
            parts = parts_for(self.channels, x.size)
            run_parts(lambda i: norm_cpu.channel_mean_var(x, mean, var, *split(self.channels, parts, i)), parts)
        elif train:
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
        if train:
            m = x.size // self.channels
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - self.momentum
            rm += self.momentum * mean.astype(rm.dtype)
            rv *= 1 - self.momentum
            rv += (self.momentum * m / max(m - 1, 1)) * var.astype(rv.dtype)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1 / xp.sqrt(var.astype(x.dtype) + x.dtype.type(self.eps))
        if fast:
            mean = mean.astype(x.dtype)
            parts = parts_for(x.shape[0], x.size)
            relu = partners is not None             # apply the following ReLU here (one pass less)
            pool = self._fused_pool_geometry(partners[1], x.shape) if relu else None
            # gamma, beta as they were here: the backward recomputes y for the ReLU's mask
            fused = (gamma.copy(), beta.copy()) if relu else None
            if pool is not None:                    # and the MaxPool2D after it
                (kh, kw, sh, sw), out_hw = pool
                y = np.empty(x.shape[:2] + out_hw, dtype=x.dtype)
                argmax = np.empty(y.shape, dtype=np.uint8)

                def normalize_pool(i):
                    a, b = split(x.shape[0], parts, i)
                    norm_cpu.normalize_relu_maxpool(x[a:b], mean, inv_std, gamma, beta, kh, kw, sh, sw,
                                                    y[a:b], argmax[a:b])
                run_parts(normalize_pool, parts)
                self.relu_applied = self.pool_applied = True
                fuse_gpu.applied(*partners)
                self.cache = ("x", x, mean, inv_std, fused, (kh, kw, sh, sw, argmax), train)
                return y
            y = np.empty_like(x)

            def normalize(i):
                a, b = split(x.shape[0], parts, i)
                norm_cpu.normalize(x[a:b], mean, inv_std, gamma, beta, relu, y[a:b])
            run_parts(normalize, parts)
            self.relu_applied = relu
            if relu:
                fuse_gpu.applied(partners[0])
            self.cache = ("x", x, mean, inv_std, fused, None, train)
            return y
        xhat = (x - mean.astype(x.dtype)[:, None, None]) * inv_std[:, None, None]
        self.cache = (xhat, inv_std, train)
        return gamma[:, None, None] * xhat + beta[:, None, None]

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("BatchNorm2D.backward called without a forward before it")
        if isinstance(self.cache[0], str) and self.cache[0] == "gpu":
            from ..kernels import norm_gpu
            return norm_gpu.backward(self, dy)
        if isinstance(self.cache[0], str):          # ("x", x, mean, inv_std, fused, pool, train): NumPy
            return self._backward_cpu(dy)
        xhat, inv_std, train = self.cache
        gamma = self.params["gamma"]
        self.grads["beta"] = dbeta = dy.sum(axis=(0, 2, 3))
        self.grads["gamma"] = dgamma = (dy * xhat).sum(axis=(0, 2, 3))
        scale = (gamma * inv_std)[:, None, None]
        if not train:                # statistics were constants: a per-channel affine map
            return dy * scale
        m = dy.size // self.channels
        return (scale / m) * (m * dy - dbeta[:, None, None] - xhat * dgamma[:, None, None])

    def _backward_cpu(self, dy):
        from ..kernels import norm_cpu
        _, x, mean, inv_std, fused, pool, train = self.cache    # fused: forward's (gamma, beta); pool: see forward
        gamma = self.params["gamma"]
        relu = fused is not None
        gb = fused if relu else (gamma, self.params["beta"])     # what y > 0 is recomputed with
        dy = np.ascontiguousarray(dy, dtype=x.dtype)
        dbeta = np.empty(self.channels, dtype=np.float64)
        dgamma = np.empty(self.channels, dtype=np.float64)
        if pool is not None:                            # dy is the pooled gradient: route it
            dy = self._unpool_cpu(dy, x, pool)
        parts = parts_for(self.channels, x.size)
        run_parts(lambda i: norm_cpu.backward_sums(x, dy, mean, inv_std, *gb, relu, dbeta, dgamma,
                                                   *split(self.channels, parts, i)), parts)
        self.grads["beta"] = dbeta = dbeta.astype(x.dtype)
        self.grads["gamma"] = dgamma = dgamma.astype(x.dtype)
        scale = gamma * inv_std
        m = x.dtype.type(x.size // self.channels)
        # dx over the routed gradient when there is one (our own array: one full-size array less)
        dx = dy if pool is not None else np.empty_like(dy)
        parts = parts_for(x.shape[0], x.size)

        def backward_dx(i):
            a, b = split(x.shape[0], parts, i)
            if pool is not None:
                norm_cpu.backward_dx_inplace(x[a:b], dy[a:b], mean, inv_std, *gb, relu, scale, dbeta, dgamma, m,
                                             train)
            else:
                norm_cpu.backward_dx(x[a:b], dy[a:b], mean, inv_std, *gb, relu, scale, dbeta, dgamma,
                                     m, train, dx[a:b])
        run_parts(backward_dx, parts)
        return dx

    def _unpool_cpu(self, dy, x, pool):
        """The fused MaxPool2D's backward: dy (pooled) sent to each window's argmax, 0 elsewhere."""
        from ..kernels import pool_cpu
        kh, kw, sh, sw, argmax = pool
        if dy.shape != argmax.shape:
            raise ValueError(f"{self.name or 'BatchNorm2D'} (fused with a MaxPool2D) expects a gradient "
                             f"of shape {argmax.shape}, got {dy.shape}")
        g = np.empty_like(x)
        parts = parts_for(x.shape[0], x.size)

        def unpool(i):
            a, b = split(x.shape[0], parts, i)
            pool_cpu.maxpool_backward(dy[a:b], argmax[a:b], kh, kw, sh, sw, g[a:b])
        run_parts(unpool, parts)
        return g

    @staticmethod
    def _fused_pool_geometry(pool, x_shape):
        """((kh, kw, sh, sw), (out_h, out_w)) of the MaxPool2D ``pool`` fused after the ReLU, or None
        when there is none or its window does not fit (the MaxPool2D then runs, and says so)."""
        if pool is None:
            return None
        try:
            out_hw = tuple(pool.output_shape(x_shape[1:])[1:])
        except ValueError:
            return None
        (kh, kw), (sh, sw) = pool.kernel_size, pool.stride
        return (kh, kw, sh, sw), out_hw

    def extra_repr(self):
        return f"{self.channels}, momentum={self.momentum}, eps={self.eps}"
