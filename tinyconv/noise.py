"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, *An Empirical Model of
Large-Batch Training*), measured during training from gradients at two batch sizes.

G is the true gradient and Sigma the per-example gradient covariance. A gradient averaged over B
examples has E|G_B|^2 = |G|^2 + tr(Sigma) / B, so two batch sizes B_small < B_big in the same step give
unbiased estimates of both (the paper's appendix A.1):

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Each estimate is very noisy step by step (either can be negative), so each is smoothed with an
exponential moving average (bias-corrected, as Adam's moments) before the ratio is taken; the ratio of
the averages, not the average of ratios, as the paper does. B_simple is the batch size beyond which a
larger batch stops buying proportionally fewer steps. It is a different quantity from Smith et al.'s
SGD noise scale g = lr (N/B - 1), which tinyconv logs as ``noise_scale_exact``.

In the training loop B_small is one micro-batch and B_big the whole batch: with BatchNorm each
micro-batch is normalised with its own statistics, so the small-batch gradients are those of a model
with ghost batch norm of size B_small, not exactly the same function's gradient at a smaller batch.
"""
import math


class GradientNoiseScale:
    """Exponential moving averages of the two estimates above; ``b_simple`` is their ratio.

    ``update(g_small_sq, b_small, g_big_sq, b_big)`` takes |G_small|^2 (the squared norm of a gradient
    averaged over b_small examples; several small batches' squared norms may be averaged first) and
    |G_big|^2 (over b_big examples, b_big > b_small). ``beta`` is the averages' decay per update.
    """

    def __init__(self, beta=0.95):
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self.g2_avg = self.trace_avg = 0.0
        self.updates = 0

    @staticmethod
    def estimates(g_small_sq, b_small, g_big_sq, b_big):
        """(|G|^2, tr(Sigma)) from one pair of measurements (unbiased, unsmoothed)."""
        if not 0 < b_small < b_big:
            raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
        g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
        trace = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
        return g2, trace

    def update(self, g_small_sq, b_small, g_big_sq, b_big):
        g2, trace = self.estimates(float(g_small_sq), b_small, float(g_big_sq), b_big)
        if not (math.isfinite(g2) and math.isfinite(trace)):
            return                                    # a diverged step: the loop stops on it anyway
        self.updates += 1
        self.g2_avg = self.beta * self.g2_avg + (1 - self.beta) * g2
        self.trace_avg = self.beta * self.trace_avg + (1 - self.beta) * trace

    @property
    def g2(self):
        """The smoothed |G|^2 (bias-corrected), or None before the first update."""
        return self.g2_avg / (1 - self.beta ** self.updates) if self.updates else None

    @property
    def trace(self):
        """The smoothed tr(Sigma) (bias-corrected), or None before the first update."""
        return self.trace_avg / (1 - self.beta ** self.updates) if self.updates else None

    @property
    def b_simple(self):
        """tr(Sigma) / |G|^2 from the averages; None until both are positive (early, noisy estimates
        can make either one negative: no batch size follows from that)."""
        g2, trace = self.g2, self.trace
        if g2 is None or g2 <= 0 or trace <= 0:
            return None
        return trace / g2

    def state_dict(self):
        return {"beta": self.beta, "g2_avg": self.g2_avg, "trace_avg": self.trace_avg, "updates": self.updates}

    def load_state_dict(self, state):
        self.beta, self.g2_avg = float(state["beta"]), float(state["g2_avg"])
        self.trace_avg, self.updates = float(state["trace_avg"]), int(state["updates"])
