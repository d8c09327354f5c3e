"""Sigmoid and binary cross-entropy from logits, the reference, plain xp.

With p = sigmoid(z) and an optional positive weight w_k per attribute (column):
    loss = -mean( w * t * log(p) + (1 - t) * log(1 - p) )
computed from the logits as  (1 - t) * z + (1 + (w - 1) * t) * (log1p(exp(-|z|)) + max(-z, 0)),
which never takes exp of a large positive number nor log of 0 (the same form as PyTorch's).
d loss / d z = (p * (1 + (w - 1) * t) - w * t) / (N * K), which is (p - t) / (N * K) when w = 1.
"""
from typing import NamedTuple

from ..backend import get_array_module


def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: exp is only ever taken of -|z|."""
    xp = get_array_module(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


class BCESaved(NamedTuple):
    z: object
    t: object               # the targets in z's dtype
    weight: object          # 1 + (w - 1) * t, or None without pos_weight
    pos_weight: object      # w (K,) on z's device, or None


def bce_forward(z, t, pos_weight=None):
    """-> (the mean loss as a 0-d array on z's device, BCESaved)."""
    xp = get_array_module(z)
    t = t.astype(z.dtype)
    softplus_neg = xp.log1p(xp.exp(-xp.abs(z))) + xp.maximum(-z, 0)   # = -log(sigmoid(z))
    if pos_weight is None:
        weight = None
        elementwise = (1 - t) * z + softplus_neg
    else:
        weight = 1 + (pos_weight - 1) * t
        elementwise = (1 - t) * z + weight * softplus_neg
    return elementwise.mean(), BCESaved(z, t, weight, pos_weight)


def bce_backward(saved):
    """d loss / d z."""
    z, t, weight, w = saved
    p = sigmoid(z)
    dz = p - t if weight is None else p * weight - w * t
    return dz / z.size
