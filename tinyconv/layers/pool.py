"""Max pooling (floor mode) and global average pooling; the math is in tinyconv/ops/pool.py."""
from .. import ops
from ..ops.geometry import geometry
from .base import Layer, pair


class MaxPool2D(Layer):
    """Max pooling, floor mode: out = (size - k) // stride + 1; stride defaults to the kernel size.

    x (N, C, H, W) -> y (N, C, out_h, out_w). Saves, per output, the offset (0 .. kh*kw-1,
    row-major inside the window) of the first maximum: backward sends dy there and nowhere else,
    as PyTorch does on ties. Rows and columns that floor mode drops get zero gradient.
    """

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride if stride is not None else kernel_size, "stride")

    def output_shape(self, input_shape):
        g = geometry((1,) + tuple(input_shape), self.kernel_size, self.stride)
        return (g.C, g.out_h, g.out_w)

    def forward(self, x, train=True):
        y, self.cache = ops.maxpool_forward(x, self.kernel_size, self.stride, train)
        return y

    def backward(self, dy, accumulate=False):
        return ops.maxpool_backward(self.saved(), dy)

    def saved_bytes(self, x_shape, dtype, device):
        return ops.maxpool_saved_bytes(x_shape, self.kernel_size, self.stride, dtype, device)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: x (N, C, H, W) -> y (N, C). dx = dy / (H*W) at every position."""

    def output_shape(self, input_shape):
        return (input_shape[0],)

    def forward(self, x, train=True):
        y, self.cache = ops.global_avg_pool_forward(x)
        return y

    def backward(self, dy, accumulate=False):
        return ops.global_avg_pool_backward(self.saved(), dy)
