"""BatchNorm folding: the folded ops compute what the trained model computes in inference mode."""
import numpy as np
import pytest

from tinyconv import BatchNorm2D, Conv2D, ReLU, Sequential, seed_cnn
from tinyconv.export.fold import fold_model, run_folded
from test_export_helpers import trained_like_model


def test_folded_ops_match_the_model_and_drop_batchnorm_and_dropout():
    model = trained_like_model(54, 44)
    ops = fold_model(model)
    assert [op["op"] for op in ops] == ["conv", "relu", "maxpool"] * 5 + ["gap", "dense"]
    x = np.random.default_rng(1).random((4, 3, 54, 44), dtype=np.float32)
    logits = model.forward(x, train=False)
    np.testing.assert_allclose(run_folded(ops, x), logits, atol=2e-5, rtol=0)


def test_folding_changes_the_weights_by_the_batchnorm_formula():
    # hand-computed: one conv channel, w = 2, b = 1; BN gamma 3, beta 0.5, mean 1, var 3, eps 1
    conv = Conv2D(1, 1, 1, rng=np.random.default_rng(0))
    conv.params["w"][:] = 2.0
    conv.params["b"][:] = 1.0
    bn = BatchNorm2D(1, eps=1.0)
    bn.params["gamma"][:], bn.params["beta"][:] = 3.0, 0.5
    bn.buffers["running_mean"][:], bn.buffers["running_var"][:] = 1.0, 3.0
    from tinyconv import Dense, GlobalAvgPool2D
    ops = fold_model(Sequential([conv, bn, ReLU(), GlobalAvgPool2D(), Dense(1, 1, rng=np.random.default_rng(0))]))
    # s = 3 / sqrt(3 + 1) = 1.5;  w' = 2 * 1.5 = 3;  b' = (1 - 1) * 1.5 + 0.5 = 0.5
    assert ops[0]["w"].ravel().tolist() == [3.0] and ops[0]["b"].tolist() == [0.5]
    assert ops[0]["w"].dtype == np.float32


def test_batchnorm_without_a_conv_before_it_is_refused():
    from tinyconv import Dense, GlobalAvgPool2D
    model = Sequential([BatchNorm2D(3), GlobalAvgPool2D(), Dense(3, 1)])
    with pytest.raises(ValueError, match="right after a Conv2D"):
        fold_model(model)


def test_an_untrained_batchnorm_is_not_silently_assumed():
    # The fold must read the running statistics: with them reset, the result must differ.
    model = trained_like_model(54, 44)
    plain = seed_cnn(input_shape=(3, 54, 44), seed=0)
    plain.layers[-1].params["b"][:] = model.layers[-1].params["b"]
    x = np.random.default_rng(2).random((2, 3, 54, 44), dtype=np.float32)
    assert np.abs(run_folded(fold_model(plain), x) - model.forward(x, train=False)).max() > 1e-2
