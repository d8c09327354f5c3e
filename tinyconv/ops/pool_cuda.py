"""Max pooling on CuPy float32 arrays (kernels/cuda/pool.cu): one pass forward (y and the uint8 argmax
the reference saves, same convention), one gather pass backward that writes every dx element."""
from typing import NamedTuple

import numpy as np

from ..kernels.common_gpu import i32, i64, launch_rows
from .geometry import geometry


class MaxPoolCudaSaved(NamedTuple):
    x_shape: tuple
    argmax: object
    kernel: tuple
    stride: tuple


def maxpool_forward(x, kernel, stride, train):
    import cupy
    x = cupy.ascontiguousarray(x)
    g = geometry(x.shape, kernel, stride)
    y = cupy.empty((g.N, g.C, g.out_h, g.out_w), dtype=np.float32)
    argmax = cupy.empty(y.shape, dtype=np.uint8)
    launch_rows("pool", "maxpool_forward", g.N * g.C, g.P,
                x, i64(g.N * g.C), i32(g.H), i32(g.W), i32(g.kh), i32(g.kw), i32(g.sh), i32(g.sw),
                i32(g.out_h), i32(g.out_w), y, argmax)
    return y, (MaxPoolCudaSaved(x.shape, argmax, tuple(kernel), tuple(stride)) if train else None)


def maxpool_backward(saved, dy):
    import cupy
    dy = cupy.ascontiguousarray(dy)
    N, C, H, W = saved.x_shape
    (kh, kw), (sh, sw) = saved.kernel, saved.stride
    dx = cupy.empty(saved.x_shape, dtype=np.float32)
    launch_rows("pool", "maxpool_backward", N * C, H * W,
                dy, saved.argmax, i64(N * C), i32(H), i32(W), i32(kh), i32(kw), i32(sh), i32(sw),
                i32(dy.shape[2]), i32(dy.shape[3]), dx)
    return dx


def maxpool_saved_bytes(x_shape, kernel, stride, itemsize):
    """The uint8 argmax, one byte per output."""
    g = geometry(x_shape, kernel, stride)
    return g.N * g.C * g.P
