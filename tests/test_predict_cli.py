"""python predict.py: a table or JSON, the same numbers from the checkpoint and the exported ONNX model."""
import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the top-level predict.py
import predict as predict_cli  # noqa: E402
from test_export_helpers import ATTRS, face_images, make_run  # noqa: E402


@pytest.fixture
def setup(tmp_path):
    run_dir, _ = make_run(tmp_path / "runs")
    img = tmp_path / "face.jpg"
    Image.fromarray(face_images(1, 218, 178)[0]).resize((240, 300)).save(img)
    return run_dir, img


def _json(capsys, args):
    assert predict_cli.main(args + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_names_each_attribute(setup, capsys):
    run_dir, img = setup
    assert predict_cli.main([str(img), "--runs-dir", str(run_dir.parent)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("image"))
    assert header.split() == ["image"] + ATTRS
    assert str(img) in out and "SYNTHETIC" in out


def test_checkpoint_and_exported_onnx_print_the_same_numbers(setup, capsys):
    pytest.importorskip("onnxruntime")
    from tinyconv.export.exporter import export
    run_dir, img = setup
    export(run_dir, coreml=False, log=lambda *a: None)
    a = _json(capsys, [str(img), "--model", str(run_dir / "checkpoints" / "best.h5")])
    b = _json(capsys, [str(img), "--model", str(run_dir / "export")])
    assert (a["kind"], b["kind"]) == ("checkpoint", "onnx")
    pa, pb = a["predictions"][0]["probabilities"], b["predictions"][0]["probabilities"]
    assert list(pa) == ATTRS and all(abs(pa[k] - pb[k]) <= 1e-5 for k in ATTRS)


def test_a_bad_image_is_one_line_and_exit_1_while_good_ones_still_print(setup, tmp_path, capsys):
    run_dir, img = setup
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert predict_cli.main([str(bad), str(img), "--model", str(run_dir)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in captured.err
    assert str(img) in captured.out


def test_a_missing_model_is_one_line_and_exit_1(tmp_path, capsys):
    assert predict_cli.main(["x.jpg", "--model", str(tmp_path / "none.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("predict: error:") and len(err.splitlines()) == 1


def help_entries(text):
    """argparse --help text -> {option or positional: its help, lines joined}."""
    entries, key = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m and not line.startswith("   "):
            key = m.group(1).split(",")[0].split()[0]
            entries[key] = m.group(2) or ""
        elif key and line.startswith("   "):
            entries[key] = (entries[key] + " " + line.strip()).strip()
        elif not line.strip():
            key = None
    return entries


def check_help(text, expected):
    """Every option and positional has a help line; every option but -h shows its default."""
    entries = help_entries(text)
    assert set(expected) <= set(entries), (expected, entries)
    for key, help_text in entries.items():
        assert help_text, f"{key} has no help line"
        if key.startswith("--"):
            assert "(default: " in help_text, f"{key} does not show its default: {help_text!r}"


def test_help_has_a_line_and_a_default_for_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        predict_cli.main(["--help"])
    assert info.value.code == 0
    check_help(capsys.readouterr().out, ["IMAGE", "--model", "--runs-dir", "--json"])


@pytest.mark.parametrize("argv", [[], ["--model"], ["x.jpg", "--no-such-option"]])
def test_a_malformed_command_line_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        predict_cli.main(argv)
    assert info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_spoofed_model_files_are_one_line_errors_exit_1(setup, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from test_predict_model import spoofed_models
    from tinyconv.export.exporter import export
    run_dir, img = setup
    export(run_dir, coreml=False, log=lambda *a: None)
    for case, (path, words) in spoofed_models(run_dir, tmp_path).items():
        assert predict_cli.main([str(img), "--model", str(path)]) == 1, case
        err = capsys.readouterr().err
        assert err.startswith(f"predict: error: {path}") and len(err.strip().splitlines()) == 1, (case, err)
