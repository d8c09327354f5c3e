"""numba CPU kernels for Conv2D: im2col and col2im on a chunk of G images, in the layout of one GEMM.

The plain-xp versions (``tinyconv.layers.conv.im2col`` / ``col2im``) build (N, C*kh*kw, P) for the
whole batch. These fill a column matrix for images n0 .. n0+G-1 only, laid out so that the whole
chunk is one GEMM with the weights:

    cols[k, g*P + p*out_w + q] = x[n0 + g, c, p*sh - ph + i, q*sw - pw + j]   (0 outside x)
    with k = (c*kh + i)*kw + j,  P = out_h*out_w

so ``w2 (C_out, K) @ cols (K, G*P)`` is the convolution of the chunk. Padding is never
materialised: out-of-range rows and columns are written as zeros (im2col) or skipped (col2im).
The caller allocates ``cols`` / ``dx`` with NumPy (NumPy's allocator is faster for large arrays).
"""
import numba


@numba.njit(cache=True, nogil=True)
def im2col_chunk(x, n0, G, kh, kw, sh, sw, ph, pw, out_h, out_w, cols):
    """x (N, C, H, W) -> cols (C*kh*kw, G*out_h*out_w) for images n0 .. n0+G-1 (see module doc)."""
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
def col2im_chunk(cols, n0, G, kh, kw, sh, sw, ph, pw, out_h, out_w, dx):
    """The adjoint of im2col_chunk: dx[n0+g, c] = sum over (i, j, p, q) of cols scattered back.

    Overlapping windows add up. One (image, channel) plane of dx at a time: zeroed, then summed
    into while it is in cache.
    """
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
def chunk_to_nchw(y2, b, n0, G, y):
    """y[n0 + g, o, p] = y2[o, g*P + p] + b[o]: the chunk's GEMM output back to NCHW, plus bias."""
    C_out = y.shape[1]
    P = y.shape[2]
    for task in range(G * C_out):
        g = task // C_out
        o = task % C_out
        for p in range(P):
            y[n0 + g, o, p] = y2[o, g * P + p] + b[o]


@numba.njit(cache=True, nogil=True)
def nchw_to_chunk(dy, n0, G, dy2):
    """dy2[o, g*P + p] = dy[n0 + g, o, p]: the inverse layout change, for the backward GEMMs."""
    C_out = dy.shape[1]
    P = dy.shape[2]
    for task in range(G * C_out):
        g = task // C_out
        o = task % C_out
        for p in range(P):
            dy2[o, g * P + p] = dy[n0 + g, o, p]
