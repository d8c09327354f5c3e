"""Sigmoid + binary cross-entropy for multi-label outputs, fused for stability; the math is in
tinyconv/ops/loss.py."""
from . import ops
from .backend import get_array_module
from .ops.loss import sigmoid

__all__ = ["BCEWithLogits", "sigmoid"]


class BCEWithLogits:
    """Mean binary cross-entropy of sigmoid(logits) against 0/1 targets, over all N*K elements.

    With p = sigmoid(z) and an optional positive weight w_k per attribute (column):
        loss = -mean( w * t * log(p) + (1 - t) * log(1 - p) )
    computed from the logits as  (1 - t) * z + (1 + (w - 1) * t) * (log1p(exp(-|z|)) + max(-z, 0)),
    which never takes exp of a large positive number nor log of 0 (the same form as PyTorch's).
    d loss / d z = (p * (1 + (w - 1) * t) - w * t) / (N * K), which is (p - t) / (N * K) when w = 1.
    ``pos_weight`` (K,) up-weights rare positives (Eyeglasses is 6.5% positive in CelebA).
    """

    def __init__(self, pos_weight=None):
        self.pos_weight = pos_weight
        self.cache = None
        self._pos_weight_on = {}   # pos_weight copied to each device once, not every step

    def _weight(self, xp, dtype):
        key = (xp.__name__, str(dtype))
        if key not in self._pos_weight_on:
            self._pos_weight_on[key] = xp.asarray(self.pos_weight, dtype=dtype)
        return self._pos_weight_on[key]

    def forward_array(self, logits, targets):
        """The loss as a 0-d array on the logits' device (no host sync: the GPU loop uses this)."""
        if logits.shape != targets.shape:
            raise ValueError(f"logits {logits.shape} and targets {targets.shape} differ in shape")
        w = None if self.pos_weight is None else self._weight(get_array_module(logits), logits.dtype)
        loss, self.cache = ops.bce_forward(logits, targets, w)
        return loss

    def forward(self, logits, targets):
        """The mean loss as a Python float."""
        return float(self.forward_array(logits, targets))

    __call__ = forward

    def backward(self):
        if self.cache is None:
            raise RuntimeError("BCEWithLogits.backward called without a forward before it")
        return ops.bce_backward(self.cache)
