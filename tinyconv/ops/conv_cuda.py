"""2-D convolution on CuPy float32 arrays: im2col kernel + one cuBLAS GEMM per chunk (kernels/cuda/conv.cu).

Same structure as the numba version (conv_numba.py): the batch goes through in chunks of G images,
each with one (K, G*P) column matrix, K = C_in*kh*kw, P = out_h*out_w:
    forward    cols = im2col(x[chunk]);  ychunk = w2 @ cols (C_out, G*P);  y[chunk] = NCHW(ychunk) + b
    backward   dychunk = CHUNK(dy[chunk]);  dw += dychunk @ cols.T;  db += dychunk summed over columns
               dcols = w2.T @ dychunk (written over cols);  dx[chunk] = col2im(dcols)  (a gather)
Only x is saved (by reference); backward rebuilds the columns, which costs one im2col pass and
saves keeping a 9x-the-input matrix per layer between forward and backward. One GEMM over G*P
columns replaces the reference's N small batched GEMMs, and dw needs no per-image partials.
"""
from typing import NamedTuple

import numpy as np

from ..kernels.common_gpu import i32, launch_rows
from .geometry import geometry
from .grads import store_grad

# Column-matrix elements per chunk (1 GiB of float32): at batch 256 and 218 x 178 the second block's
# matrix (2.86 GB) takes 3 chunks, the others 1 or 2.
CHUNK_ELEMENTS = 1 << 28


class Conv2DCudaSaved(NamedTuple):
    x: object               # the input, by reference
    stride: tuple
    pad: tuple


def _images_per_chunk(g):
    return max(1, min(g.N, CHUNK_ELEMENTS // (g.K * g.P)))


def _im2col(x, n0, n, g, cols):
    launch_rows("conv", "im2col_chunk", g.K * n, g.P, x, i32(g.C), i32(g.H), i32(g.W), i32(n0), i32(n),
                *map(i32, g.window), cols)


def conv2d_forward(x, params, train, stride, pad):
    import cupy
    x = cupy.ascontiguousarray(x)
    C_out = params["w"].shape[0]
    g = geometry(x.shape, params["w"].shape[2:], stride, pad)
    K, P, G = g.K, g.P, _images_per_chunk(g)
    w2 = cupy.ascontiguousarray(params["w"]).reshape(C_out, K)
    has_bias = "b" in params
    b = params["b"] if has_bias else w2                     # w2: any pointer, not read
    y = cupy.empty((g.N, C_out, g.out_h, g.out_w), dtype=np.float32)
    cols_buf = cupy.empty(K * G * P, dtype=np.float32)
    y2_buf = cupy.empty(C_out * G * P, dtype=np.float32)
    for n0 in range(0, g.N, G):
        n = min(G, g.N - n0)
        cols = cols_buf[:K * n * P].reshape(K, n * P)
        _im2col(x, n0, n, g, cols)
        y2 = y2_buf[:C_out * n * P].reshape(C_out, n * P)
        cupy.matmul(w2, cols, out=y2)
        launch_rows("conv", "chunk_to_nchw", n * C_out, P,
                    y2, b, i32(has_bias), i32(C_out), i32(P), i32(n0), i32(n), y)
    return y, (Conv2DCudaSaved(x, stride, pad) if train else None)


def conv2d_backward(saved, dy, params, grads, input_grad=True, accumulate=False):
    import cupy
    x = saved.x
    C_out = params["w"].shape[0]
    g = geometry(x.shape, params["w"].shape[2:], saved.stride, saved.pad)
    K, P, G = g.K, g.P, _images_per_chunk(g)
    dy = cupy.ascontiguousarray(dy, dtype=np.float32)
    w2 = cupy.ascontiguousarray(params["w"]).reshape(C_out, K)
    has_bias = "b" in params
    dw2 = cupy.empty((C_out, K), dtype=np.float32)
    db = cupy.empty(C_out, dtype=np.float32) if has_bias else None
    dx = cupy.empty(x.shape, dtype=np.float32) if input_grad else None
    cols_buf = cupy.empty(K * G * P, dtype=np.float32)        # cols, then dcols, of one chunk
    dy2_buf = cupy.empty(C_out * G * P, dtype=np.float32)
    for n0 in range(0, g.N, G):
        n = min(G, g.N - n0)
        cols = cols_buf[:K * n * P].reshape(K, n * P)
        _im2col(x, n0, n, g, cols)                            # rebuilt, not saved
        dy2 = dy2_buf[:C_out * n * P].reshape(C_out, n * P)
        launch_rows("conv", "nchw_to_chunk", C_out * n, P, dy, i32(C_out), i32(P), i32(n0), i32(n), dy2)
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
            launch_rows("conv", "col2im_chunk", n * g.C, g.H * g.W,
                        cols, i32(g.C), i32(g.H), i32(g.W), i32(n0), i32(n), *map(i32, g.window), dx)
    store_grad(grads, "w", dw2.reshape(params["w"].shape), accumulate)
    if has_bias:
        store_grad(grads, "b", db, accumulate)
    return dx


def conv2d_saved_bytes(x_shape, w_shape, stride, pad, itemsize):
    """x by reference: nothing of its own (a chunk's columns live only inside one call)."""
    return 0
