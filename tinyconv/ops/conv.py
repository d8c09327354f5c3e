"""2-D convolution, the reference: im2col + one GEMM per image (NCHW, weights KCRS), plain xp.

    x (N, C, H, W)  --im2col-->  cols (N, C*kh*kw, out_h*out_w)
    y[n] = w2 @ cols[n] + b        w2 = w.reshape(C_out, C*kh*kw)   ->  y (N, C_out, out_h, out_w)

The GEMM output is already NCHW, so no transpose is needed after it. Backward:
    dw = sum_n dy[n] @ cols[n].T     db = sum over N, out_h, out_w of dy
    dcols[n] = w2.T @ dy[n]          dx = col2im(dcols)  (overlapping windows add up)
Saves the column matrix for backward. The same arithmetic runs faster in conv_numba.py (NumPy)
and conv_cuda.py (CuPy), a chunk of images at a time; tinyconv.ops chooses.
"""
from typing import NamedTuple

from ..backend import get_array_module
from .geometry import geometry
from .grads import store_grad


class Conv2DSaved(NamedTuple):
    cols: object            # (N, C*kh*kw, out_h*out_w)
    x_shape: tuple
    stride: tuple
    pad: tuple


def im2col(x, kh, kw, stride=(1, 1), pad=(0, 0)):
    """(N, C, H, W) -> (N, C*kh*kw, out_h*out_w): one strided-slice copy per kernel offset.

    cols[n, (c, i, j), (p, q)] = x_padded[n, c, i + sh*p, j + sw*q]
    A loop over the kh*kw offsets (9 for a 3x3 kernel), never over pixels or images.
    """
    xp = get_array_module(x)
    N, C, H, W, kh, kw, sh, sw, ph, pw, out_h, out_w = geometry(x.shape, (kh, kw), stride, pad)
    if ph or pw:
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = xp.empty((N, C, kh, kw, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
    return cols.reshape(N, C * kh * kw, out_h * out_w)


def col2im(cols, x_shape, kh, kw, stride=(1, 1), pad=(0, 0)):
    """The adjoint of im2col: scatter-add (N, C*kh*kw, out_h*out_w) back to (N, C, H, W)."""
    xp = get_array_module(cols)
    N, C, H, W, kh, kw, sh, sw, ph, pw, out_h, out_w = geometry(x_shape, (kh, kw), stride, pad)
    cols = cols.reshape(N, C, kh, kw, out_h, out_w)
    dx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw] += cols[:, :, i, j]
    if ph or pw:
        dx = xp.ascontiguousarray(dx[:, :, ph:ph + H, pw:pw + W])
    return dx


def conv2d_forward(x, params, train, stride, pad):
    """y = conv(x, params["w"]) + params["b"] -> (y, Conv2DSaved or None)."""
    xp = get_array_module(x)
    w = params["w"]
    C_out, _, kh, kw = w.shape
    g = geometry(x.shape, (kh, kw), stride, pad)
    cols = im2col(x, kh, kw, stride, pad)
    y = xp.matmul(w.reshape(C_out, -1), cols)           # (N, C_out, out_h*out_w)
    if "b" in params:
        y += params["b"][:, None]
    saved = Conv2DSaved(cols, x.shape, stride, pad) if train else None
    return y.reshape(g.N, C_out, g.out_h, g.out_w), saved


def conv2d_backward(saved, dy, params, grads, input_grad=True, accumulate=False):
    """grads["w"], grads["b"] from dy; returns dx (None without ``input_grad``)."""
    xp = get_array_module(dy)
    cols, x_shape, stride, pad = saved
    w = params["w"]
    C_out, _, kh, kw = w.shape
    dy2 = dy.reshape(dy.shape[0], C_out, dy.shape[2] * dy.shape[3])   # (N, C_out, P); N may be 0
    # dw[o, k] = sum_n sum_p dy[n, o, p] * cols[n, k, p]
    store_grad(grads, "w", xp.matmul(dy2, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape), accumulate)
    if "b" in params:
        store_grad(grads, "b", dy2.sum(axis=(0, 2)), accumulate)
    if not input_grad:
        return None
    dcols = xp.matmul(w.reshape(C_out, -1).T, dy2)     # (N, C_in*kh*kw, P)
    return col2im(dcols, x_shape, kh, kw, stride, pad)


def conv2d_saved_bytes(x_shape, w_shape, stride, pad, itemsize):
    """What forward keeps for backward: the column matrix, N * C_in*kh*kw * out_h*out_w values."""
    g = geometry(x_shape, w_shape[2:], stride, pad)
    return g.N * g.K * g.P * itemsize
