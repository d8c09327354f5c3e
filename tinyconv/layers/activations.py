"""ReLU and (inverted) Dropout; the math is in tinyconv/ops/activations.py."""
import numpy as np

from .. import ops
from .base import Layer


class ReLU(Layer):
    """y = max(x, 0); dx = dy where x > 0, else 0 (the subgradient 0 at x == 0). Saves the mask."""

    def forward(self, x, train=True):
        y, self.cache = ops.relu_forward(x, train)
        return y

    def backward(self, dy, accumulate=False):
        return ops.relu_backward(self.saved(), dy)

    def saved_bytes(self, x_shape, dtype, device):
        return ops.relu_saved_bytes(x_shape, dtype, device)


class Dropout(Layer):
    """Inverted dropout: in training y = x * mask / (1 - p), mask ~ Bernoulli(1 - p); identity at inference.

    The mask is drawn by a seeded NumPy Generator on the CPU and then moved to x's device, so a
    seed gives the same masks on CPU and GPU and the generator's state can be checkpointed
    (``rng.bit_generator.state``) for exact resume. Saves the scaled mask.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def forward(self, x, train=True):
        y, self.cache = ops.dropout_forward(x, self.p, self.rng, train)
        return y

    def backward(self, dy, accumulate=False):
        return ops.dropout_backward(self.cache, dy)

    def skip(self, samples, features):
        """Advance the generator past the masks of ``samples`` rows of ``features`` values each, as
        a training forward of those rows would (draws are sequential, so the masks of a batch drawn
        in pieces are the masks drawn at once). Data-parallel ranks skip the other ranks' rows, so
        every sample of a global batch gets the mask it gets in one process, whatever the number of
        ranks (tinyconv/distributed.py)."""
        if self.p > 0 and samples > 0:
            self.rng.random((int(samples), int(features)))

    def saved_bytes(self, x_shape, dtype, device):
        return ops.dropout_saved_bytes(x_shape, self.p, np.dtype(dtype).itemsize)

    def extra_repr(self):
        return f"p={self.p}"
