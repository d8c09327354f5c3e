"""ReLU and (inverted) Dropout."""
import numpy as np

from ..backend import get_array_module, to_device, device_of
from ..kernels import fuse_gpu, use_cpu_kernels
from ..kernels.threads import parts_for, run_parts, split
from .base import Layer


class ReLU(Layer):
    """y = max(x, 0); dx = dy where x > 0, else 0 (the subgradient 0 at x == 0). Caches the mask."""

    def forward(self, x, train=True):
        if fuse_gpu.take(self):      # the BatchNorm2D before it applied it (tinyconv/kernels/fuse_gpu.py)
            self.cache = "fused" if train else None     # x is already max(BN(.), 0)
            return x
        if use_cpu_kernels(x):       # numba: y and mask in one pass (tinyconv/kernels/activations_cpu.py)
            from ..kernels import activations_cpu
            x = np.ascontiguousarray(x)
            y = np.empty_like(x)
            mask = np.empty(x.shape, dtype=np.bool_)
            xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
            parts = parts_for(x.size, x.size)

            def forward(i):                      # the threads split the elements
                a, b = split(x.size, parts, i)
                activations_cpu.relu_forward(xf[a:b], yf[a:b], mf[a:b])
            run_parts(forward, parts)
            self.cache = mask if train else None
            return y
        xp = get_array_module(x)
        mask = x > 0
        self.cache = mask if train else None
        return xp.where(mask, x, x.dtype.type(0))

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("ReLU.backward called without a forward(train=True) before it")
        if isinstance(self.cache, str):                 # "fused": BatchNorm2D's backward masks dy
            return dy
        if use_cpu_kernels(dy) and dy.shape == self.cache.shape:
            from ..kernels import activations_cpu
            dy = np.ascontiguousarray(dy)
            dx = np.empty_like(dy)
            dyf, mf, dxf = dy.reshape(-1), self.cache.reshape(-1), dx.reshape(-1)
            parts = parts_for(dy.size, dy.size)

            def backward(i):
                a, b = split(dy.size, parts, i)
                activations_cpu.relu_backward(dyf[a:b], mf[a:b], dxf[a:b])
            run_parts(backward, parts)
            return dx
        return dy * self.cache


class Dropout(Layer):
    """Inverted dropout: in training y = x * mask / (1 - p), mask ~ Bernoulli(1 - p); identity at inference.

    The mask is drawn by a seeded NumPy Generator on the CPU and then moved to x's device, so a
    seed gives the same masks on CPU and GPU and the generator's state can be checkpointed
    (``rng.bit_generator.state``) for exact resume. Caches the scaled mask.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)
        self.cache = None

    def forward(self, x, train=True):
        if not train or self.p == 0:
            self.cache = None
            return x
        keep = self.rng.random(x.shape) >= self.p
        mask = to_device((keep / (1 - self.p)).astype(x.dtype), device_of(x))
        self.cache = mask
        return x * mask

    def backward(self, dy):
        return dy if self.cache is None else dy * self.cache

    def extra_repr(self):
        return f"p={self.p}"
