"""The one layer contract every layer follows.

A layer holds three dicts:
    params   trainable arrays, updated by an optimizer
    grads    same keys as params, written by ``backward`` (into the arrays already there: see
             tinyconv/ops/grads.py; ``accumulate=True`` adds instead, for micro-batches)
    buffers  non-trainable state saved with the model (BatchNorm's running statistics)
``forward(x, train=True) -> y`` keeps what backward needs in ``self.cache`` (the op's saved state,
overwritten each call, never appended); ``backward(dy, accumulate=False) -> dx`` reads it. The math
is in the ops (tinyconv/ops/): a layer holds the state and calls its op.
"""
from ..backend import get_array_module, to_device
from ..ops.geometry import conv_out_size  # noqa: F401  (the one geometry helper, re-exported)


class Layer:
    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.name = None  # given by Sequential: "conv2d", "conv2d_1", ...
        self.cache = None

    def forward(self, x, train=True):
        raise NotImplementedError

    def backward(self, dy, accumulate=False):
        raise NotImplementedError

    def output_shape(self, input_shape):
        """Shape of one sample's output, given one sample's input shape (no batch axis)."""
        return input_shape

    def saved_bytes(self, x_shape, dtype, device):
        """Bytes a training forward on a batch of ``x_shape`` keeps for backward, beyond the input and
        output (as its op, run for ``dtype`` on ``device``, states)."""
        return 0

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

    def saved(self):
        """The cache, for backward; an error naming the layer when there is none."""
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward(train=True) before it")
        return self.cache

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
