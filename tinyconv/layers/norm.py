"""Batch normalisation over N, H, W for each channel (Ioffe & Szegedy 2015)."""
import numpy as np

from ..backend import DEFAULT_DTYPE, get_array_module
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
    the variance (see docs/walkthroughs).
    """

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
        xp = get_array_module(x)
        gamma, beta = self.params["gamma"], self.params["beta"]
        if train:
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            m = x.size // self.channels
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - self.momentum
            rm += self.momentum * mean.astype(rm.dtype)
            rv *= 1 - self.momentum
            rv += (self.momentum * m / max(m - 1, 1)) * var.astype(rv.dtype)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1 / xp.sqrt(var.astype(x.dtype) + x.dtype.type(self.eps))
        xhat = (x - mean.astype(x.dtype)[:, None, None]) * inv_std[:, None, None]
        self.cache = (xhat, inv_std, train)
        return gamma[:, None, None] * xhat + beta[:, None, None]

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("BatchNorm2D.backward called without a forward before it")
        xhat, inv_std, train = self.cache
        gamma = self.params["gamma"]
        self.grads["beta"] = dbeta = dy.sum(axis=(0, 2, 3))
        self.grads["gamma"] = dgamma = (dy * xhat).sum(axis=(0, 2, 3))
        scale = (gamma * inv_std)[:, None, None]
        if not train:                # statistics were constants: a per-channel affine map
            return dy * scale
        m = dy.size // self.channels
        return (scale / m) * (m * dy - dbeta[:, None, None] - xhat * dgamma[:, None, None])

    def extra_repr(self):
        return f"{self.channels}, momentum={self.momentum}, eps={self.eps}"
