"""The default model as a whole: size, summary, gradients, learning, state dicts, CPU/GPU parity."""
import numpy as np
import pytest

from tinyconv import Adam, BCEWithLogits, seed_cnn, to_device
from tinyconv.models import build_model


def test_parameter_count_and_summary():
    model = seed_cnn()
    assert model.num_params() == 463_875
    text = model.summary(print_fn=None)
    assert "Trainable params: 463,875" in text
    assert "(N, 32, 218, 178)" in text and "(N, 192, 6, 5)" in text and "(N, 3)" in text


def test_forward_backward_shapes_and_dtypes():
    model = seed_cnn(input_shape=(3, 54, 44))
    x = np.random.default_rng(0).random((4, 3, 54, 44), dtype=np.float32)
    y = model.forward(x)
    assert y.shape == (4, 3) and y.dtype == np.float32
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == np.float32
    for params, grads in model.parameters():
        for k, p in params.items():
            assert grads[k].shape == p.shape and grads[k].dtype == np.float32, k


def test_backward_writes_gradients_in_place_and_accumulate_adds(xp):
    """Gradient memory has one owner: backward writes into the arrays already in ``grads`` (it never
    replaces them), and ``accumulate=True`` adds, as the micro-batches of one step do. Two halves of a
    batch accumulated give the whole batch's weight gradients (BatchNorm aside, which normalises each
    half with its own statistics: checked on a model without it)."""
    from tinyconv import Conv2D, Dense, GlobalAvgPool2D, MaxPool2D, ReLU, Sequential
    rng = np.random.default_rng(2)
    model = Sequential([Conv2D(3, 4, 3, padding=1, rng=rng), ReLU(), MaxPool2D(2), GlobalAvgPool2D(),
                        Dense(4, 3, rng=rng)]).astype(np.float64).to("gpu" if xp is not np else "cpu")
    x = xp.asarray(rng.random((6, 3, 8, 6)))
    dy = xp.asarray(rng.standard_normal((6, 3)))
    model.forward(x)
    model.backward(dy)
    whole = [{k: g.copy() for k, g in grads.items()} for _, grads in model.parameters()]
    arrays = [dict(grads) for _, grads in model.parameters()]
    model.forward(x[:2])
    model.backward(dy[:2])
    model.forward(x[2:])
    model.backward(dy[2:], accumulate=True)
    for (_, grads), before, want in zip(model.parameters(), arrays, whole):
        for k in want:
            assert grads[k] is before[k], k                        # the same array, written in place
            np.testing.assert_allclose(to_device(grads[k], "cpu"), to_device(want[k], "cpu"),
                                       rtol=1e-12, atol=1e-14)


def test_seeded_weights_are_reproducible_and_seeds_differ():
    a, b, c = seed_cnn(seed=3), seed_cnn(seed=3), seed_cnn(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["conv2d.w"], sc["conv2d.w"])
    # He normal: std of the first conv's weights near sqrt(2 / (3*3*3))
    assert abs(sa["conv2d_4.w"].std() / np.sqrt(2 / (128 * 9)) - 1) < 0.02


def test_whole_model_gradient_check_float64():
    """A sample of every parameter array's entries against central differences (dropout off).

    Layer by layer the checks keep inputs off kinks; a whole network cannot: a perturbation of an
    early weight moves thousands of ReLU inputs and max-pool candidates, and one of them may cross
    a kink. Such entries are recognised (the one-sided slopes disagree) and skipped; at most a few
    may be, and every other entry must agree to 1e-6 of the array's largest gradient.
    """
    rng = np.random.default_rng(1)
    model = seed_cnn(input_shape=(3, 32, 32), width=0.125, dropout=0.0, seed=2).astype(np.float64)
    x = rng.random((3, 3, 32, 32))
    t = (rng.random((3, 3)) > 0.5).astype(np.float64)
    loss = BCEWithLogits()

    def f():
        return loss.forward(model.forward(x), t)

    base = f()
    model.backward(loss.backward())
    h, checked, skipped = 1e-6, 0, 0
    for layer in model.layers:
        for k, p in layer.params.items():
            analytic = layer.grads[k].reshape(-1)
            scale = np.abs(analytic).max()
            flat = p.reshape(-1)
            for i in rng.choice(p.size, size=min(p.size, 12), replace=False):
                old = flat[i]
                flat[i] = old + h
                up = f()
                flat[i] = old - h
                down = f()
                flat[i] = old
                right, left = (up - base) / h, (base - down) / h
                if abs(right - left) > 1e-3 * max(scale, 1e-12) + 1e-6:   # a kink between x-h and x+h
                    skipped += 1
                    continue
                checked += 1
                numeric = (up - down) / (2 * h)
                if layer.name.startswith("conv2d") and k == "b":
                    # A bias right before BatchNorm is removed by its mean: the gradient is exactly 0.
                    assert abs(analytic[i]) < 1e-12 and abs(numeric) < 1e-8
                else:
                    assert abs(analytic[i] - numeric) < 1e-6 * scale, (layer.name, k, i, analytic[i], numeric)
    assert skipped <= 0.1 * (checked + skipped), (checked, skipped)


def test_overfits_a_few_images():
    rng = np.random.default_rng(2)
    model = seed_cnn(input_shape=(3, 32, 32), seed=1)
    x = rng.random((8, 3, 32, 32), dtype=np.float32)
    t = (rng.random((8, 3)) > 0.5).astype(np.float32)
    loss, opt = BCEWithLogits(), Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        value = loss.forward(model.forward(x), t)
        first = value if first is None else first
        model.backward(loss.backward())
        opt.step()
    final = loss.forward(model.forward(x, train=False), t)
    assert final < first / 10, (first, final)


def test_state_dict_round_trip_and_errors():
    a, b = seed_cnn(input_shape=(3, 32, 32), seed=1), seed_cnn(input_shape=(3, 32, 32), seed=2)
    a.layers[1].buffers["running_mean"][:] = 0.5
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(a.forward(x, train=False), b.forward(x, train=False))
    state = a.state_dict()
    state["conv2d.w"] = state["conv2d.w"][:, :2]
    with pytest.raises(ValueError, match="conv2d.w"):
        b.load_state_dict(state)
    del state["conv2d.w"]
    with pytest.raises(ValueError, match="missing.*conv2d.w"):
        b.load_state_dict(state)


def test_build_model_from_config():
    a = seed_cnn(input_shape=(3, 54, 44), width=0.5, seed=7)
    b = build_model(a.config)
    assert b.num_params() == a.num_params()
    assert all(np.array_equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_width_scales_channels():
    assert seed_cnn(width=2.0).num_params() > 3 * seed_cnn().num_params()


@pytest.mark.gpu
def test_gpu_training_step_matches_cpu(xp, monkeypatch):
    """The plain CuPy path (CUDA kernels off; tests/test_kernels_gpu.py covers them) against NumPy."""
    if xp is np:
        pytest.skip("parity needs the GPU")
    from parity import assert_states_close, train_steps
    from tinyconv import ops
    monkeypatch.setattr(ops, "CUDA", False)
    rng = np.random.default_rng(4)
    x = rng.random((4, 3, 54, 44), dtype=np.float32)
    t = (rng.random((4, 3)) > 0.5).astype(np.float32)
    results = {}
    for device in ("cpu", "gpu"):
        model = seed_cnn(input_shape=(3, 54, 44), seed=5).to(device)
        results[device] = train_steps(model, to_device(x, device), to_device(t, device))
    np.testing.assert_allclose(results["gpu"][0], results["cpu"][0], rtol=1e-4)
    assert_states_close(results["gpu"][1], results["cpu"][1])


def test_summary_of_a_hand_built_model_says_where_the_input_shape_goes():
    """A newcomer's tc.Sequential([...]) has no input shape: the error names both places to give it,
    and following its advice works."""
    import pytest
    from tinyconv import Conv2D, Flatten, ReLU, Sequential
    model = Sequential([Conv2D(3, 4, 3, padding=1), ReLU(), Flatten()])
    with pytest.raises(ValueError) as err:
        model.summary(print_fn=None)
    assert "summary(input_shape=" in str(err.value) and "Sequential([...], input_shape=" in str(err.value)
    text = model.summary(input_shape=(3, 8, 6), print_fn=None)
    assert "(N, 4, 8, 6)" in text and "Trainable params: 112" in text
    built = Sequential([Conv2D(3, 4, 3, padding=1), ReLU(), Flatten()], input_shape=(3, 8, 6))
    assert "(N, 192)" in built.summary(print_fn=None)


# --- a stored config and state dict are untrusted input -----------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"width": 0.25, "num_outputs": 5, "input_shape": (1, 40, 32)},
                                    {"width": 2.0, "num_outputs": 40}, {"width": 0.01}])
def test_state_shapes_from_the_config_are_the_built_models(kwargs):
    from tinyconv.models import STATE_SHAPES
    model = seed_cnn(**kwargs)
    shapes = STATE_SHAPES["seed"](**model.config)
    assert list(shapes.items()) == [(k, v.shape) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("key, value, match", [
    ("width", 1e5, r"width must be a number in \(0, 8\], got 100000.0"),
    ("width", 20, r"width must be .*, got 20"),
    ("width", 0, "width must be"), ("width", float("nan"), "width must be"), ("width", "1", "width must be"),
    ("width", True, "width must be"),
    ("num_outputs", 0, r"num_outputs must be an integer in \[1, 40\], got 0"), ("num_outputs", 41, "num_outputs"),
    ("num_outputs", 2.5, "num_outputs"),
    ("input_shape", [3, 16, 16], r"input_shape must be \[C, H, W\] .*got \[3, 16, 16\]"),
    ("input_shape", [3, 10**6, 10**6], "input_shape"), ("input_shape", [3, 218], "input_shape"),
    ("input_shape", [64, 218, 178], "input_shape"), ("input_shape", "3x218x178", "input_shape"),
    ("dropout", 1.0, r"dropout must be a number in \[0, 1\), got 1.0"), ("dropout", -0.1, "dropout"),
    ("init", "zeros", "init must be one of he_normal"), ("seed", -1, "seed must be"), ("seed", 1.5, "seed"),
    ("depth", 50, "unknown key 'depth'"), ("architecture", "resnet", "unknown architecture 'resnet'"),
])
def test_build_model_checks_the_config_before_allocating(key, value, match):
    config = {**seed_cnn(input_shape=(3, 32, 32), width=0.125).config, key: value}
    with pytest.raises(ValueError, match=f"model config: {match}"):
        build_model(config)
    del config[key]
    if key not in ("architecture", "depth"):
        with pytest.raises(ValueError, match=f"model config: no '{key}'"):
            build_model(config)
    with pytest.raises(ValueError, match="model config: expected a dict, got list"):
        build_model([1, 2])


def test_check_state_fits_lists_mismatches_without_building_the_model():
    import tracemalloc
    from tinyconv.models import check_state_fits
    small = seed_cnn(input_shape=(3, 32, 32), width=0.125, seed=1)
    state = small.state_dict()
    check_state_fits(small.config, state)
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"the weights do not fit the recorded model: conv2d.w has shape "
                                         r"\(4, 3, 3, 3\), the model expects \(256, 3, 3, 3\);"):
        check_state_fits({**small.config, "width": 8}, state)          # the model would be ~118 MB
    assert tracemalloc.get_traced_memory()[1] < 1e6
    tracemalloc.stop()
    bad = dict(state, extra=np.zeros(1, np.float32))
    del bad["dense.b"]
    bad["dense.w"] = bad["dense.w"].astype(np.int32)
    bad["conv2d_1.w"] = bad["conv2d_1.w"].copy()
    bad["conv2d_1.w"][0, 0, 0, 0] = np.inf
    bad["batchnorm2d.running_var"] = -bad["batchnorm2d.running_var"]
    bad["batchnorm2d.gamma"] = 1.0
    with pytest.raises(ValueError) as err:
        check_state_fits(small.config, bad)
    parts = ("missing dense.b", "unexpected extra", "batchnorm2d.gamma is a float, not an array",
             "batchnorm2d.running_var holds negative variances", "conv2d_1.w holds NaN or infinity")
    assert str(err.value).endswith("; ".join(parts) + " (and 1 more)")          # dense.w's int32 is the 6th
    del bad["batchnorm2d.gamma"], bad["extra"]
    with pytest.raises(ValueError, match="dense.w has dtype int32, the model expects floats"):
        check_state_fits(small.config, bad)
