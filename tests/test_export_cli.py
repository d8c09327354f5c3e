"""python export.py: the newest run by default, files written, clear errors, ONNX without coremltools."""
import json
import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the top-level export.py
import export as export_cli  # noqa: E402
from test_export_helpers import make_run  # noqa: E402


def test_default_is_the_newest_runs_best_checkpoint(tmp_path, capsys):
    runs = tmp_path / "runs"
    old, _ = make_run(runs, "b-older", seed=1)
    new, _ = make_run(runs, "a-newer", seed=2)
    t = time.time()
    os.utime(old / "checkpoints" / "best.h5", (t - 100, t - 100))  # name order must not decide
    assert export_cli.main(["--runs-dir", str(runs), "--no-coreml"]) == 0
    out = new / "export"
    report = json.loads((out / "export.json").read_text())
    assert report["checkpoint"] == str(new / "checkpoints" / "best.h5") and report["ok"]
    assert (out / "model.onnx").is_file() and report["onnx"]["max_abs_diff"] <= 1e-5
    assert "synthetic" in capsys.readouterr().out.lower()


def test_explicit_checkpoint_out_and_coreml(tmp_path):
    from tinyconv.export.coreml_export import coreml_status
    run, _ = make_run(tmp_path / "runs")
    out = tmp_path / "exported"
    assert export_cli.main([str(run / "checkpoints" / "best.h5"), "--out", str(out)]) == 0
    report = json.loads((out / "export.json").read_text())
    if coreml_status()[0]:
        assert (out / "model.mlpackage").is_dir() and report["coreml"]["max_abs_diff"] <= 1e-5
    else:
        assert "pip install" in report["coreml"]["skipped"]
    assert export_cli.main([str(run), "--out", str(out)]) == 0  # re-export over an existing package


def test_without_coremltools_onnx_is_still_written_and_the_fix_is_named(tmp_path, monkeypatch, capsys):
    import tinyconv.export.exporter as exporter
    monkeypatch.setattr(exporter, "coreml_status", lambda: (False, "coremltools is not installed; "
                                                                   "pip install -e .[coreml]"))
    run, _ = make_run(tmp_path / "runs")
    assert export_cli.main([str(run)]) == 0
    assert (run / "export" / "model.onnx").is_file() and not (run / "export" / "model.mlpackage").exists()
    assert "pip install -e .[coreml]" in capsys.readouterr().out


@pytest.mark.parametrize("make_bad", ["missing", "empty_runs", "not_hdf5"])
def test_bad_sources_give_one_line_errors(tmp_path, capsys, make_bad):
    args = {"missing": [str(tmp_path / "nope.h5")],
            "empty_runs": ["--runs-dir", str(tmp_path)]}.get(make_bad)
    if make_bad == "not_hdf5":
        (tmp_path / "x.h5").write_text("hello")
        args = [str(tmp_path / "x.h5")]
    assert export_cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("export: error:") and len(err.splitlines()) == 1 and "Traceback" not in err


def make_experiment(runs, name="20261201-053833-all", losses=(0.41, 0.32, 0.33), seeds=(0, 0, 0)):
    """An experiment folder as train.py --schedule all writes it: one run per schedule, one level down."""
    exp = runs / name
    for i, (schedule, loss, seed) in enumerate(zip(("constant", "batch-increase", "lr-decay"), losses, seeds)):
        make_run(exp, schedule, seed=seed, val_loss=loss, best_epoch=5 + i)
    return exp


def test_an_experiment_folder_exports_its_run_with_the_lowest_validation_loss(tmp_path, capsys):
    """The folder train.py prints at the end is accepted; the run taken is said, with why, and the others
    listed. The lowest loss is batch-increase although lr-decay was written last."""
    exp = make_experiment(tmp_path / "runs")
    t = time.time()
    os.utime(exp / "batch-increase" / "checkpoints" / "best.h5", (t - 100, t - 100))
    assert export_cli.main([str(exp), "--no-coreml"]) == 0
    report = json.loads((exp / "batch-increase" / "export" / "export.json").read_text())
    assert report["checkpoint"] == str(exp / "batch-increase" / "checkpoints" / "best.h5")
    out = capsys.readouterr().out
    assert f"using {exp / 'batch-increase'}" in out and "lowest validation loss" in out and "0.3200" in out
    assert f"not taken: {exp / 'constant'} (validation loss 0.4100 at epoch 5)" in out
    assert f"not taken: {exp / 'lr-decay'}" in out


def test_the_default_export_takes_the_newest_experiments_best_run_and_names_the_seed(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "20261130-older-run", val_loss=0.1)           # a lower loss, but an older folder
    t = time.time()
    os.utime(runs / "20261130-older-run" / "checkpoints" / "best.h5", (t - 1000, t - 1000))
    exp = make_experiment(runs, losses=(0.5, 0.45, 0.4), seeds=(0, 1, 2))
    assert export_cli.main(["--runs-dir", str(runs), "--no-coreml"]) == 0
    assert (exp / "lr-decay" / "export" / "model.onnx").is_file()
    out = capsys.readouterr().out
    assert "newest under" in out and "seed 2 of seeds 0, 1, 2" in out


def test_a_folder_with_no_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert export_cli.main([str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "neither a run folder" in err and "Traceback" not in err
