"""The folder train.py prints at the end (an experiment folder) is accepted wherever a run folder is:
predict.py --model, tinyconv.load and the demo app's --model, each taking the run with the lowest
validation loss and saying which and why."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import predict as predict_cli  # noqa: E402
from test_export_cli import make_experiment  # noqa: E402


def test_predict_and_load_take_the_experiments_best_run(tmp_path, capsys):
    import tinyconv
    from PIL import Image
    exp = make_experiment(tmp_path / "runs", losses=(0.41, 0.32, 0.33))
    heard = []
    m = tinyconv.load(exp, announce=heard.append)
    assert Path(m.source) == exp / "batch-increase" / "checkpoints" / "best.h5"
    assert "lowest validation loss" in heard[0] and any("not taken" in h for h in heard[1:])
    photo = tmp_path / "face.png"
    Image.new("RGB", (178, 218), (200, 160, 140)).save(photo)
    assert predict_cli.main([str(photo), "--model", str(exp)]) == 0
    captured = capsys.readouterr()
    assert f"using {exp / 'batch-increase'}" in captured.err and "batch-increase" in captured.out


def test_the_app_serves_the_experiments_best_run_export(tmp_path, capsys):
    from tinyconv.app import AppError, find_model_dir
    from tinyconv.export.exporter import export
    exp = make_experiment(tmp_path / "runs", losses=(0.5, 0.45, 0.4))
    with pytest.raises(AppError, match="has no export/model.onnx: export it first"):
        find_model_dir(str(exp))
    export(str(exp), coreml=False, log=lambda line: None)
    assert find_model_dir(str(exp)) == exp / "lr-decay" / "export"
    assert "lowest validation loss" in capsys.readouterr().out
