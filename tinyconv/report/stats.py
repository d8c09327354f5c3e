"""Statistics over seeds: independent runs only, and paired differences between schedules with 95%
intervals.

Runs of one schedule are independent samples only if they differ in seed: two runs with the same seed
and settings are the same experiment twice (on one machine they are even bit-identical), so averaging
them would shrink the standard deviation for nothing. :func:`independent` keeps the first run of each
seed and names the others.

Schedules are compared **paired by seed**: with ``train.py --seeds``, the runs of one seed share their
initial weights and data order, so the difference d_s = value(A, seed s) - value(B, seed s) removes what
the seed does to both. The interval is Student's t on the n differences,
mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n); with n < 2 there is no interval. An interval that contains
0 means these seeds give no evidence, at 95%, that the schedules differ on that quantity.
"""
import math

import numpy as np

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond, the Cornish-Fisher expansion around 1.95996
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t_975(df):
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table to 30, then an expansion
    accurate to 1e-3)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def independent(results):
    """(the first result of each seed, the others): results whose run shares a seed with an earlier
    one are not independent samples."""
    kept, repeats, seen = [], [], set()
    for res in results:
        seed = res["run"].seed
        (repeats if seed in seen else kept).append(res)
        seen.add(seed)
    return kept, repeats


def paired_interval(diffs):
    """(mean, low, high) of the paired differences, low/high None with fewer than two."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) == 0:
        return None, None, None
    if len(d) < 2:
        return float(d.mean()), None, None
    half = t_975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def paired_differences(grouped, value):
    """For each pair of schedules (in order), the paired differences of ``value(result)`` over the seeds
    both have: [{"a", "b", "seeds", "mean", "low", "high"}]."""
    names = list(grouped)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            by_seed_a = {res["run"].seed: res for res in independent(grouped[a])[0]}
            by_seed_b = {res["run"].seed: res for res in independent(grouped[b])[0]}
            seeds = [s for s in by_seed_a if s in by_seed_b]
            mean, low, high = paired_interval([value(by_seed_a[s]) - value(by_seed_b[s]) for s in seeds])
            out.append({"a": a, "b": b, "seeds": seeds, "mean": mean, "low": low, "high": high})
    return out
