"""numba CPU kernels for Conv2D: im2col and col2im on a chunk of G images, in the layout of one GEMM.

The plain-xp versions (``tinyconv.layers.conv.im2col`` / ``col2im``) build (N, C*kh*kw, P) for the
whole batch. These fill a column matrix for images n0 .. n0+G-1 only, laid out so that the whole
chunk is one GEMM with the weights:

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
import numba


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
