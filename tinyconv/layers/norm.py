"""Batch normalisation over N, H, W for each channel; the math is in tinyconv/ops/norm.py."""
import numpy as np

from .. import ops
from ..backend import DEFAULT_DTYPE
from .base import Layer


class BatchNorm2D(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel, x (N, C, H, W).

    Training uses the batch's mean and (biased) variance and updates the running statistics
    with the unbiased variance: new = (1 - momentum) * old + momentum * batch (PyTorch's rule).
    Inference uses the running statistics. Saves xhat and 1/sqrt(var + eps) (the numba and CUDA
    versions save x, the mean and 1/sqrt(var + eps), and recompute xhat).

    Backward in training mode, with M = N*H*W and sums over N, H, W:
        dbeta = sum(dy)    dgamma = sum(dy * xhat)
        dx = gamma / sqrt(var + eps) / M * (M * dy - dbeta - xhat * dgamma)
    (derived in docs/walkthroughs/2-pool-batchnorm.md). In a model, a BatchNorm2D followed by a
    ReLU (and a MaxPool2D) runs as one fused op: see tinyconv/fusion.py.
    """

    def __init__(self, channels, momentum=0.1, eps=1e-5, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.params["gamma"] = np.ones(channels, dtype=dtype)
        self.params["beta"] = np.zeros(channels, dtype=dtype)
        self.buffers["running_mean"] = np.zeros(channels, dtype=dtype)
        self.buffers["running_var"] = np.ones(channels, dtype=dtype)

    def output_shape(self, input_shape):
        if input_shape[0] != self.channels:
            raise ValueError(f"{self.name or 'BatchNorm2D'} expects {self.channels} channels, got {input_shape[0]}")
        return input_shape

    def forward(self, x, train=True):
        y, self.cache = ops.batchnorm_forward(x, self.params, self.buffers, train, self.momentum, self.eps)
        return y

    def backward(self, dy, accumulate=False):
        return ops.batchnorm_backward(self.saved(), dy, self.params, self.grads, accumulate)

    def saved_bytes(self, x_shape, dtype, device):
        return ops.batchnorm_saved_bytes(x_shape, dtype, device)

    def extra_repr(self):
        return f"{self.channels}, momentum={self.momentum}, eps={self.eps}"
