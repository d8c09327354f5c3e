"""numba CPU kernels for MaxPool2D (floor mode), replacing the kh*kw strided passes of
``tinyconv.layers.pool.MaxPool2D`` with one pass over each (image, channel) plane.

    y[n, c, p, q] = max over (i, j) of x[n, c, p*sh + i, q*sw + j]
    argmax[n, c, p, q] = i*kw + j of the FIRST maximum (row-major in the window; ties go first)
"""
import numba


@numba.njit(cache=True, nogil=True, inline="always")
def first_max4(v0, v1, v2, v3):
    """(max, index of its first occurrence) of a 2x2 window given row-major: ties go first."""
    best, idx = v0, 0
    if v1 > best:
        best, idx = v1, 1
    if v2 > best:
        best, idx = v2, 2
    if v3 > best:
        best, idx = v3, 3
    return best, idx


@numba.njit(cache=True, nogil=True)
def maxpool_forward(x, kh, kw, sh, sw, y, argmax):
    N, C = x.shape[0], x.shape[1]
    out_h, out_w = y.shape[2], y.shape[3]
    for task in range(N * C):
        n = task // C
        c = task % C
        if kh == 2 and kw == 2:                # the default model's 2x2 window, unrolled
            for p in range(out_h):
                h = p * sh
                for q in range(out_w):
                    w = q * sw
                    best, best_idx = first_max4(x[n, c, h, w], x[n, c, h, w + 1],
                                                x[n, c, h + 1, w], x[n, c, h + 1, w + 1])
                    y[n, c, p, q] = best
                    argmax[n, c, p, q] = best_idx
            continue
        for p in range(out_h):
            for q in range(out_w):
                best = x[n, c, p * sh, q * sw]
                best_idx = 0
                for i in range(kh):
                    for j in range(kw):
                        v = x[n, c, p * sh + i, q * sw + j]
                        if v > best:            # strict: the first maximum wins ties
                            best = v
                            best_idx = i * kw + j
                y[n, c, p, q] = best
                argmax[n, c, p, q] = best_idx


@numba.njit(cache=True, nogil=True)
def maxpool_backward(dy, argmax, kh, kw, sh, sw, dx):
    """dx[n, c, p*sh + i, q*sw + j] += dy[n, c, p, q] where (i, j) is the window's argmax; 0 elsewhere.

    One (n, c) plane at a time: zero it, then add (+= handles overlapping windows). Rows and
    columns that floor mode dropped stay 0.
    """
    N, C = dx.shape[0], dx.shape[1]
    H, W = dx.shape[2], dx.shape[3]
    out_h, out_w = dy.shape[2], dy.shape[3]
    for task in range(N * C):
        n = task // C
        c = task % C
        if kh == 2 and kw == 2 and sh == 2 and sw == 2:
            # disjoint 2x2 windows: write each covered dx once (dy at the argmax, 0 elsewhere),
            # then zero the row and column that floor mode dropped, if any
            for p in range(out_h):
                for q in range(out_w):
                    d = dy[n, c, p, q]
                    idx = argmax[n, c, p, q]
                    dx[n, c, 2 * p, 2 * q] = d if idx == 0 else 0
                    dx[n, c, 2 * p, 2 * q + 1] = d if idx == 1 else 0
                    dx[n, c, 2 * p + 1, 2 * q] = d if idx == 2 else 0
                    dx[n, c, 2 * p + 1, 2 * q + 1] = d if idx == 3 else 0
            for h in range(2 * out_h, H):
                for w in range(W):
                    dx[n, c, h, w] = 0
            for h in range(2 * out_h):
                for w in range(2 * out_w, W):
                    dx[n, c, h, w] = 0
            continue
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0
        for p in range(out_h):
            for q in range(out_w):
                idx = argmax[n, c, p, q]
                dx[n, c, p * sh + idx // kw, q * sw + idx % kw] += dy[n, c, p, q]
