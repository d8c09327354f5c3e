"""Max pooling (floor mode) and global average pooling.

On NumPy arrays MaxPool2D runs numba kernels (tinyconv/kernels/pool_cpu.py): one pass per plane
instead of kh*kw strided passes, same argmax convention.
"""
import numpy as np

from ..backend import get_array_module
from ..kernels import fuse_gpu, use_cpu_kernels
from ..kernels.common_gpu import use_gpu_kernels
from ..kernels.threads import parts_for, run_parts, split
from .base import Layer, conv_out_size, pair


def _window(a, i, j, stride, out_hw):
    """The (N, C, out_h, out_w) strided view of ``a`` at kernel offset (i, j)."""
    (sh, sw), (out_h, out_w) = stride, out_hw
    return a[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]


class MaxPool2D(Layer):
    """Max pooling, floor mode: out = (size - k) // stride + 1; stride defaults to the kernel size.

    x (N, C, H, W) -> y (N, C, out_h, out_w). Caches, per output, the offset (0 .. kh*kw-1,
    row-major inside the window) of the first maximum: backward sends dy there and nowhere else,
    as PyTorch does on ties. Rows and columns that floor mode drops get zero gradient.
    """

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride if stride is not None else kernel_size, "stride")
        self.cache = None

    def output_shape(self, input_shape):
        C, H, W = input_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (C, conv_out_size(H, kh, sh, 0), conv_out_size(W, kw, sw, 0))

    def forward(self, x, train=True):
        if fuse_gpu.take(self):      # BatchNorm2D -> ReLU -> this, and the BatchNorm2D pooled already
            self.cache = "fused" if train else None     # (its numba path, see kernels/fuse_gpu.py)
            return x
        xp = get_array_module(x)
        _, out_h, out_w = self.output_shape(x.shape[1:])
        kh, kw = self.kernel_size
        if use_cpu_kernels(x):
            from ..kernels import pool_cpu
            x = np.ascontiguousarray(x)
            y = np.empty(x.shape[:2] + (out_h, out_w), dtype=x.dtype)
            argmax = np.empty(y.shape, dtype=np.uint8)
            parts = parts_for(x.shape[0], x.size)

            def forward(i):                      # the threads split the images
                a, b = split(x.shape[0], parts, i)
                pool_cpu.maxpool_forward(x[a:b], kh, kw, *self.stride, y[a:b], argmax[a:b])
            run_parts(forward, parts)
            self.cache = (x.shape, argmax) if train else None
            return y
        if use_gpu_kernels(x):               # CUDA kernels: tinyconv/kernels/pool_gpu.py, same cache
            from ..kernels import pool_gpu
            y, argmax = pool_gpu.forward(x, self.kernel_size, self.stride, (out_h, out_w))
            self.cache = (x.shape, argmax) if train else None
            return y
        y = _window(x, 0, 0, self.stride, (out_h, out_w)).copy()
        argmax = xp.zeros(y.shape, dtype=xp.uint8)
        for idx in range(1, kh * kw):
            v = _window(x, idx // kw, idx % kw, self.stride, (out_h, out_w))
            better = v > y                       # strict: the first maximum wins ties
            xp.copyto(y, v, where=better)
            argmax[better] = idx
        self.cache = (x.shape, argmax) if train else None
        return y

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("MaxPool2D.backward called without a forward(train=True) before it")
        if isinstance(self.cache, str):                 # "fused": BatchNorm2D's backward routes dy
            return dy
        xp = get_array_module(dy)
        x_shape, argmax = self.cache
        kh, kw = self.kernel_size
        out_hw = dy.shape[2:]
        if use_cpu_kernels(dy):
            from ..kernels import pool_cpu
            dx = np.empty(x_shape, dtype=dy.dtype)
            dy = np.ascontiguousarray(dy)
            parts = parts_for(dx.shape[0], dx.size)

            def backward(i):
                a, b = split(dx.shape[0], parts, i)
                pool_cpu.maxpool_backward(dy[a:b], argmax[a:b], kh, kw, *self.stride, dx[a:b])
            run_parts(backward, parts)
            return dx
        if use_gpu_kernels(dy):
            from ..kernels import pool_gpu
            return pool_gpu.backward(dy, argmax, x_shape, self.kernel_size, self.stride)
        dx = xp.zeros(x_shape, dtype=dy.dtype)
        overlapping = self.stride[0] < kh or self.stride[1] < kw
        for idx in range(kh * kw):
            contrib = xp.where(argmax == idx, dy, 0)
            view = _window(dx, idx // kw, idx % kw, self.stride, out_hw)
            if overlapping:
                view += contrib
            else:                                # windows are disjoint: each input is written once
                view[...] = contrib
        return dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: x (N, C, H, W) -> y (N, C). dx = dy / (H*W) at every position."""

    def output_shape(self, input_shape):
        return (input_shape[0],)

    def forward(self, x, train=True):
        self.cache = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        xp = get_array_module(dy)
        N, C, H, W = self.cache
        dx = xp.empty(self.cache, dtype=dy.dtype)
        dx[...] = (dy / (H * W))[:, :, None, None]
        return dx
