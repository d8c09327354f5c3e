"""Fully connected layer and Flatten; the math is in tinyconv/ops/dense.py."""
import numpy as np

from .. import ops
from ..backend import DEFAULT_DTYPE
from ..init import initialize
from .base import Layer


class Dense(Layer):
    """y = x @ w + b.  x (N, in_features), w (in_features, out_features), b (out_features,).

    Backward: dw = x.T @ dy, db = sum_n dy, dx = dy @ w.T. Saves x.
    """

    def __init__(self, in_features, out_features, bias=True, init="glorot_uniform", rng=None,
                 dtype=DEFAULT_DTYPE):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.params["w"] = initialize(init, (in_features, out_features), rng, dtype)
        if bias:
            self.params["b"] = np.zeros(out_features, dtype=dtype)

    def output_shape(self, input_shape):
        if input_shape != (self.in_features,):
            raise ValueError(f"{self.name or 'Dense'} expects ({self.in_features},) per sample, got {input_shape}")
        return (self.out_features,)

    def forward(self, x, train=True):
        y, self.cache = ops.dense_forward(x, self.params, train)
        return y

    def backward(self, dy, accumulate=False):
        return ops.dense_backward(self.saved(), dy, self.params, self.grads, accumulate)

    def saved_bytes(self, x_shape, dtype, device):
        return ops.dense_saved_bytes(x_shape, np.dtype(dtype).itemsize)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={'b' in self.params}"


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, train=True):
        self.cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, accumulate=False):
        return dy.reshape(self.cache)
