"""PyTorch as an independent oracle (skipped where torch is not installed; never a run-time need)."""
import numpy as np
import pytest

from tinyconv import Adam, BCEWithLogits, Conv2D, MaxPool2D, seed_cnn

torch = pytest.importorskip("torch")
torch.set_default_dtype(torch.float64)


def torch_replica(model):
    """The same network in torch.nn, with tinyconv's weights copied in."""
    nn = torch.nn
    mods = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
            m.weight.data = torch.tensor(layer.params["w"])
            m.bias.data = torch.tensor(layer.params["b"])
        elif kind == "BatchNorm2D":
            m = nn.BatchNorm2d(layer.channels, eps=layer.eps, momentum=layer.momentum)
            m.weight.data = torch.tensor(layer.params["gamma"])
            m.bias.data = torch.tensor(layer.params["beta"])
        elif kind == "ReLU":
            m = nn.ReLU()
        elif kind == "MaxPool2D":
            m = nn.MaxPool2d(layer.kernel_size, layer.stride)
        elif kind == "GlobalAvgPool2D":
            m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif kind == "Dropout":
            assert layer.p == 0
            continue
        elif kind == "Dense":
            m = nn.Linear(layer.in_features, layer.out_features)
            m.weight.data = torch.tensor(layer.params["w"].T.copy())
            m.bias.data = torch.tensor(layer.params["b"])
        mods.append(m)
    return nn.Sequential(*mods)


def test_three_training_steps_match_pytorch():
    rng = np.random.default_rng(0)
    model = seed_cnn(input_shape=(3, 40, 36), dropout=0.0, seed=3).astype(np.float64)
    ref = torch_replica(model)
    loss, opt = BCEWithLogits(), Adam(model.parameters(), lr=1e-3, eps=1e-8)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3, eps=1e-8)
    for step in range(3):
        x = rng.random((4, 3, 40, 36))
        t = (rng.random((4, 3)) > 0.5).astype(np.float64)
        ours = loss.forward(model.forward(x), t)
        model.backward(loss.backward())
        opt.step()
        ref_opt.zero_grad()
        theirs = torch.nn.functional.binary_cross_entropy_with_logits(ref(torch.tensor(x)), torch.tensor(t))
        theirs.backward()
        ref_opt.step()
        assert ours == pytest.approx(theirs.item(), rel=1e-10), step
    convs = [m for m in ref if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in ref if isinstance(m, torch.nn.BatchNorm2d)]
    state = model.state_dict()
    np.testing.assert_allclose(state["conv2d_2.w"], convs[2].weight.detach().numpy(), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(state["batchnorm2d_4.running_var"], bns[4].running_var.numpy(), rtol=1e-10)
    np.testing.assert_allclose(state["dense.w"], ref[-1].weight.detach().numpy().T, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 0), ((5, 3), (2, 1), (2, 1))])
def test_conv_backward_matches_pytorch(k, stride, pad):
    rng = np.random.default_rng(1)
    layer = Conv2D(3, 4, k, stride=stride, padding=pad, rng=rng).astype(np.float64)
    x = rng.standard_normal((2, 3, 11, 9))
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.params["w"], requires_grad=True)
    tb = torch.tensor(layer.params["b"], requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=layer.stride, padding=layer.padding)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["w"], tw.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_maxpool_odd_sizes_match_pytorch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 9, 7))
    layer = MaxPool2D(3, 2)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, 3, 2)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
