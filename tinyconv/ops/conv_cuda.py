"""2-D convolution on CuPy float32 arrays: im2col kernel + one cuBLAS GEMM per chunk (kernels/cuda/conv.cu).

Same structure as the numba version (conv_numba.py): the batch goes through in chunks of G images,
each with one (K, G*P) column matrix, K = C_in*kh*kw, P = out_h*out_w:
    forward    cols = im2col(x[chunk]);  ychunk = w2 @ cols (C_out, G*P);  y[chunk] = NCHW(ychunk) + b
    backward   dychunk = CHUNK(dy[chunk]);  [db | dw] += dychunk @ [1; cols].T  (one GEMM)
               dcols = w2.T @ dychunk (written over cols);  dx[chunk] = col2im(dcols)  (a gather)
Only x is saved (by reference); backward rebuilds the columns, which costs one im2col pass and
saves keeping a 9x-the-input matrix per layer between forward and backward. One GEMM over G*P
columns replaces the reference's N small batched GEMMs, and dw needs no per-image partials.

The bias gradient rides in the dw GEMM, as on the CPU (conv_numba.py), instead of a separate
32-row sum: backward's column matrix has a row of ones on top (row 0, then im2col's K rows), so
column 0 of the GEMM's output is db. (Whether this is faster on a GPU is unmeasured.)
"""
from typing import NamedTuple

import numpy as np

from ..kernels.common_gpu import i32, launch_rows
from .geometry import geometry
from .grads import store_grad

# Elements per chunk buffer (1 GiB of float32): the column matrix (K rows, +1 for the bias's ones
# row) and the GEMM output (C_out rows) of one chunk each hold at most this many. At batch 256 and
# 218 x 178 the second block's matrix (2.86 GB) takes 3 chunks, the others 1 or 2.
CHUNK_ELEMENTS = 1 << 28


class Conv2DCudaSaved(NamedTuple):
    x: object               # the input, by reference
    stride: tuple
    pad: tuple


def _images_per_chunk(g, C_out, has_bias):
    """G: the most images whose column matrix (K rows, one more for the bias's ones row) and GEMM
    output (C_out rows), G*P columns each, fit in CHUNK_ELEMENTS; at least one image, whatever its size."""
    rows = max(g.K + 1 if has_bias else g.K, C_out)
    return max(1, min(g.N, CHUNK_ELEMENTS // (rows * g.P)))


def _chunks(N, G):
    """(n0, n) of each chunk: full chunks of G images, then the rest. The sizes never grow, which
    backward's ones row relies on."""
    return [(n0, min(G, N - n0)) for n0 in range(0, N, G)]


def _im2col(x, n0, n, g, cols):
    launch_rows("conv", "im2col_chunk", g.K * n, g.P, x, i32(g.C), i32(g.H), i32(g.W), i32(n0), i32(n),
                *map(i32, g.window), cols)


def conv2d_forward(x, params, train, stride, pad):
    import cupy
    x = cupy.ascontiguousarray(x)
    C_out = params["w"].shape[0]
    has_bias = "b" in params
    g = geometry(x.shape, params["w"].shape[2:], stride, pad)
    K, P, G = g.K, g.P, _images_per_chunk(g, C_out, has_bias)
    w2 = cupy.ascontiguousarray(params["w"]).reshape(C_out, K)
    b = params["b"] if has_bias else w2                     # w2: any pointer, not read
    y = cupy.empty((g.N, C_out, g.out_h, g.out_w), dtype=np.float32)
    cols_buf = cupy.empty(K * G * P, dtype=np.float32)
    y2_buf = cupy.empty(C_out * G * P, dtype=np.float32)
    for n0, n in _chunks(g.N, G):
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
    has_bias = "b" in params
    g = geometry(x.shape, params["w"].shape[2:], saved.stride, saved.pad)
    K, P, G = g.K, g.P, _images_per_chunk(g, C_out, has_bias)
    Kb = K + 1 if has_bias else K                             # with the ones row (row 0)
    r0 = Kb - K                                               # im2col's first row
    dy = cupy.ascontiguousarray(dy, dtype=np.float32)
    w2 = cupy.ascontiguousarray(params["w"]).reshape(C_out, K)
    dwb = cupy.empty((C_out, Kb), dtype=np.float32)           # [db | dw2]
    if g.N == 0:                                              # no chunks: the gradients are zero
        dwb.fill(0)
    dx = cupy.empty(x.shape, dtype=np.float32) if input_grad else None
    # One chunk's [1; cols] (Kb, n*P), then its dcols in the K rows below the ones. The ones row of
    # a chunk of n images is cols_buf[:n*P]: filled once here for the largest chunk, and never
    # written after, since every write (im2col, dcols) starts at n*P and chunks never grow.
    cols_buf = cupy.empty(Kb * G * P, dtype=np.float32)
    if has_bias:
        cols_buf[:G * P] = 1
    dy2_buf = cupy.empty(C_out * G * P, dtype=np.float32)
    for n0, n in _chunks(g.N, G):
        colsb = cols_buf[:Kb * n * P].reshape(Kb, n * P)
        cols = colsb[r0:]                                    # (K, n*P), C-contiguous
        _im2col(x, n0, n, g, cols)                            # rebuilt, not saved
        dy2 = dy2_buf[:C_out * n * P].reshape(C_out, n * P)
        launch_rows("conv", "nchw_to_chunk", C_out * n, P, dy, i32(C_out), i32(P), i32(n0), i32(n), dy2)
        # dwb[o, kb] = sum over the chunk's columns of dy2[o, col] * colsb[kb, col]; column 0: db
        if n0 == 0:
            cupy.matmul(dy2, colsb.T, out=dwb)
        else:
            dwb += cupy.matmul(dy2, colsb.T)
        if dx is not None:
            cupy.matmul(w2.T, dy2, out=cols)                  # dcols overwrite the chunk's cols
            launch_rows("conv", "col2im_chunk", n * g.C, g.H * g.W,
                        cols, i32(g.C), i32(g.H), i32(g.W), i32(n0), i32(n), *map(i32, g.window), dx)
    store_grad(grads, "w", dwb[:, r0:].reshape(params["w"].shape), accumulate)
    if has_bias:
        store_grad(grads, "b", dwb[:, 0], accumulate)
    return dx


def workspace_bytes(itemsize):
    """The per-call buffers' bound: the columns (with the ones row) and the GEMM output of one chunk,
    each at most CHUNK_ELEMENTS values (_images_per_chunk keeps both under it)."""
    return 2 * CHUNK_ELEMENTS * itemsize


def conv2d_saved_bytes(x_shape, w_shape, stride, pad, itemsize):
    """x by reference: nothing of its own (a chunk's columns live only inside one call)."""
    return 0
