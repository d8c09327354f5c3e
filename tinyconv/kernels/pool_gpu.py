"""MaxPool2D on CuPy float32 arrays (cuda/pool.cu): one pass forward (y and the uint8 argmax the
plain path caches, same convention), one gather pass backward that writes every dx element."""
import numpy as np

from .common_gpu import i32, i64, launch_rows


def forward(x, kernel_size, stride, out_hw):
    """-> (y, argmax) for x (N, C, H, W)."""
    import cupy
    x = cupy.ascontiguousarray(x)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (out_h, out_w) = kernel_size, stride, out_hw
    y = cupy.empty((N, C, out_h, out_w), dtype=np.float32)
    argmax = cupy.empty(y.shape, dtype=np.uint8)
    launch_rows("pool", "maxpool_forward", N * C, out_h * out_w,
                x, i64(N * C), i32(H), i32(W), i32(kh), i32(kw), i32(sh), i32(sw),
                i32(out_h), i32(out_w), y, argmax)
    return y, argmax


def backward(dy, argmax, x_shape, kernel_size, stride):
    import cupy
    dy = cupy.ascontiguousarray(dy)
    N, C, H, W = x_shape
    (kh, kw), (sh, sw) = kernel_size, stride
    out_h, out_w = dy.shape[2], dy.shape[3]
    dx = cupy.empty(x_shape, dtype=np.float32)
    launch_rows("pool", "maxpool_backward", N * C, H * W,
                dy, argmax, i64(N * C), i32(H), i32(W), i32(kh), i32(kw), i32(sh), i32(sw),
                i32(out_h), i32(out_w), dx)
    return dx
