"""Evaluation reports on a tiny trained experiment: every file is written, and every number in the
tables and reports is recomputed here, independently, from the predictions CSVs."""
import csv
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyconv.checkpoint import load_checkpoint, save_checkpoint
from tinyconv.report import score
from tinyconv.report.metrics import classification_report
from tinyconv.report.thresholds import best_f1_threshold, choose_thresholds
from tinyconv.training import TrainConfig, run_experiment

ROOT = Path(__file__).resolve().parents[1]


def _load_cli():
    """The top-level evaluate.py, by path (a package named ``evaluate`` may be installed too)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluate_cli = _load_cli()

SCHEDULES = ("constant", "batch-increase", "lr-decay")
ATTRS = ["Eyeglasses", "Male", "Smiling"]
SPLITS = ("train", "validation", "test")
PNGS = ("curves_epoch.png", "curves_updates.png", "curves_wall_time.png", "schedule.png")
GRIDS = ("grid_all_right.png", "grid_some_wrong.png", "grid_all_wrong.png")


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """Three schedules trained for 2 epochs on 160 synthetic 40x32 faces; run_experiment ends with
    write_comparison, i.e. the full report beside the runs (what train.py --schedule all does)."""
    tmp = tmp_path_factory.mktemp("report")
    cfg = TrainConfig(cache_dir=str(tmp / "data"), image_size=(40, 32), synthetic_count=160, progress=False,
                      epochs=2, batch_size=16, width=0.25, eval_batch_size=64, patience=0)
    run_experiment(cfg, SCHEDULES, tmp / "exp")
    return tmp / "exp"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def predictions(run_dir, split):
    """(labels, probabilities) as a plain reader of the CSV would get them."""
    rows = read_csv(run_dir / f"predictions_{split}.csv")
    y = np.array([[int(r[f"{a}_true"]) for a in ATTRS] for r in rows])
    p = np.array([[float(r[f"{a}_prob"]) for a in ATTRS] for r in rows])
    return y, p


def comparison_csv(exp):
    """{metric: {column: text}} from comparison.csv."""
    rows = read_csv(exp / "comparison.csv")
    return {r["metric"]: r for r in rows}


def md_row(text, label):
    """The cells of the Markdown table row whose first cell is ``label``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r}")


def assert_png(path, min_size=(400, 250)):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert min_size[0] <= w <= 4000 and min_size[1] <= h <= 4000, (path, im.size)
        assert len(np.unique(np.asarray(im.convert("L")))) > 10, f"{path} looks blank"


def test_every_file_is_written(exp):
    for name in ("comparison.md", "comparison.csv", "report.md") + PNGS:
        assert (exp / name).is_file(), name
    for name in PNGS:
        assert_png(exp / name)
    for s in SCHEDULES:
        d = exp / s
        for name in ("classification_report.md", "classification_report.csv", "evaluation.json") + \
                tuple(f"predictions_{split}.csv" for split in SPLITS):
            assert (d / name).is_file(), d / name
        for name in GRIDS:
            assert_png(d / name, min_size=(400, 100))
    # Synthetic data: every text output says so plainly.
    for f in [exp / "report.md", exp / "comparison.md", exp / "comparison.csv"] + \
             [exp / s / n for s in SCHEDULES for n in ("classification_report.md", "classification_report.csv",
                                                       "evaluation.json")]:
        assert "NOT CelebA" in f.read_text(), f
    # report.md links every figure and grid with a path relative to itself, and they exist.
    report = (exp / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(PNGS) <= set(links)
    assert {f"{s}/{g}" for s in SCHEDULES for g in GRIDS} <= set(links)
    for link in links:
        assert not Path(link).is_absolute() and (exp / link).is_file()


def test_predictions_are_the_datasets_labels_in_order(exp):
    from tinyconv.data import load_dataset
    info = json.loads((exp / "constant" / "config.json").read_text())
    with load_dataset(info["data"]["path"], image_size=None, attributes=None, progress=False) as ds:
        for split in SPLITS:
            rows = read_csv(exp / "constant" / f"predictions_{split}.csv")
            assert list(rows[0]) == ["filename"] + [f"{a}_{k}" for a in ATTRS for k in ("true", "prob")]
            assert [r["filename"] for r in rows] == ds.filenames(split)
            y, p = predictions(exp / "constant", split)
            assert np.array_equal(y, ds.labels(split))
            assert ((p > 0) & (p < 1)).all()


def test_table_numbers_recomputed_from_predictions(exp):
    table, md = comparison_csv(exp), (exp / "comparison.md").read_text()
    y_train, _ = predictions(exp / "constant", "train")
    majority = (y_train.mean(axis=0) > 0.5).astype(int)
    for i, s in enumerate(SCHEDULES):
        run = json.loads((exp / s / "evaluation.json").read_text())
        assert run["thresholds"] == [0.5, 0.5, 0.5]
        for split in SPLITS:
            y, p = predictions(exp / s, split)
            acc = ((p > 0.5) == (y == 1)).mean(axis=0)
            assert float(table[f"{split}_acc_mean"][s]) == pytest.approx(acc.mean(), abs=1e-12)
            assert run["splits"][split]["accuracy"] == pytest.approx(acc, abs=1e-12)
            for a, v in zip(ATTRS, acc):
                assert float(table[f"{split}_acc_{a}"][s]) == pytest.approx(v, abs=1e-12)
            # the Markdown table shows the same numbers, rounded
            assert md_row(md, f"{split} accuracy (mean of attributes)")[i] == f"{100 * acc.mean():.2f}%"
            base = (y == majority).mean(axis=0)
            assert float(table[f"{split}_acc_mean"]["majority baseline"]) == pytest.approx(base.mean())
            assert md_row(md, f"{split} accuracy (mean of attributes)")[-1] == f"{100 * base.mean():.2f}%"
        y, p = predictions(exp / s, "test")
        for a, v in zip(ATTRS, ((p > 0.5) == (y == 1)).mean(axis=0)):
            assert md_row(md, f"test accuracy {a}")[i] == f"{100 * v:.2f}%"
        # how many of the three attributes each test image gets right
        right = ((p > 0.5) == (y == 1)).sum(axis=1)
        shares = {j: float((right == j).mean()) for j in (3, 2, 1, 0)}
        assert {int(j): v for j, v in run["test_correct_shares"].items()} == pytest.approx(shares)
        assert float(table["test_all_right"][s]) == pytest.approx(shares[3])
        report = (exp / "report.md").read_text()
        section = report.split(f"## {s}\n")[1].split("\n## ")[0]
        for j in (2, 1):
            assert f"| {j} of 3 | {100 * shares[j]:.2f}% |" in section
        assert f"| 3 of 3 (all) | {100 * shares[3]:.2f}% |" in section
        assert f"| 0 of 3 (none) | {100 * shares[0]:.2f}% |" in section
        assert f"every attribute right ({(right == 3).sum()})" in section
        assert f"every attribute wrong ({(right == 0).sum()})" in section
        # what the schedule did, from metrics.jsonl
        rows = [json.loads(line) for line in (exp / s / "metrics.jsonl").read_text().splitlines()]
        best = next(r for r in rows if r["epoch"] == run["best_epoch"])
        assert int(table["updates_to_best"][s]) == best["updates"]
        assert float(table["wall_time_to_best_s"][s]) == pytest.approx(best["wall_time_s"])
        assert int(table["final_batch_size"][s]) == rows[-1]["batch_size"]
        assert float(table["final_lr"][s]) == pytest.approx(rows[-1]["lr"])
        assert md_row(md, "final batch size")[i] == str(rows[-1]["batch_size"])


def test_classification_report_equals_sklearn(exp):
    sk = pytest.importorskip("sklearn.metrics")
    for s in SCHEDULES:
        y, p = predictions(exp / s, "test")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = sk.classification_report(y, (p > 0.5).astype(int), target_names=ATTRS, output_dict=True)
        ours = json.loads((exp / s / "evaluation.json").read_text())["test_classification_report"]
        assert ours.keys() == expected.keys()
        rows = {r["label"]: r for r in read_csv(exp / s / "classification_report.csv")}
        for name, row in expected.items():
            for k, v in row.items():
                assert ours[name][k] == pytest.approx(v, abs=1e-12), (s, name, k)
                assert float(rows[name][k]) == pytest.approx(v, abs=1e-12), (s, name, k)
        md = (exp / s / "classification_report.md").read_text()
        assert md_row(md, "macro avg") == [f"{expected['macro avg'][k]:.3f}" for k in ("precision", "recall",
                                                                                      "f1-score")] + \
            [f"{int(expected['macro avg']['support']):,}"]


def test_classification_report_edge_cases_equal_sklearn():
    """Empty columns, no predictions, all predictions: scikit-learn's zero_division default (0)."""
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 9))
        y = (rng.random((n, 3)) < rng.random()).astype(int)
        yp = (rng.random((n, 3)) < rng.random()).astype(int)
        y[:, trial % 3] = 0 if trial % 2 else y[:, trial % 3]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = sk.classification_report(y, yp, target_names=ATTRS, output_dict=True)
            ours = classification_report(y, yp, ATTRS)
        for name, row in expected.items():
            assert ours[name] == pytest.approx(row), (trial, name)


def test_best_f1_threshold_is_the_best_cut():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for trial in range(60):
        n = int(rng.integers(2, 30))
        y = rng.random(n) < 0.4
        p = np.round(rng.random(n), 1 if trial % 2 else 6)   # with and without ties
        if not y.any():
            continue
        t = best_f1_threshold(y, p)
        cuts = np.concatenate([np.unique(p), [-1.0]])
        best = max(sk.f1_score(y, p > c, zero_division=0) for c in cuts)
        assert sk.f1_score(y, p > t) == pytest.approx(best)


def test_thresholds_never_look_at_test(exp):
    labels, prob = {}, {}
    for split in SPLITS:
        labels[split], prob[split] = predictions(exp / "constant", split)
    chosen = score(labels, prob, ATTRS, "validation")["thresholds"]
    assert np.array_equal(chosen, choose_thresholds(labels["validation"], prob["validation"]))
    # Other test labels and probabilities: the same thresholds.
    flipped = {**labels, "test": 1 - labels["test"]}
    noisy = {**prob, "test": np.random.default_rng(0).random(prob["test"].shape)}
    assert np.array_equal(score(flipped, noisy, ATTRS, "validation")["thresholds"], chosen)
    assert np.array_equal(score(labels, prob, ATTRS, "0.5")["thresholds"], [0.5] * 3)


def test_cli_validation_thresholds_and_seeds(exp, tmp_path, capsys):
    """Two seeds of one schedule (a copy with another seed) -> mean ± std; validation thresholds are
    recomputed here from validation predictions and reproduce the test numbers."""
    runs = tmp_path / "runs"
    for name, seed in (("constant-s0", 0), ("constant-s1", 1)):
        shutil.copytree(exp / "constant", runs / name, ignore=shutil.ignore_patterns("*.png", "predictions_*"))
        info = json.loads((runs / name / "config.json").read_text())
        info["config"]["seed"] = seed
        (runs / name / "config.json").write_text(json.dumps(info))
    out = tmp_path / "out"
    assert evaluate_cli.main([str(runs), "--out", str(out), "--thresholds", "validation", "--no-progress"]) == 0
    assert "constant (2 seeds)" in capsys.readouterr().out
    md = (out / "comparison.md").read_text()
    table = comparison_csv(out)
    assert {"constant mean", "constant std"} <= set(table["test_acc_mean"])
    for i, name in enumerate(("constant-s0", "constant-s1")):
        run = json.loads((out / name / "evaluation.json").read_text())
        y_val, p_val = predictions(out / name, "validation")
        t = choose_thresholds(y_val, p_val)
        assert run["thresholds_mode"] == "validation" and run["threshold_criterion"] == "F1"
        assert run["thresholds"] == pytest.approx(t)
        y, p = predictions(out / name, "test")
        acc = ((p > t[None, :]) == (y == 1)).mean(axis=0)
        assert float(table["test_acc_mean"][name]) == pytest.approx(acc.mean())
    assert md_row(md, "test accuracy (mean of attributes)")[0] == f"{100 * acc.mean():.2f} ± 0.00%"
    assert "threshold Eyeglasses (from validation)" in md
    assert "chosen per attribute on the **validation** split to maximise F1" in (out / "report.md").read_text()


def test_cli_errors_are_one_line(exp, tmp_path, capsys):
    def error(args):
        rc = evaluate_cli.main([str(a) for a in args] + ["--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0
        assert len(err) == 1 and err[0].startswith("evaluate.py: error:") and "Traceback" not in err[0]
        return err[0]

    assert "no such folder" in error([tmp_path / "missing"])
    assert "no training run here" in error([tmp_path])
    unfinished = tmp_path / "unfinished"
    shutil.copytree(exp / "constant", unfinished, ignore=shutil.ignore_patterns("*.png", "predictions_*"))
    (unfinished / "checkpoints" / "best.h5").unlink()
    assert "no checkpoints/best.h5" in error([unfinished])
    other = tmp_path / "other"
    shutil.copytree(exp / "lr-decay", other, ignore=shutil.ignore_patterns("*.png", "predictions_*"))
    state = load_checkpoint(other / "checkpoints" / "best.h5")
    meta = {**state["meta"], "attributes": ["Eyeglasses", "Male", "Young"]}
    save_checkpoint(other / "checkpoints" / "best.h5", {**state, "meta": meta}, meta=meta)
    assert "different attribute lists" in error([exp / "constant", other])


def test_the_noise_scale_rows_and_figure(exp, tmp_path):
    """The table gives B_simple's first and last measured values (– when a run never measured one);
    noise_scale.png draws each schedule's measured B_simple against its batch sizes."""
    from tinyconv.report import plots
    from tinyconv.report.runs import read_run
    table = (exp / "comparison.md").read_text()
    for label in ("gradient noise scale B_simple, first epoch it was measured",
                  "gradient noise scale B_simple, last epoch"):
        assert len(md_row(table, label)) == len(SCHEDULES) + 1
    runs = [read_run(exp / s) for s in SCHEDULES]
    for i, r in enumerate(runs):                   # measured values, as a longer run would log them
        for k, row in enumerate(r.metrics):
            row["grad_noise_scale"] = 40.0 * (i + 1) * (k + 1)
    plots.plot_noise_scale(runs, tmp_path / "noise_scale.png")
    assert_png(tmp_path / "noise_scale.png")
    from tinyconv.report.tables import run_values
    values = run_values({"run": runs[1], "attributes": ATTRS,
                         "splits": {"test": {"acc": [0.5] * 3, "loss": 0.5}},
                         "report": {a: {"f1-score": 0.5} for a in ATTRS + ["macro avg"]},
                         "shares": [0, 0, 0, 0.5], "thresholds": []})
    assert values["b_simple_first"] == 80.0 and values["b_simple_last"] == 80.0 * len(runs[1].metrics)
