"""Adam and SGD against hand-worked steps (and PyTorch's optimizers where installed)."""
import math

import numpy as np
import pytest

from tinyconv import SGD, Adam, to_cpu


def scalar_problem(xp, value=1.0):
    params = {"w": xp.asarray([value], dtype=xp.float64)}
    grads = {}
    return [(params, grads)], params, grads


def test_adam_three_steps_by_hand(xp):
    pairs, params, grads = scalar_problem(xp)
    opt = Adam(pairs, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    # Written out step by step: m, v, bias corrections, update.
    p, m, v = 1.0, 0.0, 0.0
    expected = []
    for t, g in enumerate([0.5, -0.25, 0.1], start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.999 ** t)
        p = p - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
        expected.append(p)
    # Step 1 in closed form: m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps).
    assert expected[0] == pytest.approx(1 - 0.1 * 0.5 / (0.5 + 1e-8), abs=1e-15)
    for g, want in zip([0.5, -0.25, 0.1], expected):
        grads["w"] = xp.asarray([g], dtype=xp.float64)
        opt.step()
        assert float(to_cpu(params["w"])[0]) == pytest.approx(want, abs=1e-14)
    assert opt.t == 3
    assert float(to_cpu(opt.m[0]["w"])[0]) == pytest.approx(m, abs=1e-15)
    assert float(to_cpu(opt.v[0]["w"])[0]) == pytest.approx(v, abs=1e-15)


def test_sgd_momentum_by_hand(xp):
    pairs, params, grads = scalar_problem(xp)
    opt = SGD(pairs, lr=0.1, momentum=0.9)
    # buf: 1, 0.9*1 + 2 = 2.9 ; p: 1 - 0.1 = 0.9, 0.9 - 0.29 = 0.61
    for g, want in [(1.0, 0.9), (2.0, 0.61)]:
        grads["w"] = xp.asarray([g], dtype=xp.float64)
        opt.step()
        assert float(to_cpu(params["w"])[0]) == pytest.approx(want, abs=1e-14)
    plain = SGD(scalar_problem(xp)[0], lr=0.5)
    plain.parameters[0][1]["w"] = xp.asarray([2.0])
    plain.step()
    assert float(to_cpu(plain.parameters[0][0]["w"])[0]) == pytest.approx(0.0)


def test_adam_updates_in_place_and_lr_is_settable():
    pairs, params, grads = scalar_problem(np)
    array = params["w"]
    opt = Adam(pairs, lr=0.1)
    grads["w"] = np.array([1.0])
    opt.lr = 0.01
    opt.step()
    assert params["w"] is array                      # same array object: updated in place
    assert array[0] == pytest.approx(1 - 0.01, rel=1e-6)


@pytest.mark.parametrize("cls,kw", [(Adam, {}), (SGD, {"lr": 0.1, "momentum": 0.9})])
def test_state_round_trip_continues_identically(cls, kw):
    rng = np.random.default_rng(0)
    grads_seq = [rng.standard_normal(4) for _ in range(6)]

    def run(split):
        pairs, params, grads = scalar_problem(np)
        params["w"] = np.ones(4)
        opt = cls(pairs, **kw)
        for i, g in enumerate(grads_seq):
            if i == split:   # save, rebuild the optimizer from scratch, load
                state = opt.state_dict()
                opt = cls(pairs, **kw)
                opt.load_state_dict(state)
            grads["w"] = g
            opt.step()
        return params["w"]

    np.testing.assert_array_equal(run(split=None), run(split=3))


def test_step_without_backward_is_a_clear_error():
    pairs, _, _ = scalar_problem(np)
    with pytest.raises(RuntimeError, match="call backward"):
        Adam(pairs).step()


def test_adam_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((3, 4))
    pairs, params, grads = scalar_problem(np)
    params["w"] = w0.copy()
    opt = Adam(pairs, lr=0.01, eps=1e-8)
    tw = torch.tensor(w0.copy(), requires_grad=True)
    topt = torch.optim.Adam([tw], lr=0.01, eps=1e-8)
    for _ in range(5):
        g = rng.standard_normal((3, 4))
        grads["w"] = g
        opt.step()
        tw.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(params["w"], tw.detach().numpy(), rtol=1e-10, atol=1e-12)
