"""Sigmoid + binary cross-entropy for multi-label outputs, fused for stability."""
from .backend import get_array_module


def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: exp is only ever taken of -|z|."""
    xp = get_array_module(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


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
        xp = get_array_module(logits)
        if logits.shape != targets.shape:
            raise ValueError(f"logits {logits.shape} and targets {targets.shape} differ in shape")
        from .kernels.common_gpu import use_gpu_kernels
        if use_gpu_kernels(logits):      # one CUDA pass for the loss terms and the gradient
            from .kernels import loss_gpu
            w = None if self.pos_weight is None else self._weight(xp, logits.dtype)
            loss, dz = loss_gpu.bce_with_logits(logits, targets, w)
            self.cache = ("gpu", dz)
            return loss
        z, t = logits, targets.astype(logits.dtype)
        softplus_neg = xp.log1p(xp.exp(-xp.abs(z))) + xp.maximum(-z, 0)   # = -log(sigmoid(z))
        if self.pos_weight is None:
            weight = None
            elementwise = (1 - t) * z + softplus_neg
        else:
            w = self._weight(xp, z.dtype)
            weight = 1 + (w - 1) * t
            elementwise = (1 - t) * z + weight * softplus_neg
        self.cache = (z, t, weight)
        return elementwise.mean()

    def forward(self, logits, targets):
        """The mean loss as a Python float."""
        return float(self.forward_array(logits, targets))

    __call__ = forward

    def backward(self):
        if self.cache is None:
            raise RuntimeError("BCEWithLogits.backward called without a forward before it")
        if isinstance(self.cache[0], str):   # ("gpu", dz): the CUDA pass computed it with the loss
            return self.cache[1]
        z, t, weight = self.cache
        p = sigmoid(z)
        if weight is None:
            dz = p - t
        else:
            w = self._weight(get_array_module(z), z.dtype)
            dz = p * weight - w * t
        return dz / z.size
