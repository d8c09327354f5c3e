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
