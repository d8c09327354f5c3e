"""The one layer contract every layer follows.

A layer holds three dicts:
    params   trainable arrays, updated by an optimizer
    grads    same keys as params, written (not accumulated) by ``backward``
    buffers  non-trainable state saved with the model (BatchNorm's running statistics)
``forward(x, train=True) -> y`` keeps the small cache that backward needs on the layer
(overwritten each call, never appended); ``backward(dy) -> dx`` reads it.
"""
from ..backend import get_array_module, to_device


class Layer:
    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.name = None  # given by Sequential: "conv2d", "conv2d_1", ...

    def forward(self, x, train=True):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def output_shape(self, input_shape):
        """Shape of one sample's output, given one sample's input shape (no batch axis)."""
        return input_shape

    def num_params(self):
        return sum(int(p.size) for p in self.params.values())

    def to(self, device):
        """Move params, grads and buffers to 'cpu' or 'gpu' (in place; returns self)."""
        for d in (self.params, self.grads, self.buffers):
            for k, v in d.items():
                d[k] = to_device(v, device)
        self.clear_cache()
        return self

    def astype(self, dtype):
        """Cast params and buffers to ``dtype`` (float64 for gradient checks)."""
        for d in (self.params, self.buffers):
            for k, v in d.items():
                d[k] = v.astype(dtype)
        self.grads.clear()
        self.clear_cache()
        return self

    def clear_cache(self):
        """Drop what forward kept for backward (frees memory between steps)."""
        self.cache = None

    def zero_grads(self):
        for k, p in self.params.items():
            self.grads[k] = get_array_module(p).zeros_like(p)

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def pair(v, what="value"):
    """An int or a pair -> a tuple of two ints (kernel sizes, strides, paddings)."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    return v


def conv_out_size(size, k, stride, pad):
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    out = (size + 2 * pad - k) // stride + 1
    if out < 1:
        raise ValueError(f"window {k} with stride {stride} and padding {pad} does not fit an input of size {size}")
    return out
