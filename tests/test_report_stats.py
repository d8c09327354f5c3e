"""Statistics over seeds (tinyconv/report/stats.py and the tables that use it), on hand-made results."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from tinyconv.report import stats, tables


def result(schedule, seed, acc, f1=0.5):
    run = SimpleNamespace(schedule=schedule, seed=seed, label=f"seed{seed}-{schedule}")
    return {"run": run, "acc": acc, "f1": f1}


def test_t_quantiles_match_the_published_table():
    # df: t_0.975 (any statistics table)
    for df, t in ((1, 12.706), (4, 2.776), (10, 2.228), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)):
        assert stats.t_975(df) == pytest.approx(t, abs=1.5e-3)
    assert stats.t_975(10 ** 6) == pytest.approx(1.95996, abs=1e-4)


def test_paired_interval_by_hand():
    d = [0.01, 0.03, -0.01, 0.02, 0.00]               # mean 0.01, sd 0.015811, n 5, t 2.776
    mean, low, high = stats.paired_interval(d)
    half = 2.776 * 0.0158114 / math.sqrt(5)
    assert (mean, low, high) == pytest.approx((0.01, 0.01 - half, 0.01 + half), abs=1e-6)
    assert stats.paired_interval([0.2]) == (0.2, None, None)


def test_differences_are_paired_by_seed_and_repeated_seeds_count_once():
    res = [result("constant", s, a) for s, a in ((0, 0.80), (1, 0.82), (2, 0.78))]
    res += [result("lr-decay", s, a) for s, a in ((2, 0.80), (0, 0.83), (1, 0.83))]    # other order
    res += [result("lr-decay", 0, 0.99)]                                               # seed 0 again
    grouped = tables.groups(res)
    kept, repeats = stats.independent(grouped["lr-decay"])
    assert [r["run"].seed for r in kept] == [2, 0, 1] and [r["acc"] for r in repeats] == [0.99]
    (d,) = stats.paired_differences(grouped, lambda r: r["acc"])
    assert (d["a"], d["b"], sorted(d["seeds"])) == ("constant", "lr-decay", [0, 1, 2])
    diffs = np.array([0.80 - 0.83, 0.82 - 0.83, 0.78 - 0.80])
    half = 4.303 * diffs.std(ddof=1) / math.sqrt(3)
    assert (d["mean"], d["low"], d["high"]) == pytest.approx((diffs.mean(), diffs.mean() - half, diffs.mean() + half))
    assert d["low"] < 0 < d["high"]                      # three seeds: no evidence either way


def test_the_report_says_when_an_interval_contains_zero_and_names_repeated_runs(monkeypatch):
    monkeypatch.setattr(tables, "run_values", lambda res: {"test_acc_mean": res["acc"], "test_f1_A": res["f1"]})
    res = [result("constant", s, 0.80 + 0.01 * s) for s in range(4)]
    res += [result("batch-increase", s, 0.90 + 0.01 * s + 0.001 * (-1) ** s) for s in range(4)]
    res += [result("constant", 3, 0.5)]
    text = tables.paired_markdown(res, ["A"])
    rows = {line.split(" | ")[1]: line for line in text.splitlines()[2:]}
    acc = rows["test accuracy (mean of attributes)"]
    assert "constant − batch-increase" in acc and "| 4 |" in acc and acc.endswith("| no |")
    assert "-10.000 pts" in acc
    assert rows["test F1 A"].endswith("no evidence of a difference |")   # identical F1: interval [0, 0]
    note = tables.repeated_runs_note(res)
    assert "`seed3-constant` (seed 3)" in note and "counted" in note
    assert tables.repeated_runs_note(res[:-1]) is None
