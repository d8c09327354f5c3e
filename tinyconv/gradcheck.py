"""Numerical gradient checks by central differences (run them in float64).

For a layer with forward f, a random upstream gradient dy defines the scalar L = sum(f(x) * dy),
whose gradient is exactly what backward(dy) returns:  dL/dx = backward(dy), dL/dw = grads["w"].
Each entry is perturbed by +-h and  dL/dx_i ~ (L(x_i + h) - L(x_i - h)) / (2h),  with error O(h^2).
"""
import numpy as np


def numerical_gradient(f, x, h=1e-6, indices=None):
    """d f() / d x by central differences; ``f`` reads ``x``, which is perturbed in place and restored.

    ``indices`` (flat positions) limits the work to a sample of entries; the others stay 0.
    """
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in (range(flat.size) if indices is None else indices):
        old = flat[i]
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * h)
    return grad


def relative_error(analytic, numeric, floor=1e-10):
    """max_i |a_i - n_i| / max(|a_i| + |n_i|, floor): scale-free, and strict for every entry."""
    a, n = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    return float(np.max(np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), floor)))


def check_layer(layer, x, rng=None, h=1e-6, train=True, before_forward=None):
    """Relative errors of a layer's backward against central differences.

    Returns {"x": err, "<param>": err, ...}. ``before_forward`` (optional) is called before every
    forward, e.g. to reset a dropout generator so each evaluation draws the same mask.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    reset = before_forward or (lambda: None)
    reset()
    y = layer.forward(x, train)
    dy = rng.standard_normal(y.shape)

    def loss():
        reset()
        return float(np.sum(layer.forward(x, train) * dy))

    reset()
    layer.forward(x, train)
    dx = layer.backward(dy)
    analytic = {"x": dx, **{k: g.copy() for k, g in layer.grads.items()}}
    errors = {"x": relative_error(analytic["x"], numerical_gradient(loss, x, h))}
    for k, p in layer.params.items():
        errors[k] = relative_error(analytic[k], numerical_gradient(loss, p, h))
    return errors
