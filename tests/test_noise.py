"""The gradient noise scale estimator (tinyconv/noise.py) on gradient streams whose truth is known."""
import numpy as np
import pytest

from tinyconv.noise import GradientNoiseScale


def linear_regression_stream(steps, b_small, b_big, d=20, sigma=0.5, seed=0):
    """Per-example gradients of 0.5 (w.x - y)^2 at a fixed w, with x ~ N(0, I_d), y = w*.x + n,
    n ~ N(0, sigma^2), r = w - w* a unit vector: g = (x.r - n) x. Then (Gaussian moments)
        G = E g = r, so |G|^2 = 1;   E|g|^2 = |r|^2 (d + 2) + sigma^2 d;   tr(Sigma) = d + 1 + sigma^2 d.
    Yields (|G_small|^2, |G_big|^2): the small batch is the first b_small examples of the big one."""
    rng = np.random.default_rng(seed)
    r = np.zeros(d)
    r[0] = 1.0
    for _ in range(steps):
        x = rng.standard_normal((b_big, d))
        n = rng.normal(0, sigma, b_big)
        g = (x @ r - n)[:, None] * x
        yield float(np.sum(g[:b_small].mean(0) ** 2)), float(np.sum(g.mean(0) ** 2))


def test_one_pair_is_unbiased_by_the_formulas():
    # E|G_B|^2 = |G|^2 + tr/B exactly: feeding the expectations returns the truth exactly
    g2, trace = 4.0, 80.0
    est = GradientNoiseScale.estimates(g2 + trace / 8, 8, g2 + trace / 64, 64)
    assert est == pytest.approx((g2, trace))


def test_recovers_the_true_noise_scale_of_a_linear_model():
    """4000 steps, averages over about the last 1000 (beta 0.999): tr(Sigma) and |G|^2 within 10%, B_simple
    within 15%. Over 20 seeds the relative errors' standard deviations were 2.5%, 1.1% and 3.5% (largest
    4.6%, 2.3%, 6.9%): the bounds are about four standard deviations, and a wrong formula (a missing
    factor, B_small and B_big swapped) misses by far more."""
    d, sigma = 20, 0.5
    true_g2, true_trace = 1.0, d + 1 + sigma ** 2 * d
    gns = GradientNoiseScale(beta=0.999)
    for small, big in linear_regression_stream(4000, 8, 64, d=d, sigma=sigma):
        gns.update(small, 8, big, 64)
    assert gns.trace == pytest.approx(true_trace, rel=0.10)
    assert gns.g2 == pytest.approx(true_g2, rel=0.10)
    assert gns.b_simple == pytest.approx(true_trace / true_g2, rel=0.15)


def test_no_estimate_until_both_averages_are_positive_and_state_round_trips():
    gns = GradientNoiseScale(beta=0.9)
    assert gns.b_simple is None
    gns.update(1.0, 8, 2.0, 64)          # |G_small|^2 < |G_big|^2: a negative trace estimate
    assert gns.trace < 0 and gns.b_simple is None
    for small, big in linear_regression_stream(50, 8, 64):
        gns.update(small, 8, big, 64)
    copy = GradientNoiseScale()
    copy.load_state_dict(gns.state_dict())
    assert copy.b_simple == gns.b_simple and copy.updates == 51
    with pytest.raises(ValueError):
        GradientNoiseScale.estimates(1.0, 64, 1.0, 8)
