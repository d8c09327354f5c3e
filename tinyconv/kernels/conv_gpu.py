"""Conv2D on CuPy float32 arrays: im2col kernel + one cuBLAS GEMM per chunk (cuda/conv.cu).

Same structure as the CPU path (conv_cpu.py): the batch goes through in chunks of G images, each
with one (K, G*P) column matrix, K = C_in*kh*kw, P = out_h*out_w:
    forward    cols = im2col(x[chunk]);  ychunk = w2 @ cols (C_out, G*P);  y[chunk] = NCHW(ychunk) + b
    backward   dychunk = CHUNK(dy[chunk]);  dw += dychunk @ cols.T;  db += dychunk summed over columns
               dcols = w2.T @ dychunk (written over cols);  dx[chunk] = col2im(dcols)  (a gather)
Only x is cached (by reference); backward rebuilds the columns, which costs one im2col pass and
saves keeping a 9x-the-input matrix per layer between forward and backward. One GEMM over G*P
columns replaces the plain path's N small batched GEMMs, and dw needs no per-image partials.
"""
import numpy as np

from ..layers.base import conv_out_size
from .common_gpu import grad_out, i32, launch_rows

# Column-matrix elements per chunk (1 GiB of float32): at batch 256 and 218 x 178 the second block's
# matrix (2.86 GB) takes 3 chunks, the others 1 or 2.
CHUNK_ELEMENTS = 1 << 28


def _geometry(layer, x_shape):
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    out_h, out_w = conv_out_size(H, kh, sh, ph), conv_out_size(W, kw, sw, pw)
    K, P = C * kh * kw, out_h * out_w
    G = max(1, min(N, CHUNK_ELEMENTS // (K * P)))
    return (kh, kw, sh, sw, ph, pw, out_h, out_w), K, P, G


def _im2col(x, n0, g, geo, cols):
    _, C, H, W = x.shape
    kh, kw = geo[0], geo[1]
    launch_rows("conv", "im2col_chunk", C * kh * kw * g, geo[6] * geo[7],
                x, i32(C), i32(H), i32(W), i32(n0), i32(g), *map(i32, geo), cols)


def forward(layer, x, train):
    import cupy
    x = cupy.ascontiguousarray(x)
    N = x.shape[0]
    geo, K, P, G = _geometry(layer, x.shape)
    C_out = layer.out_channels
    w2 = cupy.ascontiguousarray(layer.params["w"]).reshape(C_out, K)
    has_bias = "b" in layer.params
    b = layer.params["b"] if has_bias else w2                  # w2: any pointer, not read
    y = cupy.empty((N, C_out, geo[6], geo[7]), dtype=np.float32)
    cols_buf = cupy.empty(K * G * P, dtype=np.float32)
    y2_buf = cupy.empty(C_out * G * P, dtype=np.float32)
    for n0 in range(0, N, G):
        g = min(G, N - n0)
        cols = cols_buf[:K * g * P].reshape(K, g * P)
        _im2col(x, n0, g, geo, cols)
        y2 = y2_buf[:C_out * g * P].reshape(C_out, g * P)
        cupy.matmul(w2, cols, out=y2)
        launch_rows("conv", "chunk_to_nchw", g * C_out, P,
                    y2, b, i32(has_bias), i32(C_out), i32(P), i32(n0), i32(g), y)
    layer.cache = ("gpu", x) if train else None
    return y


def backward(layer, dy):
    import cupy
    _, x = layer.cache
    N, C, H, W = x.shape
    geo, K, P, G = _geometry(layer, x.shape)
    C_out = layer.out_channels
    dy = cupy.ascontiguousarray(dy, dtype=np.float32)
    w2 = cupy.ascontiguousarray(layer.params["w"]).reshape(C_out, K)
    has_bias = "b" in layer.params
    dw = grad_out(layer.grads, "w", layer.params["w"].shape)
    dw2 = dw.reshape(C_out, K)
    db = grad_out(layer.grads, "b", (C_out,)) if has_bias else None
    dx = cupy.empty(x.shape, dtype=np.float32) if layer.needs_input_grad else None
    cols_buf = cupy.empty(K * G * P, dtype=np.float32)        # cols, then dcols, of one chunk
    dy2_buf = cupy.empty(C_out * G * P, dtype=np.float32)
    for n0 in range(0, N, G):
        g = min(G, N - n0)
        cols = cols_buf[:K * g * P].reshape(K, g * P)
        _im2col(x, n0, g, geo, cols)                          # rebuilt, not cached
        dy2 = dy2_buf[:C_out * g * P].reshape(C_out, g * P)
        launch_rows("conv", "nchw_to_chunk", C_out * g, P, dy, i32(C_out), i32(P), i32(n0), i32(g), dy2)
        # dw[o, k] = sum over the chunk's columns of dy2[o, col] * cols[k, col]
        if n0 == 0:
            cupy.matmul(dy2, cols.T, out=dw2)
            if has_bias:
                cupy.sum(dy2, axis=1, out=db)
        else:
            dw2 += cupy.matmul(dy2, cols.T)
            if has_bias:
                db += dy2.sum(axis=1)
        if dx is not None:
            cupy.matmul(w2.T, dy2, out=cols)                  # dcols overwrite the chunk's cols
            launch_rows("conv", "col2im_chunk", g * C, H * W,
                        cols, i32(C), i32(H), i32(W), i32(n0), i32(g), *map(i32, geo), dx)
    layer.grads["w"] = dw
    if has_bias:
        layer.grads["b"] = db
    return dx
