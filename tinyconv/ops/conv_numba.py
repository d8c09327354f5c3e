"""2-D convolution on NumPy float32/float64 arrays: numba im2col/col2im, one GEMM per chunk of images.

The same arithmetic as the reference (conv.py), cut differently. The batch goes through in chunks of G
images: one (C*kh*kw, G*P) column matrix per chunk, one GEMM per chunk, and only x saved (backward
rebuilds each chunk's columns). The column matrix of the whole batch, 9x the input for a 3x3 kernel,
is kept only for small layers (at most CACHE_COLS_BYTES, until their backward has used it). The bias
rides in the GEMM: a row of ones under the columns and b as an extra weight column, so no pass adds
b, and the dw GEMM's extra row is db. The threads (kernels/threads.py) take equal shares of the
chunks, each with its own column buffer and single-threaded GEMMs; dw and db are summed per chunk
and the partial sums added in chunk order (the same bits for any number of threads).

The kernels fill a column matrix for images n0 .. n0+G-1 only, laid out so that the whole chunk is
one GEMM with the weights:

    cols[k, g*P + p*out_w + q] = x[n0 + g, c, p*sh - ph + i, q*sw - pw + j]   (0 outside x)
    with k = (c*kh + i)*kw + j,  P = out_h*out_w

so ``w2 (C_out, K) @ cols (K, G*P)`` is the convolution of the chunk. Padding is never
materialised: out-of-range rows and columns are written as zeros (im2col) or skipped (col2im).
The caller allocates ``cols`` / ``dx`` with NumPy (NumPy's allocator is faster for large arrays).

Two versions of each. The general one works row by row with a bounds test per element. The
"same" one, for stride 1 and ``out_w == W`` (a kh x kw kernel with padding (kw-1)/2 across: the
default model's 3x3 pad 1), uses that one column-matrix row of one image is then the input plane,
flattened, shifted by d = (i - ph)*W + (j - pw): one contiguous copy of about H*W elements, then
the few entries that wrapped around a row edge (the padding columns) set to zero. 3-4x faster on
the default model's layers (tools: ``python3 benchmarks/cpu_train.py``).

Vectorisation note (measured here: 4x on a 594-element copy): numba wraps negative indexes, and
LLVM only vectorises a loop when it can prove the index is never negative. An index that is a bare
``range(n)`` loop variable is; ``i + d`` is not. So the inner loops run over 1-D slices with the
bare loop variable (``_copy``, ``_add``, ``_zero``).
"""
from dataclasses import dataclass

import numba
import numpy as np

from ..kernels.threads import parts_for, run_parts, split
from .geometry import geometry
from .grads import store_grad

# Column-matrix elements per chunk (4 MiB of float32): large enough for an efficient GEMM, small
# enough to stay near the caches and keep peak memory low.
CHUNK_ELEMENTS = 1 << 20
# The number of chunks is rounded up to a multiple of this (at most N), so that 1, 2 or 4 threads
# get equal shares of the batch.
CHUNK_MULTIPLE = 4
# Layers with at most this many rows in the column matrix (C_in*kh*kw: the first layer's 27) work
# one image per chunk: their GEMMs are memory-bound, and one image's GEMM writes y[n] in NCHW
# directly (backward reads dy[n] in place), skipping the two layout passes of a multi-image chunk.
ONE_IMAGE_MAX_K = 64
# Training forwards whose whole-batch column matrix takes at most this many bytes (the small late
# layers, where im2col costs more than the GEMMs: rows of 2-5 pixels) keep it for backward instead
# of rebuilding it; backward drops it once used, so it never adds to the peak of the early layers.
CACHE_COLS_BYTES = 8 << 20


@dataclass
class Conv2DNumbaSaved:
    x: np.ndarray                # the input (a reference, not a copy)
    cols: np.ndarray             # the forward's column matrix (with the bias row), or None: rebuilt
    stride: tuple
    pad: tuple



@numba.njit(cache=True, nogil=True, inline="always")
def _copy(dst, src):
    for m in range(dst.shape[0]):
        dst[m] = src[m]


@numba.njit(cache=True, nogil=True, inline="always")
def _add(dst, src):
    for m in range(dst.shape[0]):
        dst[m] += src[m]


@numba.njit(cache=True, nogil=True, inline="always")
def _zero(dst):
    for m in range(dst.shape[0]):
        dst[m] = 0


@numba.njit(cache=True, nogil=True, inline="always")
def _same(sh, sw, out_w, W):
    """Whether the shifted-plane kernels apply: stride 1 and out_w == W."""
    return sh == 1 and sw == 1 and out_w == W


@numba.njit(cache=True, nogil=True)
def im2col_chunk(x, n0, G, kh, kw, sh, sw, ph, pw, out_h, out_w, cols):
    """x (N, C, H, W) -> cols (C*kh*kw, G*out_h*out_w) for images n0 .. n0+G-1 (see module doc)."""
    if _same(sh, sw, out_w, x.shape[3]):
        _im2col_same(x, n0, G, kh, kw, ph, pw, out_h, cols)
    else:
        _im2col_general(x, n0, G, kh, kw, sh, sw, ph, pw, out_h, out_w, cols)


@numba.njit(cache=True, nogil=True)
def col2im_chunk(cols, n0, G, kh, kw, sh, sw, ph, pw, out_h, out_w, dx):
    """The adjoint of im2col_chunk: dx[n0+g, c] = sum over (i, j, p, q) of cols scattered back.

    Overlapping windows add up, in the order (i, j, p, q) in both versions (so both give the same
    bits). One (image, channel) plane of dx at a time: zeroed, then summed into while it is in
    cache. ``cols`` is scratch: the "same" version sets its entries that fall into the padding
    columns to zero in place (they are dropped either way).
    """
    if _same(sh, sw, out_w, dx.shape[3]):
        _col2im_same(cols, n0, G, kh, kw, ph, pw, out_h, dx)
    else:
        _col2im_general(cols, n0, G, kh, kw, sh, sw, ph, pw, out_h, out_w, dx)


@numba.njit(cache=True, nogil=True, inline="always")
def _zero_wrapped_columns(row, s, W, out_h):
    """In one image's column-matrix row (out_h rows of W), zero the columns q whose input column
    q + s lies outside 0 .. W-1 (in the flat shifted copy they hold a neighbouring row's pixels)."""
    if s < 0:
        for p in range(out_h):
            for q in range(min(-s, W)):
                row[p * W + q] = 0
    elif s > 0:
        for p in range(out_h):
            for q in range(max(W - s, 0), W):
                row[p * W + q] = 0


@numba.njit(cache=True, nogil=True, inline="always")
def _shift(i, j, ph, pw, W, HW, P):
    """Kernel offset (i, j) as a flat shift d of the plane, and the range lo .. hi of a column-matrix
    row that the plane covers: row[lo:hi] = plane[lo + d:hi + d] (the rest is padding)."""
    d = (i - ph) * W + (j - pw)
    lo = min(max(0, -d), P)
    hi = max(min(P, HW - d), lo)
    return d, lo, hi


@numba.njit(cache=True, nogil=True)
def _im2col_same(x, n0, G, kh, kw, ph, pw, out_h, cols):
    """im2col_chunk for stride 1 and out_w == W: row k of image g is x[n0+g, c] flattened and
    shifted by d = (i - ph)*W + (j - pw), zero where the shift leaves the plane or wraps a row."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    HW = H * W
    P = out_h * W
    for c in range(C):
        for g in range(G):
            src = x[n0 + g, c].reshape(HW)
            for i in range(kh):
                for j in range(kw):
                    row = cols[(c * kh + i) * kw + j, g * P:(g + 1) * P]
                    d, lo, hi = _shift(i, j, ph, pw, W, HW, P)
                    _zero(row[:lo])
                    _copy(row[lo:hi], src[lo + d:hi + d])
                    _zero(row[hi:])
                    _zero_wrapped_columns(row, j - pw, W, out_h)


@numba.njit(cache=True, nogil=True)
def _col2im_same(cols, n0, G, kh, kw, ph, pw, out_h, dx):
    """col2im_chunk for stride 1 and out_w == W: the adjoint of _im2col_same's shifted copy (the
    wrapped columns zeroed in cols first, so the flat shifted add drops them)."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    HW = H * W
    P = out_h * W
    for g in range(G):
        for c in range(C):
            plane = dx[n0 + g, c].reshape(HW)
            _zero(plane)
            for i in range(kh):
                for j in range(kw):
                    row = cols[(c * kh + i) * kw + j, g * P:(g + 1) * P]
                    _zero_wrapped_columns(row, j - pw, W, out_h)
                    d, lo, hi = _shift(i, j, ph, pw, W, HW, P)
                    _add(plane[lo + d:hi + d], row[lo:hi])


@numba.njit(cache=True, nogil=True)
def _im2col_general(x, n0, G, kh, kw, sh, sw, ph, pw, out_h, out_w, cols):
    """im2col_chunk for any stride and padding: row by row, a bounds test per element."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    P = out_h * out_w
    # one (k, g) pair = one row k of one image g: a contiguous run of P; row k is written from
    # start to end (g inner). Nested loops, not one flat task index: the divisions that split a
    # flat index cost as much as a small layer's row copy
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                for g in range(G):
                    base = g * P
                    for p in range(out_h):
                        h = p * sh - ph + i
                        dst = base + p * out_w
                        if h < 0 or h >= H:
                            for q in range(out_w):
                                cols[k, dst + q] = 0
                            continue
                        for q in range(out_w):
                            w = q * sw - pw + j
                            if w >= 0 and w < W:
                                cols[k, dst + q] = x[n0 + g, c, h, w]
                            else:
                                cols[k, dst + q] = 0


@numba.njit(cache=True, nogil=True)
def _col2im_general(cols, n0, G, kh, kw, sh, sw, ph, pw, out_h, out_w, dx):
    """col2im_chunk for any stride and padding (one plane at a time; cols is only read)."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    P = out_h * out_w
    for task in range(G * C):
        g = task // C
        c = task % C
        n = n0 + g
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                for p in range(out_h):
                    h = p * sh - ph + i
                    if h < 0 or h >= H:
                        continue
                    src = g * P + p * out_w
                    for q in range(out_w):
                        w = q * sw - pw + j
                        if w >= 0 and w < W:
                            dx[n, c, h, w] += cols[k, src + q]


@numba.njit(cache=True, nogil=True)
def chunk_to_nchw(y2, n0, G, y):
    """y[n0 + g, o, p] = y2[o, g*P + p]: the chunk's GEMM output back to NCHW."""
    C_out = y.shape[1]
    P = y.shape[2]
    for task in range(G * C_out):
        g = task // C_out
        o = task % C_out
        _copy(y[n0 + g, o], y2[o, g * P:(g + 1) * P])


@numba.njit(cache=True, nogil=True)
def nchw_to_chunk(dy, n0, G, dy2):
    """dy2[o, g*P + p] = dy[n0 + g, o, p]: the inverse layout change, for the backward GEMMs."""
    C_out = dy.shape[1]
    P = dy.shape[2]
    for task in range(G * C_out):
        g = task // C_out
        o = task % C_out
        _copy(dy2[o, g * P:(g + 1) * P], dy[n0 + g, o])


# -- the op: chunks of images over the threads, one GEMM per chunk --------------------------------
def _chunks(g):
    """Chunk bounds: nc chunks of near-equal image counts, nc a multiple of CHUNK_MULTIPLE (at most N)
    so that the threads get equal shares, or one image each for K <= ONE_IMAGE_MAX_K. The bounds
    never depend on the number of threads, so neither do the results."""
    nc = -(-g.N * g.K * g.P // CHUNK_ELEMENTS)
    nc = min(g.N, -(-nc // CHUNK_MULTIPLE) * CHUNK_MULTIPLE)
    if g.K <= ONE_IMAGE_MAX_K:
        nc = g.N
    return [i * g.N // nc for i in range(nc + 1)] if nc else [0]


def _weights(params, K):
    """w2 (C_out, K), with the bias as an extra column when there is one (the GEMM adds it)."""
    w2 = params["w"].reshape(params["w"].shape[0], K)
    return np.concatenate([w2, params["b"][:, None]], axis=1) if "b" in params else w2


def conv2d_forward(x, params, train, stride, pad):
    """conv.conv2d_forward, a chunk of images at a time (see the module doc)."""
    x = np.ascontiguousarray(x)
    g = geometry(x.shape, params["w"].shape[2:], stride, pad)
    N, K, P = g.N, g.K, g.P
    bounds = _chunks(g)
    nc, G = len(bounds) - 1, -(-N // max(len(bounds) - 1, 1))   # chunks, most images in one
    w2 = _weights(params, K)                                    # (C_out, Kb): Kb = K + 1 with a bias
    C_out, Kb = w2.shape
    y = np.empty((N, C_out, P), dtype=x.dtype)
    parts = parts_for(nc, N * K * P)
    keep = train and N * Kb * P * x.itemsize <= CACHE_COLS_BYTES
    # chunk c's columns: all_cols[n0*Kb*P : n1*Kb*P] as (Kb, g*P) when kept, else a per-thread buffer
    all_cols = np.empty(N * Kb * P, dtype=x.dtype) if keep else None
    bufs = None if keep else np.empty((parts, Kb * G * P), dtype=x.dtype)
    y2bufs = np.empty((parts, C_out * G * P), dtype=x.dtype) if G > 1 else None

    def forward(t):                                         # thread t: chunks c0 .. c1-1
        c0, c1 = split(nc, parts, t)
        for c in range(c0, c1):
            n0, n = bounds[c], bounds[c + 1] - bounds[c]
            if keep:
                cols = all_cols[n0 * Kb * P:(n0 + n) * Kb * P].reshape(Kb, n * P)
            else:
                cols = bufs[t, :Kb * n * P].reshape(Kb, n * P)
            im2col_chunk(x, n0, n, *g.window, cols)         # rows 0 .. K-1
            cols[K:] = 1                                    # the bias row, if any
            if n == 1:                                      # the GEMM output is y[n0] itself
                np.matmul(w2, cols, out=y[n0])
            else:                                           # (C_out, n*P) -> y[n0:n0+n]
                y2 = y2bufs[t, :C_out * n * P].reshape(C_out, n * P)
                np.matmul(w2, cols, out=y2)
                chunk_to_nchw(y2, n0, n, y)
    run_parts(forward, parts)
    saved = Conv2DNumbaSaved(x, all_cols, stride, pad) if train else None
    return y.reshape(N, C_out, g.out_h, g.out_w), saved


def conv2d_backward(saved, dy, params, grads, input_grad=True, accumulate=False):
    """conv.conv2d_backward, a chunk of images at a time; frees the forward's columns."""
    x, all_cols = saved.x, saved.cols
    w = params["w"]
    g = geometry(x.shape, w.shape[2:], saved.stride, saved.pad)
    N, K, P = g.N, g.K, g.P
    bounds = _chunks(g)
    nc, G = len(bounds) - 1, -(-N // max(len(bounds) - 1, 1))
    C_out = w.shape[0]
    Kb = K + 1 if "b" in params else K                      # with the forward's row of ones (bias)
    dy = np.ascontiguousarray(dy, dtype=x.dtype).reshape(N, C_out, P)
    w2 = w.reshape(C_out, K)
    # dw (and db, the ones row's product) as one partial sum per chunk, added in chunk order
    # below (deterministic, and the same for any number of threads). Transposed (Kb, C_out):
    # OpenBLAS runs cols @ dy2.T 10-20% faster here than dy2 @ cols.T.
    dw_parts = np.empty((max(nc, 1), Kb, C_out), dtype=x.dtype)
    dx = np.empty(x.shape, dtype=x.dtype) if input_grad else None
    parts = parts_for(nc, N * K * P)
    # one chunk's cols (rebuilt), then its dcols; only dcols when the forward kept the cols
    bufs = np.empty((parts, Kb * G * P), dtype=x.dtype) if all_cols is None or dx is not None else None
    dy2bufs = np.empty((parts, C_out * G * P), dtype=x.dtype) if G > 1 else None

    def backward(t):
        c0, c1 = split(nc, parts, t)
        for c in range(c0, c1):
            n0, n = bounds[c], bounds[c + 1] - bounds[c]
            if all_cols is not None:
                cols = all_cols[n0 * Kb * P:(n0 + n) * Kb * P].reshape(Kb, n * P)
            else:
                cols = bufs[t, :Kb * n * P].reshape(Kb, n * P)
                im2col_chunk(x, n0, n, *g.window, cols)     # rebuilt from x
                cols[K:] = 1
            if n == 1:
                dy2 = dy[n0]
            else:
                dy2 = dy2bufs[t, :C_out * n * P].reshape(C_out, n * P)
                nchw_to_chunk(dy, n0, n, dy2)
            # dw[o, k] = sum over the chunk's columns of cols[k, col] * dy2[o, col]; row K: db
            np.matmul(cols, dy2.T, out=dw_parts[c])
            if dx is not None:                              # dcols into the chunk's buffer
                dcols = bufs[t, :K * n * P].reshape(K, n * P)
                np.matmul(w2.T, dy2, out=dcols)
                col2im_chunk(dcols, n0, n, *g.window, dx)
    run_parts(backward, parts)
    saved.cols = None                                       # freed (rebuilt if called again)
    if nc == 0:                                             # an empty batch
        dw_parts[0] = 0
    dw_t = dw_parts[0]
    for c in range(1, nc):
        dw_t += dw_parts[c]
    if Kb > K:
        store_grad(grads, "b", dw_t[K], accumulate)
    store_grad(grads, "w", dw_t[:K].reshape(g.C, g.kh, g.kw, C_out).transpose(3, 0, 1, 2), accumulate)
    return dx


def conv2d_saved_bytes(x_shape, w_shape, stride, pad, itemsize):
    """x is saved by reference; the whole batch's columns too when they are small (CACHE_COLS_BYTES)."""
    g = geometry(x_shape, w_shape[2:], stride, pad)
    cols = g.N * (g.K + 1) * g.P * itemsize
    return cols if cols <= CACHE_COLS_BYTES else 0
