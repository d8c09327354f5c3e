"""Fully connected, the reference, plain xp: y = x @ w + b, x (N, in), w (in, out), b (out,).

Backward: dw = x.T @ dy, db = sum_n dy, dx = dy @ w.T. Saves x.
"""
from typing import NamedTuple

from .grads import store_grad


class DenseSaved(NamedTuple):
    x: object               # (N, in_features), by reference


def dense_forward(x, params, train):
    y = x @ params["w"]
    if "b" in params:
        y += params["b"]
    return y, (DenseSaved(x) if train else None)


def dense_backward(saved, dy, params, grads, accumulate=False):
    store_grad(grads, "w", saved.x.T @ dy, accumulate)
    if "b" in params:
        store_grad(grads, "b", dy.sum(axis=0), accumulate)
    return dy @ params["w"].T


def dense_saved_bytes(x_shape, itemsize):
    """x, by reference: nothing of its own."""
    return 0
