"""Evaluate finished runs: predictions on every split, thresholds, metrics and every output file.

``evaluate_runs(paths, out)`` is what ``evaluate.py`` and ``train.py --schedule all`` call. Each run's
best checkpoint (lowest validation loss) is run once over train, validation and test; every number
after that is computed from those predictions (the same ones written to ``predictions_<split>.csv``).
"""
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from . import grids, metrics, plots, tables
from .page import write_page
from .predictions import SPLITS, load_model, predict_split, write_predictions
from .runs import ReportError, find_runs, open_datasets
from .thresholds import CRITERION, MODES, choose_thresholds, predict

SYNTHETIC_NOTE = ("Built-in SYNTHETIC faces (a stand-in for testing and teaching): these are NOT CelebA "
                  "results.")


def score(labels, prob, attributes, mode="0.5"):
    """Thresholds and metrics from {split: labels (N, K)} and {split: probabilities (N, K)}.

    With mode "validation" the thresholds come from the validation split alone (maximising F1 per
    attribute) and are applied unchanged to every split; test labels are never read to choose them.
    """
    if mode not in MODES:
        raise ReportError(f"unknown thresholds {mode!r}: expected one of {', '.join(MODES)}")
    K = len(attributes)
    if mode == "validation":
        thresholds = choose_thresholds(labels["validation"], prob["validation"])
    else:
        thresholds = np.full(K, 0.5)
    splits = {}
    for split in labels:
        y_pred = predict(prob[split], thresholds)
        splits[split] = {"acc": metrics.accuracy(labels[split], y_pred), "loss": metrics.bce_loss(labels[split], prob[split]),
                         "n": len(y_pred), "y_pred": y_pred}
    test_pred = splits["test"]["y_pred"]
    with warnings.catch_warnings():   # an undefined ratio is 0, as the reports say; no console noise
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        report = metrics.classification_report(labels["test"], test_pred, attributes)
    return {"attributes": list(attributes), "thresholds": thresholds, "splits": splits, "report": report,
            "shares": metrics.correct_shares(labels["test"], test_pred)}


def run_out_dir(out, run):
    """A run's own outputs go in its folder when the report is written beside it, else OUT/<label>."""
    out = Path(out)
    return run.dir if run.dir.resolve() in (out.resolve(), out.resolve() / run.dir.name) else out / run.label


def evaluate_run(run, ds, out_dir, device="cpu", mode="0.5", batch_size=None, progress=None):
    """Predict, score and write one run's files; returns its result dict (see ``score``) plus paths."""
    from tqdm import tqdm
    out_dir.mkdir(parents=True, exist_ok=True)
    batch_size = batch_size or run.config.get("eval_batch_size", 256)
    model = load_model(run.best_checkpoint, device)
    total = sum(ds.num_batches(s, batch_size) for s in SPLITS)
    labels, prob = {}, {}
    with tqdm(total=total, desc=f"evaluating {run.label}", unit="batch", file=sys.stderr, leave=False,
              disable={True: False, False: True}.get(progress)) as bar:
        for split in SPLITS:
            prob[split] = predict_split(model, ds, split, batch_size, device, bar)
            labels[split] = ds.labels(split)
    paths = {}
    for split in SPLITS:
        paths[f"predictions_{split}"] = out_dir / f"predictions_{split}.csv"
        write_predictions(paths[f"predictions_{split}"], ds.filenames(split), ds.attributes, labels[split], prob[split])
    result = score(labels, prob, ds.attributes, mode)
    result.update(run=run, mode=mode, out_dir=out_dir, synthetic=bool(ds.synthetic))
    note = SYNTHETIC_NOTE if ds.synthetic else None
    notes = [f"thresholds: {threshold_text(result)}"] + ([SYNTHETIC_NOTE] if note else [])
    paths["report_md"], paths["report_csv"] = out_dir / "classification_report.md", out_dir / "classification_report.csv"
    head = f"# Classification report: {run.label}, test split\n\n" + (f"**{note}**\n\n" if note else "")
    head += f"Checkpoint `{run.best_checkpoint}` (epoch {run.best_epoch}); thresholds: {threshold_text(result)}.\n\n"
    paths["report_md"].write_text(head + tables.report_markdown(result["report"], ds.attributes) + "\n")
    tables.write_report_csv(paths["report_csv"], result["report"], note)
    test_pred = result["splits"]["test"]["y_pred"]
    result["grids"] = grids.write_grids(out_dir, ds, "test", labels["test"], test_pred, prob["test"], run.label, notes)
    paths["evaluation_json"] = out_dir / "evaluation.json"
    paths["evaluation_json"].write_text(json.dumps(summary(result), indent=2) + "\n")
    result["paths"] = paths
    return result


def threshold_text(result):
    if result["mode"] == "validation":
        ts = ", ".join(f"{a} {t:.3f}" for a, t in zip(result["attributes"], result["thresholds"]))
        return f"per attribute, chosen on the validation split to maximise {CRITERION}, applied unchanged to test ({ts})"
    return "0.5 for every attribute"


def summary(result):
    """The JSON-able numbers of one run's evaluation (evaluation.json)."""
    return {"run": str(result["run"].dir), "schedule": result["run"].schedule, "seed": result["run"].seed,
            "best_epoch": result["run"].best_epoch, "attributes": result["attributes"],
            "synthetic": result["synthetic"], "note": SYNTHETIC_NOTE if result["synthetic"] else None,
            "thresholds_mode": result["mode"],
            "threshold_criterion": CRITERION if result["mode"] == "validation" else None,
            "thresholds": [float(t) for t in result["thresholds"]],
            "splits": {s: {"n": v["n"], "loss": v["loss"], "accuracy": [float(a) for a in v["acc"]],
                           "accuracy_mean": float(np.mean(v["acc"]))} for s, v in result["splits"].items()},
            "test_correct_shares": {str(j): s for j, s in result["shares"].items()},
            "test_classification_report": result["report"]}


def default_out(paths):
    """Beside the runs: the one folder given, else the folder the given ones share."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([str(p.resolve()) for p in paths]))


def evaluate_runs(paths, out=None, device="cpu", thresholds="0.5", batch_size=None, datasets=(), progress=None):
    """Evaluate every run under ``paths`` and write the comparison, plots and report.md into ``out``.

    ``datasets``: already open Datasets to reuse. ``progress``: True / False, or None for a bar only
    on a terminal. Returns {"table": Markdown comparison table, "out": folder, "results": [...]}.
    """
    if thresholds not in MODES:
        raise ReportError(f"unknown thresholds {thresholds!r}: expected one of {', '.join(MODES)}")
    runs = find_runs(paths)
    out = Path(out) if out is not None else default_out(paths)
    out.mkdir(parents=True, exist_ok=True)
    by_run, opened = open_datasets(runs, datasets)
    try:
        results = [evaluate_run(r, by_run[r.label], run_out_dir(out, r), device, thresholds, batch_size, progress)
                   for r in runs]
        first = by_run[runs[0].label]
        attributes = list(first.attributes)
        majority = metrics.majority_classes(first.labels("train"))
        baseline = {s: metrics.majority_accuracy(first.labels(s), majority) for s in SPLITS}
        synthetic = any(res["synthetic"] for res in results)
        note = SYNTHETIC_NOTE if synthetic else None
        table = tables.comparison_markdown(results, baseline, attributes, thresholds)
        paired = tables.paired_markdown(results, attributes)
        repeats = tables.repeated_runs_note(results)
        tables.write_comparison_csv(out / "comparison.csv", results, baseline, attributes, thresholds, note)
        figures = plots.write_plots(runs, out, [SYNTHETIC_NOTE] if synthetic else [])
        context = {"out": out, "runs": runs, "results": results, "table": table, "figures": figures,
                   "datasets": by_run, "attributes": attributes, "majority": majority, "baseline": baseline,
                   "thresholds": thresholds, "note": note, "device": device, "paired": paired,
                   "repeats": repeats}
        write_page(context)
    finally:
        for ds in opened:
            ds.close()
    return {"table": table, "out": out, "results": results}
