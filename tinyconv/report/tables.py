"""The comparison table (one column per schedule, mean ± standard deviation over seeds) and the
classification report, as Markdown and CSV. Input: the per-run results of :mod:`.evaluate`.
"""
import csv

import numpy as np

from .stats import independent, paired_differences

SPLIT_NAMES = {"train": "train", "validation": "validation", "test": "test"}


def table_rows(attributes, thresholds_mode, parallel=False):
    """[(key, label, format)] of the comparison table, top to bottom; ``parallel``: with the rows of
    data-parallel runs (ranks, allreduce time and its share of the training time)."""
    rows = [(f"{s}_acc_mean", f"{s} accuracy (mean of attributes)", "pct") for s in SPLIT_NAMES]
    rows += [(f"test_acc_{a}", f"test accuracy {a}", "pct") for a in attributes]
    rows += [(f"test_f1_{a}", f"test F1 {a}", "f1") for a in attributes]
    rows += [("test_f1_macro", "test F1 (macro avg)", "f1"),
             ("test_all_right", "test images with every attribute right", "pct"),
             ("test_loss", "test loss", "loss"),
             ("best_epoch", "best epoch (lowest validation loss)", "int"),
             ("updates_to_best", "parameter updates to best epoch", "int"),
             ("wall_time_to_best_s", "wall time to best epoch", "seconds"),
             ("final_batch_size", "final batch size", "int"),
             ("final_lr", "final learning rate", "lr"),
             ("b_simple_first", "gradient noise scale B_simple, first epoch it was measured", "int"),
             ("b_simple_last", "gradient noise scale B_simple, last epoch", "int")]
    if parallel:
        rows += [("ranks", "ranks (data-parallel processes)", "int"),
                 ("comm_time_s", "gradient allreduce time (all epochs)", "seconds"),
                 ("comm_share", "allreduce share of the training time", "pct")]
    if thresholds_mode == "validation":
        rows += [(f"threshold_{a}", f"threshold {a} (from validation)", "f1") for a in attributes]
    return rows


def run_values(result):
    """{key: number} of one run's column in the comparison table."""
    r, attrs = result["run"], result["attributes"]
    best, last = r.row_at_best(), r.metrics[-1]
    v = {}
    for split, s in result["splits"].items():
        v[f"{split}_acc_mean"] = float(np.mean(s["acc"]))
        v[f"{split}_loss"] = s["loss"]
        for a, acc in zip(attrs, s["acc"]):
            v[f"{split}_acc_{a}"] = float(acc)
    for a in attrs:
        v[f"test_f1_{a}"] = result["report"][a]["f1-score"]
    v["test_f1_macro"] = result["report"]["macro avg"]["f1-score"]
    v["test_all_right"] = result["shares"][len(attrs)]
    v.update({"best_epoch": r.best_epoch, "updates_to_best": best["updates"],
              "wall_time_to_best_s": best["wall_time_s"], "final_batch_size": last["batch_size"],
              "final_lr": last["lr"]})
    measured = [row["grad_noise_scale"] for row in r.metrics if row.get("grad_noise_scale")]
    v["b_simple_first"] = measured[0] if measured else None
    v["b_simple_last"] = r.metrics[-1].get("grad_noise_scale")
    comm = sum(row.get("comm_time_s") or 0.0 for row in r.metrics)
    train = sum(row.get("epoch_time_s") or 0.0 for row in r.metrics)
    v.update({"ranks": max(row.get("ranks") or 1 for row in r.metrics), "comm_time_s": comm, "comm_share": comm / train if train else 0.0})
    for a, t in zip(attrs, result["thresholds"]):
        v[f"threshold_{a}"] = float(t)
    return v


def any_parallel(results):
    """Whether any run trained on several ranks (tinyconv/distributed.py)."""
    return any((row.get("ranks") or 1) > 1 for res in results for row in res["run"].metrics)


def baseline_values(baseline, attributes):
    """{key: number} of the majority-class column (accuracy rows only)."""
    v = {}
    for split, acc in baseline.items():
        v[f"{split}_acc_mean"] = float(np.mean(acc))
        for a, x in zip(attributes, acc):
            v[f"{split}_acc_{a}"] = float(x)
    return v


def groups(results):
    """{schedule: [results]} in the order the schedules first appear."""
    out = {}
    for res in results:
        out.setdefault(res["run"].schedule, []).append(res)
    return out


def format_value(x, kind):
    """One cell: kind is pct | f1 | loss | int | seconds | lr; None is a dash."""
    if x is None:
        return "–"
    return {"pct": f"{100 * x:.2f}%", "f1": f"{x:.3f}", "loss": f"{x:.4f}", "int": f"{int(round(x)):,}",
            "seconds": f"{x:.1f} s", "lr": f"{x:.3g}"}[kind]


def _cell(values, kind):
    """One run's value, or mean ± std over several; a run without the value (None: B_simple never
    measured) is left out and counted: "(4 of 5)"."""
    have = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(have) == 0:
        return "–"
    text = format_value(have[0], kind) if len(have) == 1 else _fmt_std(have.mean(), have.std(ddof=1), kind)
    return text if len(have) == len(values) else f"{text} ({len(have)} of {len(values)})"


def _fmt_std(m, s, kind):
    """'mean ± std' with the unit once, at the end."""
    if kind == "pct":
        return f"{100 * m:.2f} ± {100 * s:.2f}%"
    if kind == "seconds":
        return f"{m:.1f} ± {s:.1f} s"
    if kind == "int":
        return f"{m:,.1f} ± {s:,.1f}"
    return f"{format_value(m, kind)} ± {format_value(s, kind)}"


def comparison_markdown(results, baseline, attributes, thresholds_mode):
    """The study's table: one column per schedule (mean ± std over its runs when it has several),
    then the majority-class baseline."""
    grouped = {s: independent(g)[0] for s, g in groups(results).items()}   # one run per seed
    heads = [s if len(g) == 1 else f"{s} ({len(g)} seeds)" for s, g in grouped.items()]
    lines = ["| | " + " | ".join(heads) + " | majority class (from train labels) |",
             "|---" + "|---:" * (len(heads) + 1) + "|"]
    base = baseline_values(baseline, attributes)
    for key, label, kind in table_rows(attributes, thresholds_mode, any_parallel(results)):
        cells = []
        for g in grouped.values():
            cells.append(_cell([run_values(res)[key] for res in g], kind))
        cells.append(format_value(base.get(key), kind))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def repeated_runs_note(results):
    """A line naming runs that repeat a seed of their schedule (counted once), or None."""
    repeats = [res for g in groups(results).values() for res in independent(g)[1]]
    if not repeats:
        return None
    return ("Not averaged as independent runs (each repeats the seed and schedule of another run, which "
            "alone is counted): " + ", ".join(f"`{r['run'].label}` (seed {r['run'].seed})" for r in repeats) + ".")


PAIRED_QUANTITIES = [("test_acc_mean", "test accuracy (mean of attributes)", "pct")]


def paired_markdown(results, attributes):
    """Paired differences between schedules over shared seeds, with 95% t intervals; None if no pair of
    schedules shares two seeds."""
    grouped = groups(results)
    quantities = PAIRED_QUANTITIES + [(f"test_f1_{a}", f"test F1 {a}", "f1") for a in attributes]
    rows = []
    for key, label, kind in quantities:
        for d in paired_differences(grouped, lambda res: run_values(res)[key]):
            if d["low"] is None:
                continue
            scale, unit = (100, " pts") if kind == "pct" else (1, "")
            zero = "yes: no evidence of a difference" if d["low"] <= 0 <= d["high"] else "no"
            rows.append(f"| {d['a']} − {d['b']} | {label} | {len(d['seeds'])} | {scale * d['mean']:+.3f}{unit} | "
                        f"[{scale * d['low']:+.3f}, {scale * d['high']:+.3f}]{unit} | {zero} |")
    if not rows:
        return None
    return "\n".join(["| schedules | quantity | seeds | mean difference | 95% interval (paired t) | contains 0? |",
                      "|---|---|---:|---:|---|---|"] + rows)


def write_comparison_csv(path, results, baseline, attributes, thresholds_mode, note=None):
    """comparison.csv: one row per quantity, one column per run (raw numbers: fractions, seconds),
    then mean and std (n - 1) per schedule with several runs, then the majority-class baseline."""
    grouped = {s: independent(g)[0] for s, g in groups(results).items()}     # one run per seed
    multi = {s: g for s, g in grouped.items() if len(g) > 1}
    header = ["metric"] + [res["run"].label for res in results]
    for s in multi:
        header += [f"{s} mean", f"{s} std"]
    header.append("majority baseline")
    base = baseline_values(baseline, attributes)
    keys = [k for k, _, _ in table_rows(attributes, thresholds_mode, any_parallel(results))]
    extra = ["train_loss", "validation_loss"] + [f"{s}_acc_{a}" for s in ("train", "validation") for a in attributes]
    keys = keys[:3] + extra + keys[3:]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(["schedule"] + [res["run"].schedule for res in results] + [""] * (2 * len(multi) + 1))
        w.writerow(["seed"] + [res["run"].seed for res in results] + [""] * (2 * len(multi) + 1))
        for key in keys:
            row = [key] + [run_values(res)[key] for res in results]
            for g in multi.values():
                vals = np.array([v for v in (run_values(res)[key] for res in g) if v is not None], dtype=np.float64)
                row += [vals.mean(), vals.std(ddof=1)] if len(vals) > 1 else ["", ""]
            row.append(base.get(key, ""))
            w.writerow(row)
        if note:
            w.writerow(["note", note])


def report_markdown(report, attributes):
    """The classification report as a Markdown table (scikit-learn's layout)."""
    lines = ["| | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name in list(attributes) + ["micro avg", "macro avg", "weighted avg", "samples avg"]:
        r = report[name]
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1-score']:.3f} | "
                     f"{r['support']:,} |")
    return "\n".join(lines)


def write_report_csv(path, report, note=None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "precision", "recall", "f1-score", "support"])
        for name, r in report.items():
            w.writerow([name, r["precision"], r["recall"], r["f1-score"], r["support"]])
        if note:
            w.writerow(["note", note])


def shares_markdown(shares, K):
    """How many attributes test images get right: the share of each count, K down to 0."""
    lines = ["| attributes right | share of test images |", "|---|---:|"]
    for j, s in shares.items():
        what = " (all)" if j == K else " (none)" if j == 0 else ""
        lines.append(f"| {j} of {K}{what} | {100 * s:.2f}% |")
    return "\n".join(lines)
