"""Checked option types for the command-line tools (train.py, evaluate.py, export.py, predict.py, ...).

Each is an argparse ``type=``: a bad value becomes ``error: argument --lr: ...`` and exit code 2,
before anything runs. Floats must be finite (``inf`` and ``nan`` parse as floats in Python).
"""
import argparse
import math


def integer(lo=None, hi=None):
    """An int in [lo, hi] (either bound optional)."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        _check_range(v, lo, hi, text)
        return v
    parse.__name__ = "integer"
    return parse


def number(lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite float in [lo, hi], or (lo, hi] with ``lo_open``, [lo, hi) with ``hi_open``."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        _check_range(v, lo, hi, text, lo_open, hi_open)
        return v
    parse.__name__ = "number"
    return parse


def image_size(lo, hi):
    """HxW (e.g. 218x178), each side an int in [lo, hi] -> (H, W)."""
    def parse(text):
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected HxW such as 218x178 or 54x44, got {text!r}") from None
        if not (lo <= h <= hi and lo <= w <= hi):
            raise argparse.ArgumentTypeError(f"each side must be in [{lo}, {hi}], got {text!r}")
        return (h, w)
    parse.__name__ = "HxW"
    return parse


def _check_range(v, lo, hi, text, lo_open=False, hi_open=False):
    low_bad = lo is not None and (v <= lo if lo_open else v < lo)
    high_bad = hi is not None and (v >= hi if hi_open else v > hi)
    if low_bad or high_bad:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        span = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
        raise argparse.ArgumentTypeError(f"must be in {span}, got {text}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default after its help text (unless the
    text already says it; flags and options without a default say nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"
