"""2-D convolution as im2col + one GEMM per image (NCHW, weights KCRS).

    x (N, C, H, W)  --im2col-->  cols (N, C*kh*kw, out_h*out_w)
    y[n] = w2 @ cols[n] + b        w2 = w.reshape(C_out, C*kh*kw)   ->  y (N, C_out, out_h, out_w)

The GEMM output is already NCHW, so no transpose is needed after it. Backward:
    dw = sum_n dy[n] @ cols[n].T     db = sum over N, out_h, out_w of dy
    dcols[n] = w2.T @ dy[n]          dx = col2im(dcols)  (overlapping windows add up)

On NumPy arrays the layer uses numba kernels (tinyconv/kernels/conv_cpu.py) and works through the
batch in chunks of G images: one (C*kh*kw, G*P) column matrix per chunk, one GEMM per chunk, and
only x cached (backward rebuilds each chunk's columns). The column matrix of the whole batch, 9x
the input for a 3x3 kernel, is held only for small layers (at most CACHE_COLS_BYTES, until their
backward has used it). The bias rides in the GEMM: a row of ones under the columns and b as an
extra weight column, so no pass adds b, and the dw GEMM's extra row is db. The threads
(kernels/threads.py) take equal shares of the chunks, each with its own column buffer and
single-threaded GEMMs; dw and db are summed per chunk and the partial sums added in chunk order.
"""
import numpy as np

from ..backend import DEFAULT_DTYPE, get_array_module
from ..init import initialize
from ..kernels import use_cpu_kernels
from ..kernels.common_gpu import use_gpu_kernels
from ..kernels.threads import parts_for, run_parts, split
from .base import Layer, conv_out_size, pair

# Column-matrix elements per chunk on the CPU path (4 MiB of float32): large enough for an
# efficient GEMM, small enough to stay near the caches and keep peak memory low.
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


def im2col(x, kh, kw, stride=(1, 1), pad=(0, 0)):
    """(N, C, H, W) -> (N, C*kh*kw, out_h*out_w): one strided-slice copy per kernel offset.

    cols[n, (c, i, j), (p, q)] = x_padded[n, c, i + sh*p, j + sw*q]
    A loop over the kh*kw offsets (9 for a 3x3 kernel), never over pixels or images.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    (sh, sw), (ph, pw) = stride, pad
    out_h, out_w = conv_out_size(H, kh, sh, ph), conv_out_size(W, kw, sw, pw)
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
    N, C, H, W = x_shape
    (sh, sw), (ph, pw) = stride, pad
    out_h, out_w = conv_out_size(H, kh, sh, ph), conv_out_size(W, kw, sw, pw)
    cols = cols.reshape(N, C, kh, kw, out_h, out_w)
    dx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw] += cols[:, :, i, j]
    if ph or pw:
        dx = xp.ascontiguousarray(dx[:, :, ph:ph + H, pw:pw + W])
    return dx


class Conv2D(Layer):
    """2-D convolution.

    x (N, C_in, H, W) -> y (N, C_out, out_h, out_w), out = (size + 2*pad - k) // stride + 1.
    params: w (C_out, C_in, kh, kw), b (C_out,). Caches the column matrix of x for backward
    (on NumPy: x itself, not a copy, as Dense does: do not modify x in place before backward;
    plus the column matrix when it is small, see CACHE_COLS_BYTES).
    ``needs_input_grad = False`` (for a first layer, whose input is the
    images) makes backward skip dx and return None.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 init="he_normal", rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        kh, kw = self.kernel_size
        self.params["w"] = initialize(init, (out_channels, in_channels, kh, kw), rng, dtype)
        if bias:
            self.params["b"] = get_array_module(self.params["w"]).zeros(out_channels, dtype=dtype)
        self.needs_input_grad = True
        self.cache = None

    def output_shape(self, input_shape):
        C, H, W = input_shape
        if C != self.in_channels:
            raise ValueError(f"{self.name or 'Conv2D'} expects {self.in_channels} input channels, got {C}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (self.out_channels, conv_out_size(H, kh, sh, ph), conv_out_size(W, kw, sw, pw))

    def forward(self, x, train=True):
        if use_cpu_kernels(x, self.params["w"]) and x.dtype == self.params["w"].dtype:
            return self._forward_cpu(x, train)
        if use_gpu_kernels(x, self.params["w"]):            # CUDA kernels: tinyconv/kernels/conv_gpu.py
            from ..kernels import conv_gpu
            return conv_gpu.forward(self, x, train)
        xp = get_array_module(x)
        N = x.shape[0]
        _, out_h, out_w = self.output_shape(x.shape[1:])
        kh, kw = self.kernel_size
        cols = im2col(x, kh, kw, self.stride, self.padding)
        w2 = self.params["w"].reshape(self.out_channels, -1)
        y = xp.matmul(w2, cols)                         # (N, C_out, out_h*out_w)
        if "b" in self.params:
            y += self.params["b"][:, None]
        self.cache = ("cols", x.shape, cols) if train else None
        return y.reshape(N, self.out_channels, out_h, out_w)

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("Conv2D.backward called without a forward(train=True) before it")
        if self.cache[0] == "x":
            return self._backward_cpu(dy)
        if self.cache[0] == "gpu":
            from ..kernels import conv_gpu
            return conv_gpu.backward(self, dy)
        xp = get_array_module(dy)
        _, x_shape, cols = self.cache
        N = dy.shape[0]
        dy2 = dy.reshape(N, self.out_channels, -1)      # (N, C_out, P)
        w2 = self.params["w"].reshape(self.out_channels, -1)
        # dw[o, k] = sum_n sum_p dy[n, o, p] * cols[n, k, p]
        self.grads["w"] = xp.matmul(dy2, cols.transpose(0, 2, 1)).sum(axis=0).reshape(self.params["w"].shape)
        if "b" in self.params:
            self.grads["b"] = dy2.sum(axis=(0, 2))
        if not self.needs_input_grad:
            return None
        dcols = xp.matmul(w2.T, dy2)                    # (N, C_in*kh*kw, P)
        kh, kw = self.kernel_size
        return col2im(dcols, x_shape, kh, kw, self.stride, self.padding)

    # -- NumPy path: numba im2col/col2im per chunk of images, one GEMM per chunk, chunks over threads --
    def _chunks(self, x_shape):
        """Geometry, K, P and the chunk bounds: nc chunks of near-equal image counts, nc a multiple
        of CHUNK_MULTIPLE (at most N) so that the threads get equal shares, or one image each for
        K <= ONE_IMAGE_MAX_K; the bounds never depend on the number of threads, so neither do the
        results."""
        N, C, H, W = x_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h, out_w = conv_out_size(H, kh, sh, ph), conv_out_size(W, kw, sw, pw)
        K, P = C * kh * kw, out_h * out_w
        nc = -(-N * K * P // CHUNK_ELEMENTS)
        nc = min(N, -(-nc // CHUNK_MULTIPLE) * CHUNK_MULTIPLE)
        if K <= ONE_IMAGE_MAX_K:
            nc = N
        bounds = [i * N // nc for i in range(nc + 1)] if nc else [0]
        return (kh, kw, sh, sw, ph, pw, out_h, out_w), K, P, bounds

    def _forward_cpu(self, x, train):
        from ..kernels import conv_cpu
        x = np.ascontiguousarray(x)
        N = x.shape[0]
        geo, K, P, bounds = self._chunks(x.shape)
        out_h, out_w = geo[6], geo[7]
        nc, G = len(bounds) - 1, -(-N // max(len(bounds) - 1, 1))   # chunks, most images in one
        C_out = self.out_channels
        # The bias rides in the GEMM: a row of ones under the columns, b as an extra weight column
        # (K + 1 = Kb rows; no separate pass adds b, and backward's GEMM yields db in its last row).
        Kb = K + 1 if "b" in self.params else K
        w2 = self.params["w"].reshape(C_out, K)
        if Kb > K:
            w2 = np.concatenate([w2, self.params["b"][:, None]], axis=1)
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
                n0, g = bounds[c], bounds[c + 1] - bounds[c]
                if keep:
                    cols = all_cols[n0 * Kb * P:(n0 + g) * Kb * P].reshape(Kb, g * P)
                else:
                    cols = bufs[t, :Kb * g * P].reshape(Kb, g * P)
                conv_cpu.im2col_chunk(x, n0, g, *geo, cols)    # rows 0 .. K-1
                cols[K:] = 1                                    # the bias row, if any
                if g == 1:                                      # the GEMM output is y[n0] itself
                    np.matmul(w2, cols, out=y[n0])
                else:                                           # (C_out, g*P) -> y[n0:n0+g]
                    y2 = y2bufs[t, :C_out * g * P].reshape(C_out, g * P)
                    np.matmul(w2, cols, out=y2)
                    conv_cpu.chunk_to_nchw(y2, n0, g, y)
        run_parts(forward, parts)
        self.cache = ("x", x, all_cols) if train else None
        return y.reshape(N, C_out, out_h, out_w)

    def _backward_cpu(self, dy):
        from ..kernels import conv_cpu
        _, x, all_cols = self.cache                     # all_cols: the forward's columns, or None
        N = x.shape[0]
        geo, K, P, bounds = self._chunks(x.shape)
        nc, G = len(bounds) - 1, -(-N // max(len(bounds) - 1, 1))
        C_out = self.out_channels
        Kb = K + 1 if "b" in self.params else K         # with the forward's row of ones (bias)
        dy = np.ascontiguousarray(dy, dtype=x.dtype).reshape(N, C_out, P)
        w2 = self.params["w"].reshape(C_out, K)
        # dw (and db, the ones row's product) as one partial sum per chunk, added in chunk order
        # below (deterministic, and the same for any number of threads). Transposed (Kb, C_out):
        # OpenBLAS runs cols @ dy2.T 10-20% faster here than dy2 @ cols.T.
        dw_parts = np.empty((max(nc, 1), Kb, C_out), dtype=x.dtype)
        dx = np.empty(x.shape, dtype=x.dtype) if self.needs_input_grad else None
        parts = parts_for(nc, N * K * P)
        # one chunk's cols (rebuilt), then its dcols; only dcols when the forward kept the cols
        bufs = np.empty((parts, Kb * G * P), dtype=x.dtype) if all_cols is None or dx is not None else None
        dy2bufs = np.empty((parts, C_out * G * P), dtype=x.dtype) if G > 1 else None

        def backward(t):
            c0, c1 = split(nc, parts, t)
            for c in range(c0, c1):
                n0, g = bounds[c], bounds[c + 1] - bounds[c]
                if all_cols is not None:
                    cols = all_cols[n0 * Kb * P:(n0 + g) * Kb * P].reshape(Kb, g * P)
                else:
                    cols = bufs[t, :Kb * g * P].reshape(Kb, g * P)
                    conv_cpu.im2col_chunk(x, n0, g, *geo, cols)  # rebuilt from x
                    cols[K:] = 1
                if g == 1:
                    dy2 = dy[n0]
                else:
                    dy2 = dy2bufs[t, :C_out * g * P].reshape(C_out, g * P)
                    conv_cpu.nchw_to_chunk(dy, n0, g, dy2)
                # dw[o, k] = sum over the chunk's columns of cols[k, col] * dy2[o, col]; row K: db
                np.matmul(cols, dy2.T, out=dw_parts[c])
                if dx is not None:                              # dcols into the chunk's buffer
                    dcols = bufs[t, :K * g * P].reshape(K, g * P)
                    np.matmul(w2.T, dy2, out=dcols)
                    conv_cpu.col2im_chunk(dcols, n0, g, *geo, dx)
        run_parts(backward, parts)
        self.cache = ("x", x, None)                     # the columns are freed (rebuilt if called again)
        if nc == 0:                                             # an empty batch
            dw_parts[0] = 0
        dw_t = dw_parts[0]
        for c in range(1, nc):
            dw_t += dw_parts[c]
        if Kb > K:
            self.grads["b"] = dw_t[K].copy()
        self.grads["w"] = np.ascontiguousarray(dw_t[:K].T).reshape(self.params["w"].shape)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'b' in self.params}")
