"""2-D convolution (NCHW, weights KCRS); the math is in tinyconv/ops/conv.py."""
from .. import ops
from ..backend import DEFAULT_DTYPE, get_array_module
from ..init import initialize
from ..ops.conv import col2im, im2col  # noqa: F401  (public: tinyconv.layers.im2col, col2im)
from ..ops.geometry import geometry
from .base import Layer, pair


class Conv2D(Layer):
    """2-D convolution: y[n, o] = sum over c, i, j of w[o, c, i, j] * x_pad[n, c, p*sh + i, q*sw + j] + b[o].

    x (N, C_in, H, W) -> y (N, C_out, out_h, out_w), out = (size + 2*pad - k) // stride + 1.
    params: w (C_out, C_in, kh, kw), b (C_out,). Computed as im2col + one GEMM
    (tinyconv/ops/conv.py); saves the column matrix of x for backward (the numba and CUDA
    versions save x itself, by reference, as Dense does: do not modify x in place before backward).
    ``needs_input_grad = False`` (for a first layer, whose input is the images) makes backward
    skip dx and return None.
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

    def output_shape(self, input_shape):
        if input_shape[0] != self.in_channels:
            raise ValueError(f"{self.name or 'Conv2D'} expects {self.in_channels} input channels, "
                             f"got {input_shape[0]}")
        g = geometry((1,) + tuple(input_shape), self.kernel_size, self.stride, self.padding)
        return (self.out_channels, g.out_h, g.out_w)

    def forward(self, x, train=True):
        y, self.cache = ops.conv2d_forward(x, self.params, train, self.stride, self.padding)
        return y

    def backward(self, dy, accumulate=False):
        return ops.conv2d_backward(self.saved(), dy, self.params, self.grads, self.needs_input_grad, accumulate)

    def saved_bytes(self, x_shape, dtype, device):
        return ops.conv2d_saved_bytes(x_shape, self.params["w"].shape, self.stride, self.padding, dtype, device)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'b' in self.params}")
