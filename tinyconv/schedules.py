"""Batch-size and learning-rate schedules: pure state machines, called once per epoch.

Plateau detection has the names and semantics of Keras ``ReduceLROnPlateau``:
``monitor``, ``mode`` ("min"/"max"), ``patience``, ``min_delta`` (absolute), ``cooldown``;
state ``best``, ``wait``, ``cooldown_counter``; the first value is always an improvement.
``factor`` is the study's alpha (> 1): a learning rate is *divided* by it, a batch size
*multiplied*. ``LRDecayOnPlateau(lr, f, ...)`` decides exactly as Keras
``ReduceLROnPlateau(factor=1/f, ...)`` (held equal by tests/test_schedules.py).

Every schedule keeps its controlled value in ``.current``; ``step(metric)`` returns the new
value when it changes, else None, and records the change in ``last_change``. The properties
``batch_size`` and ``lr`` give both quantities (None where the schedule does not control it):
the hybrid ``BatchSizeOnPlateau(..., on_max="lr-decay")`` changes the batch size until its cap,
then the learning rate, and its ``step`` returns whichever value changed.

Epochs are counted by the schedule: the n-th call to ``step`` is epoch n, and a change made
there applies from epoch n + 1.

A metric that is missing, None, NaN or infinite raises ValueError (Keras only warns on a
missing one, and counts NaN as "no improvement"): a plateau decision taken on a diverged
loss would be silent garbage, and the training loop stops on a non-finite loss anyway.
"""
import math
from dataclasses import dataclass, asdict

import numpy as np

SCHEDULES = ("constant", "batch-increase", "lr-decay", "noise-adaptive")


@dataclass
class Change:
    """One schedule decision: at the end of ``epoch``, ``what`` went from ``old`` to ``new``."""
    epoch: int
    what: str            # "lr" or "batch_size"
    old: float
    new: float
    reason: str

    def __str__(self):
        num = lambda v: str(v) if isinstance(v, int) else f"{v:.6g}"
        return f"epoch {self.epoch}: {self.what} {num(self.old)} -> {num(self.new)} ({self.reason})"


class PlateauDetector:
    """Keras ``ReduceLROnPlateau``'s bookkeeping, without the learning rate.

    ``update(value)`` returns a reason string when a plateau calls for a change; the schedule
    calls ``acted()`` only if it did change something (Keras starts the cooldown and resets
    ``wait`` only when the learning rate actually dropped, so at the floor ``wait`` keeps growing).
    """

    def __init__(self, patience, min_delta=1e-4, cooldown=0, monitor="val_loss", mode="min"):
        if mode not in ("min", "max"):
            raise ValueError(f"unknown mode {mode!r}: expected 'min' or 'max'")
        if not (isinstance(patience, (int, np.integer)) and patience >= 0):
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        if not (isinstance(cooldown, (int, np.integer)) and cooldown >= 0):
            raise ValueError(f"cooldown must be an integer >= 0, got {cooldown!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0 (it is absolute), got {min_delta!r}")
        self.patience, self.min_delta, self.cooldown = int(patience), float(min_delta), int(cooldown)
        self.monitor, self.mode = monitor, mode
        self.best = None          # None until the first value, which always improves
        self.wait = 0
        self.cooldown_counter = 0

    def read(self, metric):
        """The monitored value from a number or a dict of metrics; ValueError if unusable."""
        value = metric
        if isinstance(metric, dict):
            if metric.get(self.monitor) is None:
                raise ValueError(f"the schedule monitors {self.monitor!r}, which is missing from the "
                                 f"metrics (available: {', '.join(map(str, metric)) or 'none'})")
            value = metric[self.monitor]
        if value is None:
            raise ValueError(f"the schedule needs a value of {self.monitor!r} each epoch, got None")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{self.monitor} is {value}: a plateau schedule cannot compare "
                             "non-finite values")
        return value

    def improved(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, metric):
        value = self.read(metric)
        # Keras order: the cooldown ticks first, so the epoch on which it reaches 0 already
        # counts towards patience (a cooldown of c freezes c - 1 epochs after the change).
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(value):          # improvements are tracked even during the cooldown
            self.best = value
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                return (f"{self.monitor} did not improve by {self.min_delta:g} for {self.wait} "
                        f"epoch{'s' * (self.wait != 1)} (best {self.best:.6g})")
        return None

    def acted(self):
        self.cooldown_counter = self.cooldown
        self.wait = 0

    def state_dict(self):
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state):
        self.best, self.wait, self.cooldown_counter = (
            state["best"], int(state["wait"]), int(state["cooldown_counter"]))


class MilestoneTrigger:
    """Fires at the end of the given epochs (counted from 1); ignores the metric."""

    def __init__(self, milestones):
        ms = list(milestones)
        if not all(isinstance(m, (int, np.integer)) and m >= 1 for m in ms) or len(set(ms)) != len(ms):
            raise ValueError(f"milestones must be distinct epoch numbers >= 1, got {milestones!r}")
        self.milestones = sorted(int(m) for m in ms)
        self.epoch = 0

    def update(self, metric):
        self.epoch += 1
        return f"milestone at epoch {self.epoch}" if self.epoch in self.milestones else None

    def acted(self):
        pass

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])


def _check_factor(factor):
    if factor is None or isinstance(factor, bool) or not float(factor) > 1:
        raise ValueError(f"factor must be > 1 (the lr is divided by it, the batch size multiplied), "
                         f"got {factor!r}")
    return float(factor)


def _check_lr(lr, min_lr):
    if lr is None or not float(lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not float(min_lr) >= 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr!r}")
    return float(lr), float(min_lr)


class _Schedule:
    """Shared machinery: a trigger decides *when*, ``_change(reason)`` decides *what*."""
    trigger = None

    def __init__(self, value):
        self.current = value
        self.epoch = 0
        self.last_change = None

    lr = property(lambda self: None, doc="The learning rate, or None if not controlled here.")
    batch_size = property(lambda self: None, doc="The batch size, or None if not controlled here.")

    def step(self, metric=None):
        """Advance one epoch; return the new value if something changed, else None."""
        reason = self.trigger.update(metric) if self.trigger else None   # raises before any change
        self.epoch += 1
        change = self._change(reason) if reason else None
        if change is None:
            return None
        self.trigger.acted()
        self.last_change = change
        return change.new

    def _decayed(self, lr, reason):
        # Keras tests the floor in float32 (the optimizer's precision); it also keeps an lr a
        # rounding error above min_lr from making a no-op "change" that restarts the cooldown.
        if not np.float32(lr) > np.float32(self.min_lr):
            return None
        return Change(self.epoch, "lr", lr, max(lr / self.factor, self.min_lr), reason)

    def state_dict(self):
        """A plain JSON-able dict; ``load_state_dict`` of it, into a schedule built with the
        same arguments, resumes exactly (the arguments themselves are not stored)."""
        state = {"schedule": type(self).__name__, "epoch": self.epoch, "current": self.current,
                 "last_change": asdict(self.last_change) if self.last_change else None}
        if self.trigger:
            state["trigger"] = self.trigger.state_dict()
        return state

    def load_state_dict(self, state):
        if state.get("schedule") != type(self).__name__:
            raise ValueError(f"state of a {state.get('schedule')} cannot be loaded into a "
                             f"{type(self).__name__}")
        self.epoch, self.current = int(state["epoch"]), state["current"]
        self.last_change = Change(**state["last_change"]) if state["last_change"] else None
        if self.trigger:
            self.trigger.load_state_dict(state["trigger"])


class _PlateauAttributes:
    """Keras's state names, read straight from the detector."""
    best = property(lambda self: self.trigger.best)
    wait = property(lambda self: self.trigger.wait)
    cooldown_counter = property(lambda self: self.trigger.cooldown_counter)
    monitor = property(lambda self: self.trigger.monitor)
    mode = property(lambda self: self.trigger.mode)


class Constant(_Schedule):
    """Nothing ever changes; ``step`` always returns None."""


class _LRDecay(_Schedule):
    def __init__(self, lr, factor, min_lr, trigger):
        lr, self.min_lr = _check_lr(lr, min_lr)
        super().__init__(lr)
        self.factor, self.trigger = _check_factor(factor), trigger

    lr = property(lambda self: self.current)

    def _change(self, reason):
        change = self._decayed(self.current, reason)
        if change:
            self.current = change.new
        return change


class LRDecayOnPlateau(_PlateauAttributes, _LRDecay):
    """Divide the learning rate by ``factor`` (never below ``min_lr``) on a plateau of ``monitor``."""

    def __init__(self, lr, factor, patience, min_delta=1e-4, cooldown=0, min_lr=0.0,
                 monitor="val_loss", mode="min"):
        super().__init__(lr, factor, min_lr,
                         PlateauDetector(patience, min_delta, cooldown, monitor, mode))


class LRDecayAtMilestones(_LRDecay):
    """Divide the learning rate by ``factor`` at the end of each milestone epoch."""

    def __init__(self, lr, factor, milestones, min_lr=0.0):
        super().__init__(lr, factor, min_lr, MilestoneTrigger(milestones))


class _BatchIncrease(_Schedule):
    def __init__(self, batch_size, factor, max_batch_size, on_max, lr, min_lr, trigger):
        if isinstance(batch_size, bool) or not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if max_batch_size is not None and not (isinstance(max_batch_size, (int, np.integer))
                                               and max_batch_size >= batch_size):
            raise ValueError(f"max_batch_size must be an integer >= batch_size ({batch_size}), "
                             f"got {max_batch_size!r}")
        if on_max not in ("stop", "lr-decay"):
            raise ValueError(f"unknown on_max {on_max!r}: expected 'stop' or 'lr-decay'")
        if on_max == "lr-decay":
            if max_batch_size is None:
                raise ValueError("on_max='lr-decay' needs a max_batch_size to hand over at")
            lr, min_lr = _check_lr(lr, min_lr)
        super().__init__(int(batch_size))
        self.factor, self.trigger = _check_factor(factor), trigger
        self.max_batch_size = None if max_batch_size is None else int(max_batch_size)
        self.on_max, self.min_lr = on_max, float(min_lr)
        self._lr = float(lr) if on_max == "lr-decay" else None   # controlled only by the hybrid

    batch_size = property(lambda self: self.current)
    lr = property(lambda self: self._lr)

    def _change(self, reason):
        b, cap = self.current, self.max_batch_size
        if cap is None or b < cap:
            new = max(b + 1, int(b * self.factor + 0.5))   # half up; always grows, even for factor ~1
            new = new if cap is None else min(new, cap)
            self.current = new
            return Change(self.epoch, "batch_size", b, new, reason)
        if self.on_max == "lr-decay" and self._lr is not None:
            change = self._decayed(self._lr, f"{reason}; batch size at its cap {cap}")
            if change:
                self._lr = change.new
            return change
        return None

    def state_dict(self):
        return {**super().state_dict(), "lr": self._lr}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._lr = state["lr"]


class BatchSizeOnPlateau(_PlateauAttributes, _BatchIncrease):
    """Multiply the batch size by ``factor`` (rounded half up, capped at ``max_batch_size``) on a plateau.

    At the cap, ``on_max="stop"`` changes nothing more; ``on_max="lr-decay"`` (the hybrid of
    Smith et al. 2017) divides ``lr`` by ``factor`` on each further plateau, down to ``min_lr``.
    """

    def __init__(self, batch_size, factor, patience, min_delta=1e-4, cooldown=0, max_batch_size=None,
                 on_max="stop", lr=None, min_lr=0.0, monitor="val_loss", mode="min"):
        super().__init__(batch_size, factor, max_batch_size, on_max, lr, min_lr,
                         PlateauDetector(patience, min_delta, cooldown, monitor, mode))


class BatchSizeAtMilestones(_BatchIncrease):
    """Multiply the batch size by ``factor`` at the end of each milestone epoch (cap as above)."""

    def __init__(self, batch_size, factor, milestones, max_batch_size=None, on_max="stop",
                 lr=None, min_lr=0.0):
        super().__init__(batch_size, factor, max_batch_size, on_max, lr, min_lr,
                         MilestoneTrigger(milestones))


class BatchSizeFollowsNoise(_Schedule):
    """The batch size follows the measured gradient noise scale B_simple (tinyconv/noise.py; McCandlish
    et al. 2018), the learning rate stays constant.

    At the end of each epoch the target is B_simple rounded to a multiple of ``multiple`` and clamped to
    [``batch_size``, ``max_batch_size``]; the batch size changes to it only when the target differs from
    it by more than ``factor`` (up or down), so that the noisy estimate does not make it flap. No
    estimate yet (``None``: the averages are not both positive) changes nothing. Monitors
    ``grad_noise_scale`` in the metrics dict (or takes the number itself).
    """

    def __init__(self, batch_size, max_batch_size, factor=2.0, multiple=8, monitor="grad_noise_scale"):
        if isinstance(batch_size, bool) or not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not (isinstance(max_batch_size, (int, np.integer)) and max_batch_size >= batch_size):
            raise ValueError(f"max_batch_size must be an integer >= batch_size ({batch_size}), got {max_batch_size!r}")
        if not (isinstance(multiple, (int, np.integer)) and multiple >= 1):
            raise ValueError(f"multiple must be an integer >= 1, got {multiple!r}")
        super().__init__(int(batch_size))
        self.min_batch_size, self.max_batch_size = int(batch_size), int(max_batch_size)
        self.factor, self.multiple, self.monitor = _check_factor(factor), int(multiple), monitor

    batch_size = property(lambda self: self.current)

    def target(self, b_simple):
        """B_simple rounded to the nearest multiple (half up), clamped to the allowed range."""
        rounded = int(math.floor(b_simple / self.multiple + 0.5)) * self.multiple
        return min(max(rounded, self.min_batch_size), self.max_batch_size)

    def step(self, metric=None):
        value = metric.get(self.monitor) if isinstance(metric, dict) else metric
        if isinstance(metric, dict) and self.monitor not in metric:
            raise ValueError(f"the schedule follows {self.monitor!r}, which is missing from the metrics "
                             f"(available: {', '.join(map(str, metric)) or 'none'})")
        self.epoch += 1
        if value is None or not math.isfinite(float(value)) or float(value) <= 0:
            return None
        b, value = self.current, float(value)
        new = self.target(value)
        if new > b * self.factor:
            reason = f"B_simple {value:.0f} > {self.factor:g} x batch {b}"
        elif new * self.factor < b:
            reason = f"B_simple {value:.0f} < batch {b} / {self.factor:g}"
        else:
            return None
        self.current = new
        self.last_change = Change(self.epoch, "batch_size", b, new, reason)
        return new

    def state_dict(self):
        return {"schedule": type(self).__name__, "epoch": self.epoch, "current": self.current,
                "last_change": asdict(self.last_change) if self.last_change else None}


def make_schedule(name, *, lr, batch_size, factor=None, patience=None, min_delta=1e-4, cooldown=0,
                  min_lr=0.0, max_batch_size=None, on_max="stop", milestones=None,
                  monitor="val_loss", mode="min"):
    """The schedule called ``name`` ("constant", "batch-increase", "lr-decay", "noise-adaptive") for train.py.

    With ``milestones`` the change happens at those epochs instead of on a plateau.
    ``constant`` returns ``Constant(lr)``, whose ``lr`` and ``batch_size`` are None: the
    caller keeps its own values wherever a schedule reports None.
    """
    plateau = dict(patience=patience, min_delta=min_delta, cooldown=cooldown,
                   monitor=monitor, mode=mode)
    if name == "constant":
        return Constant(lr)
    if name == "lr-decay":
        if milestones:
            return LRDecayAtMilestones(lr, factor, milestones, min_lr=min_lr)
        return LRDecayOnPlateau(lr, factor, min_lr=min_lr, **plateau)
    if name == "batch-increase":
        cap = dict(max_batch_size=max_batch_size, on_max=on_max, lr=lr, min_lr=min_lr)
        if milestones:
            return BatchSizeAtMilestones(batch_size, factor, milestones, **cap)
        return BatchSizeOnPlateau(batch_size, factor, **plateau, **cap)
    if name == "noise-adaptive":
        return BatchSizeFollowsNoise(batch_size, max_batch_size, factor=factor)
    raise ValueError(f"unknown schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
