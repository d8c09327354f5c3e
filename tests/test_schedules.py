"""Schedules driven by plain lists of numbers, and LRDecayOnPlateau held equal to Keras."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyconv.schedules import (BatchSizeAtMilestones, BatchSizeOnPlateau, Constant, LRDecayAtMilestones,
                                LRDecayOnPlateau, make_schedule)


def run(schedule, values):
    return [schedule.step(v) for v in values]


# --- hand-worked sequences -------------------------------------------------------------------

def test_improvements_never_change_anything():
    s = LRDecayOnPlateau(0.1, 2, patience=1)
    assert run(s, [1.0, 0.9, 0.5, 0.2]) == [None] * 4
    assert (s.current, s.lr, s.batch_size, s.best, s.wait) == (0.1, 0.1, None, 0.2, 0)
    assert s.last_change is None


def test_first_value_is_an_improvement_even_if_huge():
    s = LRDecayOnPlateau(0.1, 2, patience=0)
    assert s.step(1e300) is None and s.best == 1e300


def test_plateau_waits_for_patience_then_resets():
    s = LRDecayOnPlateau(0.1, 2, patience=2)
    #              best  wait1 wait2->cut  wait1  wait2->cut
    assert run(s, [1.0, 1.0, 1.0, 1.0, 1.0]) == [None, None, 0.05, None, 0.025]
    assert s.wait == 0 and s.epoch == 5
    c = s.last_change
    assert (c.epoch, c.what, c.old, c.new) == (5, "lr", 0.05, 0.025)


def test_improvement_in_the_middle_restarts_patience():
    s = LRDecayOnPlateau(0.1, 2, patience=2)
    assert run(s, [1.0, 1.0, 0.5, 0.5, 0.5]) == [None, None, None, None, 0.05]


def test_patience_zero_cuts_on_every_non_improving_epoch():
    s = LRDecayOnPlateau(1.0, 2, patience=0)
    assert run(s, [1.0, 1.0, 0.5, 0.7]) == [None, 0.5, None, 0.25]


def test_cooldown_freezes_cooldown_minus_one_epochs_like_keras():
    # Keras ticks the cooldown before testing it: the epoch that brings it to 0 counts again.
    s = LRDecayOnPlateau(1.0, 2, patience=1, cooldown=2)
    out = run(s, [1.0] * 7)
    assert out == [None, 0.5, None, 0.25, None, 0.125, None]
    assert s.cooldown_counter == 1
    no_cooldown = LRDecayOnPlateau(1.0, 2, patience=1, cooldown=0)
    assert run(no_cooldown, [1.0] * 4) == [None, 0.5, 0.25, 0.125]


def test_improvement_during_cooldown_updates_best():
    s = LRDecayOnPlateau(1.0, 2, patience=1, cooldown=3)
    run(s, [1.0, 1.0])                 # cut at epoch 2, cooldown 3
    assert s.step(0.5) is None and s.best == 0.5 and s.cooldown_counter == 2


def test_min_delta_is_absolute_and_strict():
    # 0.75 = 1.0 - 0.25 exactly (binary fractions): not better "by" min_delta, so a plateau.
    s = LRDecayOnPlateau(1.0, 2, patience=1, min_delta=0.25)
    assert run(s, [1.0, 0.75]) == [None, 0.5] and s.best == 1.0
    s = LRDecayOnPlateau(1.0, 2, patience=1, min_delta=0.25)
    assert run(s, [1.0, 0.6875]) == [None, None] and s.best == 0.6875


def test_mode_max_with_a_metrics_dict():
    s = LRDecayOnPlateau(1.0, 4, patience=2, monitor="val_acc", mode="max", min_delta=0)
    logs = [{"val_acc": a, "val_loss": 9.0} for a in (0.5, 0.6, 0.6, 0.4, 0.7)]
    assert run(s, logs) == [None, None, None, 0.25, None]
    assert s.best == 0.7


def test_min_lr_floor_and_wait_keeps_growing_at_the_floor():
    s = LRDecayOnPlateau(1.0, 4, patience=1, min_lr=0.1)
    assert run(s, [1.0, 1.0, 1.0, 1.0, 1.0]) == [None, 0.25, 0.1, None, None]
    assert s.lr == 0.1 and s.wait == 2 and s.cooldown_counter == 0


def test_floor_is_tested_in_float32_like_keras():
    # 0.1 is above this min_lr in float64 but equal in float32 (the optimizer's precision):
    # Keras makes no cut, and neither a 1-ulp "cut" nor a restarted cooldown happens here.
    s = LRDecayOnPlateau(0.1, 2, patience=0, cooldown=2, min_lr=0.1 * (1 - 1e-9))
    assert run(s, [1.0, 1.0, 1.0]) == [None, None, None] and s.wait == 2
    k = KerasReduceLROnPlateau(0.1, 0.5, 0, "min", 1e-4, 2, 0.1 * (1 - 1e-9))
    for v in [1.0, 1.0, 1.0]:
        k.on_epoch_end(v)
    assert (k.lr, k.wait) == (np.float32(0.1), 2)


def test_reason_string_for_the_training_log():
    s = LRDecayOnPlateau(0.001, 2, patience=3)
    run(s, [0.4123, 0.5, 0.42, 0.4124])
    c = s.last_change
    assert c.reason == "val_loss did not improve by 0.0001 for 3 epochs (best 0.4123)"
    assert str(c) == f"epoch 4: lr 0.001 -> 0.0005 ({c.reason})"


def test_batch_size_grows_to_its_cap_then_stops():
    s = BatchSizeOnPlateau(32, 2, patience=1, max_batch_size=100)
    assert run(s, [1.0] * 5) == [None, 64, 100, None, None]
    assert (s.current, s.batch_size, s.lr) == (100, 100, None)
    assert type(s.current) is int and str(s.last_change).startswith("epoch 3: batch_size 64 -> 100 (")


def test_batch_size_rounds_half_up_and_always_grows():
    assert run(BatchSizeOnPlateau(10, 1.5, patience=0), [1.0] * 4) == [None, 15, 23, 35]
    assert run(BatchSizeOnPlateau(1, 1.2, patience=0), [1.0] * 3) == [None, 2, 3]


def test_hybrid_hands_over_to_lr_decay_at_the_cap():
    s = BatchSizeOnPlateau(32, 2, patience=1, max_batch_size=64, on_max="lr-decay", lr=0.1, min_lr=0.03)
    out = run(s, [1.0] * 5)
    assert out == [None, 64, 0.05, 0.03, None]
    assert (s.current, s.batch_size, s.lr) == (64, 64, 0.03)
    c = s.last_change
    assert (c.epoch, c.what, c.old, c.new) == (4, "lr", 0.05, 0.03)
    assert c.reason.endswith("; batch size at its cap 64")


def test_constant_never_changes():
    s = Constant(0.01)
    assert run(s, [1.0, None, {"x": 1}]) == [None] * 3
    assert (s.current, s.lr, s.batch_size, s.epoch) == (0.01, None, None, 3)


def test_lr_milestones():
    s = LRDecayAtMilestones(0.1, 10, [4, 2])
    out = run(s, [None] * 5)
    assert out[0] is None and out[2] is None and out[4] is None
    assert out[1] == pytest.approx(0.01) and out[3] == pytest.approx(0.001)
    assert s.last_change.reason == "milestone at epoch 4"


def test_batch_milestones_with_cap_and_hand_over():
    s = BatchSizeAtMilestones(8, 2, [1, 2, 3, 5], max_batch_size=12, on_max="lr-decay", lr=0.1)
    assert run(s, [0.0] * 5) == [12, 0.05, 0.025, None, 0.0125]
    assert (s.batch_size, s.lr) == (12, 0.0125)


def test_make_schedule():
    kw = dict(lr=0.1, batch_size=32, factor=2, patience=3)
    assert type(make_schedule("constant", **kw)) is Constant
    assert type(make_schedule("lr-decay", **kw)) is LRDecayOnPlateau
    assert type(make_schedule("lr-decay", milestones=[3], **kw)) is LRDecayAtMilestones
    b = make_schedule("batch-increase", max_batch_size=64, on_max="lr-decay", **kw)
    assert type(b) is BatchSizeOnPlateau and (b.batch_size, b.lr, b.trigger.patience) == (32, 0.1, 3)
    assert type(make_schedule("batch-increase", milestones=[3], **kw)) is BatchSizeAtMilestones
    assert make_schedule("batch-increase", **kw).lr is None        # on_max="stop": lr not controlled
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        make_schedule("cosine", **kw)


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: LRDecayOnPlateau(0.1, 1.0, 3), "factor must be > 1"),
    (lambda: LRDecayOnPlateau(0.1, 0.5, 3), "factor must be > 1"),
    (lambda: BatchSizeOnPlateau(32, None, 3), "factor must be > 1"),
    (lambda: LRDecayAtMilestones(0.1, 1, [2]), "factor must be > 1"),
    (lambda: LRDecayOnPlateau(0.1, 2, 3, mode="auto"), "unknown mode 'auto'"),
    (lambda: LRDecayOnPlateau(0.1, 2, -1), "patience must be an integer >= 0"),
    (lambda: LRDecayOnPlateau(0.1, 2, 3, cooldown=-1), "cooldown"),
    (lambda: LRDecayOnPlateau(0.1, 2, 3, min_delta=-1e-4), "min_delta"),
    (lambda: LRDecayOnPlateau(0.0, 2, 3), "lr must be > 0"),
    (lambda: BatchSizeOnPlateau(0, 2, 3), "batch_size must be an integer >= 1"),
    (lambda: BatchSizeOnPlateau(32, 2, 3, max_batch_size=16), "max_batch_size"),
    (lambda: BatchSizeOnPlateau(32, 2, 3, max_batch_size=64, on_max="grow"), "unknown on_max"),
    (lambda: BatchSizeOnPlateau(32, 2, 3, max_batch_size=64, on_max="lr-decay"), "lr must be > 0"),
    (lambda: BatchSizeOnPlateau(32, 2, 3, on_max="lr-decay", lr=0.1), "needs a max_batch_size"),
    (lambda: LRDecayAtMilestones(0.1, 2, [3, 3]), "milestones"),
    (lambda: LRDecayAtMilestones(0.1, 2, [0]), "milestones"),
])
def test_bad_arguments_raise_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("metric, match", [
    ({"loss": 1.0}, "monitors 'val_loss', which is missing .*available: loss"),
    ({"val_loss": None}, "missing"),
    (None, "got None"),
    (float("nan"), "val_loss is nan"),
    (float("inf"), "val_loss is inf"),
])
def test_unusable_metric_is_an_error_and_changes_no_state(metric, match):
    s = BatchSizeOnPlateau(32, 2, patience=0)
    s.step(1.0)
    before = s.state_dict()
    with pytest.raises(ValueError, match=match):
        s.step(metric)
    assert s.state_dict() == before


def test_loading_the_state_of_another_schedule_is_an_error():
    with pytest.raises(ValueError, match="LRDecayOnPlateau cannot be loaded into a BatchSizeOnPlateau"):
        BatchSizeOnPlateau(32, 2, 3).load_state_dict(LRDecayOnPlateau(0.1, 2, 3).state_dict())


# --- exact resume ----------------------------------------------------------------------------

def hybrid():
    return BatchSizeOnPlateau(16, 2, patience=1, cooldown=2, max_batch_size=64, on_max="lr-decay",
                              lr=0.1, min_lr=0.01)


SCHEDULE_MAKERS = [hybrid,
                   lambda: LRDecayOnPlateau(0.1, 3, patience=2, cooldown=1, min_lr=1e-3),
                   lambda: BatchSizeAtMilestones(16, 2, [2, 5, 7], max_batch_size=64, on_max="lr-decay", lr=0.1),
                   lambda: LRDecayAtMilestones(0.1, 10, [3, 6])]

values = st.lists(st.sampled_from([1.0, 0.9, 0.8, 0.85, 0.7]), min_size=2, max_size=20)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(SCHEDULE_MAKERS), values, st.data())
def test_state_round_trip_mid_sequence_gives_identical_future(make, seq, data):
    cut = data.draw(st.integers(0, len(seq)))
    a = make()
    run(a, seq[:cut])
    b = make()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert run(b, seq[cut:]) == run(a, seq[cut:])
    assert b.state_dict() == a.state_dict()
    assert (b.lr, b.batch_size, str(b.last_change)) == (a.lr, a.batch_size, str(a.last_change))


# --- Keras equivalence -----------------------------------------------------------------------

class KerasReduceLROnPlateau:
    """Oracle: the decision logic of Keras 3 ``ReduceLROnPlateau``, transcribed from
    keras-team/keras, keras/src/callbacks/reduce_lr_on_plateau.py (``_reset`` and
    ``on_epoch_end``; commit 040582fc), with mode "auto", warnings and printing left out.
    The optimizer's learning rate is a float32 variable in Keras; ``lr`` models it as one."""

    def __init__(self, lr, factor, patience, mode, min_delta, cooldown, min_lr):
        self.lr = float(np.float32(lr))
        self.factor, self.min_lr, self.min_delta = factor, min_lr, min_delta
        self.patience, self.cooldown = patience, cooldown
        self.cooldown_counter = 0
        self.wait = 0
        if mode == "min":
            self.monitor_op = lambda a, b: np.less(a, b - self.min_delta)
            self.best = np.inf
        else:
            self.monitor_op = lambda a, b: np.greater(a, b + self.min_delta)
            self.best = -np.inf

    def on_epoch_end(self, current):
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0

        if self.monitor_op(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = self.lr
                if old_lr > np.float32(self.min_lr):
                    new_lr = old_lr * self.factor
                    new_lr = max(new_lr, self.min_lr)
                    self.lr = float(np.float32(new_lr))     # assigned to the float32 variable
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def in_cooldown(self):
        return self.cooldown_counter > 0


@settings(max_examples=300, deadline=None)
@given(seq=st.lists(st.one_of(st.sampled_from([1.0, 0.5, 0.5001, 0.4999, 0.25]),
                              st.floats(-10, 10, allow_nan=False)), min_size=1, max_size=40),
       lr=st.sampled_from([1.0, 0.1, 0.01, 3e-4]),
       factor=st.sampled_from([2.0, 3.0, 5.0, 10.0, 1.5]),
       patience=st.integers(0, 4), cooldown=st.integers(0, 3),
       mode=st.sampled_from(["min", "max"]),
       min_delta=st.sampled_from([0.0, 1e-4, 0.1, 0.5]),
       min_lr=st.sampled_from([0.0, 1e-5, 1e-3, 2.5e-3]))
def test_lr_decay_on_plateau_decides_exactly_as_keras(seq, lr, factor, patience, cooldown, mode,
                                                      min_delta, min_lr):
    ours = LRDecayOnPlateau(lr, factor, patience, min_delta, cooldown, min_lr, mode=mode)
    keras = KerasReduceLROnPlateau(lr, 1 / factor, patience, mode, min_delta, cooldown, min_lr)
    for epoch, value in enumerate(seq, 1):
        keras_before = keras.lr
        keras.on_epoch_end(value)
        changed = ours.step(value) is not None
        assert changed == (keras.lr != keras_before), f"epoch {epoch}"
        assert math.isclose(ours.lr, keras.lr, rel_tol=1e-6), f"epoch {epoch}"
        assert (ours.wait, ours.cooldown_counter) == (keras.wait, keras.cooldown_counter)
        assert ours.best == keras.best


# --- the batch size that follows the measured gradient noise scale ----------------------------------

def test_noise_following_batch_size_moves_only_by_more_than_the_factor():
    from tinyconv.schedules import BatchSizeFollowsNoise
    s = BatchSizeFollowsNoise(32, 512, factor=2.0)
    seq = [None, 40.0, 70.0, 412.0, 300.0, 1e6, 98.0, 90.0]
    got = [s.step({"grad_noise_scale": v, "val_loss": 0.5}) for v in seq]
    # None: no estimate; 40 -> 40 (not > 2x32); 70 -> 72 > 64: change; 412 -> 416 > 144: change;
    # 300 -> 296 (within 2x of 416); 1e6 -> capped 512 (not > 832); 98 -> 96, 96 * 2 < 416: down;
    # 90 -> 88 (within 2x of 96)
    assert got == [None, None, 72, 416, None, None, 96, None]
    assert s.batch_size == 96 and s.lr is None
    assert str(s.last_change) == "epoch 7: batch_size 416 -> 96 (B_simple 98 < batch 416 / 2)"


def test_noise_following_batch_size_rounds_clamps_resumes_and_refuses_a_missing_metric():
    from tinyconv.schedules import BatchSizeFollowsNoise
    s = BatchSizeFollowsNoise(16, 128, factor=1.5, multiple=8)
    assert [s.target(v) for v in (1.0, 19.9, 20.0, 27.9, 1000.0)] == [16, 16, 24, 24, 128]
    assert s.step(412.0) == 128
    assert "B_simple 412 > 1.5 x batch 16" in str(s.last_change)
    copy = BatchSizeFollowsNoise(16, 128, factor=1.5)
    copy.load_state_dict(s.state_dict())
    assert copy.batch_size == 128 and copy.epoch == 1 and copy.last_change == s.last_change
    with pytest.raises(ValueError, match="grad_noise_scale"):
        s.step({"val_loss": 0.3})
    for bad in (dict(batch_size=0, max_batch_size=8), dict(batch_size=16, max_batch_size=8),
                dict(batch_size=8, max_batch_size=64, factor=1.0)):
        with pytest.raises(ValueError):
            BatchSizeFollowsNoise(**bad)
