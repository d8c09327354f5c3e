"""Fully connected layer and Flatten."""
import numpy as np

from ..backend import DEFAULT_DTYPE
from ..init import initialize
from .base import Layer


class Dense(Layer):
    """y = x @ w + b.  x (N, in_features), w (in_features, out_features), b (out_features,).

    Backward: dw = x.T @ dy, db = sum_n dy, dx = dy @ w.T. Caches x.
    """

    def __init__(self, in_features, out_features, bias=True, init="glorot_uniform", rng=None,
                 dtype=DEFAULT_DTYPE):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.params["w"] = initialize(init, (in_features, out_features), rng, dtype)
        if bias:
            self.params["b"] = np.zeros(out_features, dtype=dtype)
        self.cache = None

    def output_shape(self, input_shape):
        if input_shape != (self.in_features,):
            raise ValueError(f"{self.name or 'Dense'} expects ({self.in_features},) per sample, got {input_shape}")
        return (self.out_features,)

    def forward(self, x, train=True):
        self.cache = x if train else None
        y = x @ self.params["w"]
        if "b" in self.params:
            y += self.params["b"]
        return y

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("Dense.backward called without a forward(train=True) before it")
        x = self.cache
        self.grads["w"] = x.T @ dy
        if "b" in self.params:
            self.grads["b"] = dy.sum(axis=0)
        return dy @ self.params["w"].T

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={'b' in self.params}"


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, train=True):
        self.cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.cache)
