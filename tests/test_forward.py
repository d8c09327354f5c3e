"""Forward passes against naive loops and hand-computed values (never the op itself)."""
import numpy as np
import pytest

from tinyconv import (BatchNorm2D, BCEWithLogits, Conv2D, Dense, Dropout, GlobalAvgPool2D, MaxPool2D,
                      ReLU, to_cpu, to_device)
from tinyconv.layers import col2im, im2col


def naive_conv(x, w, b, stride, pad):
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, pad
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out_h, out_w = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, F, out_h, out_w))
    for n in range(N):
        for f in range(F):
            for i in range(out_h):
                for j in range(out_w):
                    patch = xpad[n, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    y[n, f, i, j] = np.sum(patch * w[f]) + b[f]
    return y


def naive_maxpool(x, k, s):
    N, C, H, W = x.shape
    out_h, out_w = (H - k[0]) // s[0] + 1, (W - k[1]) // s[1] + 1
    y = np.zeros((N, C, out_h, out_w))
    for n in range(N):
        for c in range(C):
            for i in range(out_h):
                for j in range(out_w):
                    y[n, c, i, j] = x[n, c, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]].max()
    return y


@pytest.mark.parametrize("shape,c_out,k,stride,pad", [
    ((2, 3, 7, 6), 4, 3, 1, 1),
    ((1, 2, 8, 9), 3, 3, 2, 0),
    ((2, 3, 9, 7), 2, (3, 2), (2, 1), (1, 0)),
    ((1, 4, 5, 5), 2, 5, 1, 2),
])
def test_conv2d_matches_loops(xp, device, shape, c_out, k, stride, pad):
    rng = np.random.default_rng(0)
    layer = Conv2D(shape[1], c_out, k, stride=stride, padding=pad, rng=rng)
    layer.params["b"][:] = rng.standard_normal(c_out)
    x = rng.standard_normal(shape).astype(np.float32)
    expected = naive_conv(x.astype(np.float64), layer.params["w"].astype(np.float64),
                          layer.params["b"].astype(np.float64), layer.stride, layer.padding)
    y = to_cpu(layer.to(device).forward(to_device(x, device)))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_conv2d_hand_computed():
    # 1 channel, 3x3 input, 2x2 kernel of ones, no padding: each output is the sum of a 2x2 block.
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)   # [[0,1,2],[3,4,5],[6,7,8]]
    layer = Conv2D(1, 1, 2)
    layer.params["w"][:] = 1
    layer.params["b"][:] = 0.5
    np.testing.assert_array_equal(layer.forward(x)[0, 0], [[8.5, 12.5], [20.5, 24.5]])


def test_im2col_col2im_are_adjoint():
    # <im2col(x), c> == <x, col2im(c)> for all x, c: col2im is exactly the transpose of im2col.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 8))
    cols = im2col(x, 3, 2, (2, 1), (1, 1))
    c = rng.standard_normal(cols.shape)
    lhs = np.sum(cols * c)
    rhs = np.sum(x * col2im(c, x.shape, 3, 2, (2, 1), (1, 1)))
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


@pytest.mark.parametrize("shape,k,s", [((2, 3, 6, 8), 2, None), ((1, 2, 7, 5), 2, None),
                                       ((2, 2, 9, 9), 3, 2), ((1, 1, 8, 7), (3, 2), (2, 3))])
def test_maxpool_matches_loops(xp, device, shape, k, s):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    layer = MaxPool2D(k, s)
    y = to_cpu(layer.forward(to_device(x, device)))
    np.testing.assert_array_equal(y, naive_maxpool(x, layer.kernel_size, layer.stride))


def test_maxpool_ties_send_gradient_to_first_maximum(xp, device):
    x = xp.asarray(np.array([[[[1, 1], [1, 0]]]], dtype=np.float32))
    layer = MaxPool2D(2)
    layer.forward(x)
    dx = to_cpu(layer.backward(xp.ones((1, 1, 1, 1), dtype=xp.float32)))
    np.testing.assert_array_equal(dx[0, 0], [[1, 0], [0, 0]])


def test_batchnorm_hand_computed_and_running_stats(xp, device):
    # channel 0 holds 1, 2, 3, 4 over (N=2, 1x2): mean 2.5, biased var 1.25, unbiased var 5/3.
    x = np.array([[[[1, 2]], [[0, 0]]], [[[3, 4]], [[2, 2]]]], dtype=np.float32)
    layer = BatchNorm2D(2, momentum=0.1, eps=0.0).to(device)
    y = to_cpu(layer.forward(xp.asarray(x)))
    np.testing.assert_allclose(y[:, 0].ravel(), (np.array([1, 2, 3, 4]) - 2.5) / np.sqrt(1.25), rtol=1e-6)
    np.testing.assert_allclose(to_cpu(layer.buffers["running_mean"]), [0.25, 0.1], rtol=1e-6)
    np.testing.assert_allclose(to_cpu(layer.buffers["running_var"]), [0.9 + 0.1 * 5 / 3, 0.9 + 0.1 * 4 / 3],
                               rtol=1e-6)
    # inference uses the running statistics, not the batch's
    y_eval = to_cpu(layer.forward(xp.asarray(x), train=False))
    np.testing.assert_allclose(y_eval[0, 0, 0], (np.array([1, 2]) - 0.25) / np.sqrt(0.9 + 0.1 * 5 / 3), rtol=1e-6)


def test_dense_relu_gap_hand_computed(xp, device):
    layer = Dense(2, 2).to(device)
    layer.params["w"][...] = xp.asarray([[1.0, -1.0], [2.0, 0.5]])
    layer.params["b"][...] = xp.asarray([0.5, -0.5])
    y = to_cpu(layer.forward(xp.asarray([[1.0, 2.0]], dtype=xp.float32)))
    np.testing.assert_allclose(y, [[5.5, -0.5]])   # [1*1 + 2*2 + 0.5, 1*-1 + 2*0.5 - 0.5]
    np.testing.assert_array_equal(to_cpu(ReLU().forward(xp.asarray([-1.0, 0.0, 2.0]))), [0, 0, 2])
    g = GlobalAvgPool2D().forward(xp.asarray(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)))
    np.testing.assert_allclose(to_cpu(g), [[1.5, 5.5]])


def test_dropout_inverted_seeded_and_identity_at_inference():
    x = np.ones((400, 50), dtype=np.float32)
    a, b = Dropout(0.3, seed=5), Dropout(0.3, seed=5)
    ya, yb = a.forward(x), b.forward(x)
    np.testing.assert_array_equal(ya, yb)                          # seeded
    assert set(np.unique(ya)) == {0.0, np.float32(1 / 0.7)}        # inverted scaling
    assert abs((ya == 0).mean() - 0.3) < 0.01                      # 20,000 draws: sd 0.003
    assert abs(ya.mean() - 1.0) < 0.02                             # expectation preserved
    np.testing.assert_array_equal(a.forward(x, train=False), x)    # identity at inference


def test_bce_hand_computed_and_stable():
    loss = BCEWithLogits()
    # -[log sigmoid(0)] = log 2 for both targets
    assert loss.forward(np.zeros((1, 2)), np.array([[0.0, 1.0]])) == pytest.approx(np.log(2))
    z = np.array([[2.0, -1.0]])
    t = np.array([[1.0, 0.0]])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    assert loss.forward(z, t) == pytest.approx(expected, rel=1e-12)
    # large logits: no overflow, no NaN; a confident wrong answer costs |z|
    big = np.array([[1000.0, -1000.0, 1000.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        value = loss.forward(big, np.array([[1.0, 0.0, 0.0]], dtype=np.float32))
        grad = loss.backward()
    assert value == pytest.approx(1000 / 3, rel=1e-6)
    np.testing.assert_allclose(grad, [[0, 0, 1 / 3]], atol=1e-7)


def test_bce_pos_weight_hand_computed():
    loss = BCEWithLogits(pos_weight=[3.0])
    # t = 1: -3 * log sigmoid(0) = 3 log 2 ; t = 0: -log(1 - sigmoid(0)) = log 2
    assert loss.forward(np.zeros((2, 1)), np.array([[1.0], [0.0]])) == pytest.approx(2 * np.log(2))


def test_a_conv_layer_takes_an_empty_batch_and_its_gradients_are_zero():
    """N = 0 (an empty share of a batch): the layer's forward and backward run (empty arrays go to the
    reference op), and dw, db are written as zeros, not left as they were."""
    from tinyconv.layers import Conv2D
    layer = Conv2D(3, 4, 3, padding=1, rng=np.random.default_rng(0))
    layer.grads["w"] = np.ones_like(layer.params["w"])
    layer.grads["b"] = np.ones_like(layer.params["b"])
    y = layer.forward(np.zeros((0, 3, 5, 5), np.float32))
    dx = layer.backward(np.zeros_like(y))
    assert y.shape == (0, 4, 5, 5) and dx.shape == (0, 3, 5, 5)
    assert not layer.grads["w"].any() and not layer.grads["b"].any()
