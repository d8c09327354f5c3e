"""Gradient checks: every layer and the loss, float64, central differences, asserted."""
import numpy as np
import pytest

from tinyconv import (BatchNorm2D, BCEWithLogits, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                      MaxPool2D, ReLU)
from tinyconv.gradcheck import check_layer, numerical_gradient, relative_error

TOL = 1e-6          # float64 central differences with h = 1e-6 land near 1e-8 .. 1e-10
BN_TOL = 1e-5       # BatchNorm: batch statistics couple every entry, so each numeric derivative
                    # subtracts nearly equal sums; the cancellation costs about one digit.

ERRORS = {}          # layer -> worst error seen (printed at the end with -s; the note quotes it)


def record(name, errors):
    ERRORS[name] = max(ERRORS.get(name, 0.0), *errors.values())


def f64(layer):
    return layer.astype(np.float64)


@pytest.mark.parametrize("shape,c_out,k,stride,pad", [
    ((2, 3, 7, 6), 4, 3, 1, 1),
    ((2, 2, 8, 9), 3, 3, 2, 0),
    ((1, 3, 9, 7), 2, (3, 2), (2, 1), (1, 0)),
    ((2, 1, 5, 5), 2, 1, 1, 0),
    ((1, 2, 6, 7), 3, 5, 3, 2),
])
def test_conv2d(shape, c_out, k, stride, pad):
    rng = np.random.default_rng(1)
    layer = f64(Conv2D(shape[1], c_out, k, stride=stride, padding=pad, rng=rng))
    layer.params["b"][:] = rng.standard_normal(c_out)
    errors = check_layer(layer, rng.standard_normal(shape), rng)
    record("Conv2D", errors)
    assert set(errors) == {"x", "w", "b"}
    assert max(errors.values()) < TOL, errors


def distinct_values(shape, rng):
    """Entries 0.05 apart in random order: no two near-ties, so h = 1e-6 never flips an argmax."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.05 - 1.0


@pytest.mark.parametrize("shape,k,stride", [
    ((2, 3, 6, 8), 2, None),
    ((2, 2, 7, 5), 2, None),       # odd sizes: floor mode drops the last row and column
    ((1, 2, 7, 7), 3, 2),          # overlapping windows
    ((1, 1, 9, 8), (3, 2), (2, 3)),
])
def test_maxpool2d(shape, k, stride):
    rng = np.random.default_rng(2)
    errors = check_layer(MaxPool2D(k, stride), distinct_values(shape, rng), rng)
    record("MaxPool2D", errors)
    assert errors["x"] < TOL


@pytest.mark.parametrize("shape", [(4, 3, 5, 4), (2, 5, 3, 3), (8, 2, 1, 1)])
def test_batchnorm2d_train(shape):
    rng = np.random.default_rng(3)
    layer = f64(BatchNorm2D(shape[1]))
    layer.params["gamma"][:] = rng.uniform(0.5, 1.5, shape[1])
    layer.params["beta"][:] = rng.standard_normal(shape[1])
    x = rng.standard_normal(shape) * 2 + 0.5
    errors = check_layer(layer, x, rng)
    record("BatchNorm2D", errors)
    assert max(errors.values()) < BN_TOL, errors


def test_batchnorm2d_inference():
    rng = np.random.default_rng(4)
    layer = f64(BatchNorm2D(3))
    layer.buffers["running_mean"][:] = rng.standard_normal(3)
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2, 3)
    layer.params["gamma"][:] = rng.uniform(0.5, 1.5, 3)
    errors = check_layer(layer, rng.standard_normal((2, 3, 4, 4)), rng, train=False)
    record("BatchNorm2D (inference)", errors)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("n,fin,fout", [(5, 7, 3), (1, 4, 6)])
def test_dense(n, fin, fout):
    rng = np.random.default_rng(5)
    layer = f64(Dense(fin, fout, rng=rng))
    layer.params["b"][:] = rng.standard_normal(fout)
    errors = check_layer(layer, rng.standard_normal((n, fin)), rng)
    record("Dense", errors)
    assert max(errors.values()) < TOL, errors


def test_relu_off_kinks():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 5, 5))
    x = np.where(np.abs(x) < 1e-2, 0.5, x)   # nothing within 1e-2 of the kink at 0
    errors = check_layer(ReLU(), x, rng)
    record("ReLU", errors)
    assert errors["x"] < TOL


def test_dropout_with_fixed_mask():
    rng = np.random.default_rng(7)
    layer = Dropout(0.4, seed=11)
    state = layer.rng.bit_generator.state

    def same_mask():
        layer.rng.bit_generator.state = state

    errors = check_layer(layer, rng.standard_normal((6, 10)), rng, before_forward=same_mask)
    record("Dropout", errors)
    assert errors["x"] < TOL


@pytest.mark.parametrize("layer,shape", [(GlobalAvgPool2D(), (3, 4, 5, 3)), (Flatten(), (2, 3, 4, 2))])
def test_shape_layers(layer, shape):
    rng = np.random.default_rng(8)
    errors = check_layer(layer, rng.standard_normal(shape), rng)
    record(type(layer).__name__, errors)
    assert errors["x"] < TOL


@pytest.mark.parametrize("pos_weight", [None, [6.5, 1.0, 0.8]])
def test_bce_with_logits(pos_weight):
    rng = np.random.default_rng(9)
    z = rng.standard_normal((5, 3)) * 3
    t = (rng.random((5, 3)) > 0.5).astype(np.float64)
    loss = BCEWithLogits(pos_weight=pos_weight)
    loss.forward(z, t)
    analytic = loss.backward()
    # h = 1e-5: the loss is a mean near 1 whose entries' gradients can be ~1e-4, so h = 1e-6 loses
    # digits to round-off in L(z+h) - L(z-h); the O(h^2) truncation at 1e-5 is still ~1e-11.
    numeric = numerical_gradient(lambda: loss.forward(z, t), z, h=1e-5)
    err = relative_error(analytic, numeric)
    record("BCEWithLogits", {"z": err})
    assert err < TOL


def test_report_errors():
    """Runs last in this file: prints the worst error per layer (pytest -s shows it)."""
    assert ERRORS, "the gradient checks above did not run"
    for name, err in sorted(ERRORS.items()):
        print(f"gradient check  {name:<26} worst relative error {err:.2e}")
