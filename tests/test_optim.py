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


@pytest.mark.parametrize("cls,kw", [(Adam, {}), (Adam, {"eps_placement": "keras"}),
                                    (SGD, {"lr": 0.1, "momentum": 0.9})])
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


# --- eps where Keras puts it -------------------------------------------------------------------

def keras_adam(w0, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Keras' Adam.update_step (keras/src/optimizers/adam.py, amsgrad off), written out in float64:
    eps on sqrt(v), before bias correction, which goes into the step size alpha instead."""
    w, m, v = w0.astype(np.float64), np.zeros(w0.shape), np.zeros(w0.shape)
    for iterations, g in enumerate(grads):
        local_step = iterations + 1
        beta_1_power, beta_2_power = beta_1 ** local_step, beta_2 ** local_step
        alpha = lr * np.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m += (g - m) * (1 - beta_1)
        v += (np.square(g) - v) * (1 - beta_2)
        w -= (m * alpha) / (np.sqrt(v) + epsilon)
    return w, m, v


def eps_problem(dtype, steps=50):
    """w (8, 10) and 50 random gradients whose columns have sizes 1e-9 ... 1: the first columns are
    at eps (1e-7) or below it, where the placement matters, the last far above it, where it does not.
    Rounded to ``dtype`` before anyone sees them, so the reference and Adam start from the same values."""
    rng = np.random.default_rng(21)
    size = 10.0 ** np.linspace(-9, 0, 10)
    w0 = rng.standard_normal((8, 10)).astype(dtype)
    grads = [(rng.standard_normal((8, 10)) * size).astype(dtype) for _ in range(steps)]
    return w0, grads, size


def run_adam(xp, w0, grads, lr, **kw):
    params, grads_d = {"w": xp.array(w0)}, {}                      # a copy: w0 is the caller's
    opt = Adam([(params, grads_d)], lr=lr, **kw)
    for g in grads:
        grads_d["w"] = xp.asarray(g)
        opt.step()
    return opt, to_cpu(params["w"])


def test_adam_keras_placement_matches_a_transcription_of_keras_in_float64(xp):
    w0, grads, size = eps_problem(np.float64)
    want, m_want, v_want = keras_adam(w0, grads, lr=1e-2)
    opt, w = run_adam(xp, w0, grads, lr=1e-2, eps_placement="keras")
    # The same arithmetic in another order: 50 updates of |w| < 4, each rounded once (half an ulp,
    # 4.4e-16), bound the difference by 2.2e-14; 1e-13 leaves room for the order of the operations
    # in a step (its rounding is relative to the step, < lr). The placements differ by up to 4e-2 here.
    assert np.abs(want).max() < 4
    np.testing.assert_allclose(w, want, rtol=0, atol=1e-13)
    # m and v as Keras keeps them (m += (g - m)(1 - b1) rounds differently from b1*m + (1-b1)*g),
    # each column in units of its gradient size
    np.testing.assert_allclose(to_cpu(opt.m[0]["w"]) / size, m_want / size, rtol=0, atol=1e-14)
    np.testing.assert_allclose(to_cpu(opt.v[0]["w"]) / size ** 2, v_want / size ** 2, rtol=0, atol=1e-14)


def test_adam_keras_placement_in_float32_through_the_default_op(xp):
    """float32, run by whichever implementation the op picks (numba on CPU, CUDA on a GPU)."""
    w0, grads, _ = eps_problem(np.float32)
    want, _, _ = keras_adam(w0, [g.astype(np.float64) for g in grads], lr=1e-2)
    _, w = run_adam(xp, w0, grads, lr=1e-2, eps_placement="keras")
    assert w.dtype == np.float32
    # 50 float32 updates of |w| < 4, each rounded (half an ulp, 2.4e-7), bound it by 1.2e-5; the step's
    # own float32 error (~1e-7 of a step < lr) adds ~5e-8 over the run. The placements differ by up to 4e-2.
    assert np.abs(want).max() < 4
    np.testing.assert_allclose(w, want, rtol=0, atol=1.2e-5)


def test_the_two_placements_differ_where_the_gradient_is_near_eps():
    w0, grads, size = eps_problem(np.float64)
    keras, _, _ = keras_adam(w0, grads, lr=1e-2)
    _, textbook = run_adam(np, w0, grads, lr=1e-2)                       # the default: Kingma & Ba
    _, named = run_adam(np, w0, grads, lr=1e-2, eps_placement="kingma-ba")
    np.testing.assert_array_equal(textbook, named)
    gap = np.abs(textbook - keras).max(axis=0)                           # per column (gradient size)
    # |g| <= 1e-6: Keras' eps (31.6x at t = 1, ~5x by t = 50) takes a large part of each step
    assert np.all(gap[size <= 1e-6] > 1e-3), gap
    # |g| >= 1e-2: a step differs by lr * m_hat * (eps_keras - eps) / (sqrt(v_hat)^2 + ...), below
    # lr * 31.6 eps / |g|; over 50 steps the placements agree to 50 * lr * 31.6e-7 / |g|
    far = size >= 1e-2
    assert np.all(gap[far] < 50 * 1e-2 * 31.6e-7 / size[far]), gap


def test_eps_placement_is_checked_and_recorded_and_old_states_mean_kingma_ba():
    pairs, params, grads = scalar_problem(np)
    with pytest.raises(ValueError, match="eps_placement 'Keras'"):
        Adam(pairs, eps_placement="Keras")
    keras = Adam(pairs, eps_placement="keras")
    assert keras.hyper()["eps_placement"] == "keras" and Adam(pairs).hyper()["eps_placement"] == "kingma-ba"
    grads["w"] = np.array([0.5])
    keras.step()
    old = Adam(pairs).state_dict()
    del old["hyper"]["eps_placement"]                     # a checkpoint written before the option
    Adam(pairs).load_state_dict(old)
    with pytest.raises(ValueError, match="saved with eps_placement 'kingma-ba', this Adam uses 'keras'"):
        Adam(pairs, eps_placement="keras").load_state_dict(old)
    with pytest.raises(ValueError, match="saved with eps_placement 'keras', this Adam uses 'kingma-ba'"):
        Adam(pairs).load_state_dict(keras.state_dict())


def test_eps_placement_survives_a_checkpoint_file(tmp_path):
    from tinyconv.checkpoint import load_checkpoint, save_checkpoint
    pairs, _, grads = scalar_problem(np)
    grads["w"] = np.array([0.5])
    opt = Adam(pairs, eps_placement="keras")
    opt.step()
    save_checkpoint(tmp_path / "c.h5", {"optimizer": opt.state_dict()})
    state = load_checkpoint(tmp_path / "c.h5")["optimizer"]
    assert state["hyper"]["eps_placement"] == "keras"
    again = Adam(pairs, eps_placement="keras")
    again.load_state_dict(state)
    assert again.t == 1
