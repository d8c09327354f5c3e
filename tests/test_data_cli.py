"""``python -m tinyconv.data``: every option checked at parse time, described in --help with its
default, and exit status 2 for usage errors, 1 for failures, never a traceback."""
import argparse
import importlib
import re

import pytest

from tinyconv.data.__main__ import build_parser, main

from conftest_data import copy_official, synth_root  # noqa: F401  (a fixture)

main_mod = importlib.import_module("tinyconv.data.__main__")


def usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


BAD_PREPARE = [
    (["--workers", "-3"], "--workers: must be in [1, 256], got -3"),
    (["--workers", "0"], "--workers: must be in [1, 256], got 0"),
    (["--workers", "100000"], "--workers: must be in [1, 256]"),
    (["--workers", "2.5"], "--workers: expected an integer, got '2.5'"),
    (["--image-size", "0x44"], "--image-size: each side must be in [1, 1024], got '0x44'"),
    (["--image-size", "100000x100000"], "--image-size: each side must be in [1, 1024]"),
    (["--image-size", "1025x178"], "--image-size: each side must be in [1, 1024], got '1025x178'"),
    (["--image-size", "54x44x3"], "--image-size: expected HxW"),
    (["--image-size", "nanxinf"], "--image-size: expected HxW"),
    (["--attributes", "Male", "Male"], "--attributes: a name is given twice"),
    (["--attributes", ""], "--attributes: expected an attribute name"),
]


@pytest.mark.parametrize("extra,message", BAD_PREPARE)
def test_prepare_options_checked_at_parse_time(extra, message, synth_root, tmp_path, capsys):
    line = usage_error(["prepare", str(synth_root), "--out", str(tmp_path / "x.h5")] + extra, capsys)
    assert line.startswith("python -m tinyconv.data prepare: error: argument ") and message in line
    assert list(tmp_path.iterdir()) == []


def test_prepare_paths_checked_at_parse_time(synth_root, tmp_path, capsys):
    """Before: --out an existing folder was an IsADirectoryError traceback."""
    (tmp_path / "folder").mkdir()
    line = usage_error(["prepare", str(synth_root), "--out", str(tmp_path / "folder")], capsys)
    assert "argument --out:" in line and "is a folder" in line
    line = usage_error(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.h5")], capsys)
    assert "argument root:" in line and "no such folder" in line


BAD_SYNTHESIZE = [
    (["--count", "-5"], "--count: must be in [1, 999999], got -5"),
    (["--count", "0"], "--count: must be in [1, 999999], got 0"),
    (["--count", "1e9"], "--count: expected an integer, got '1e9'"),
    (["--seed", "-1"], "--seed: must be in [0, inf), got -1"),
    (["--label-noise", "2"], "--label-noise: must be in [0, 0.5], got 2"),
    (["--label-noise", "-0.1"], "--label-noise: must be in [0, 0.5]"),
    (["--label-noise", "nan"], "--label-noise: expected a finite number, got 'nan'"),
    (["--label-noise", "inf"], "--label-noise: expected a finite number, got 'inf'"),
    (["--workers", "-1"], "--workers: must be in [1, 256], got -1"),
]


@pytest.mark.parametrize("extra,message", BAD_SYNTHESIZE)
def test_synthesize_options_checked_at_parse_time(extra, message, tmp_path, capsys):
    """Before: --count -5, --label-noise 2, --seed -1 and --workers -1 were tracebacks."""
    line = usage_error(["synthesize", str(tmp_path / "s")] + extra, capsys)
    assert line.startswith("python -m tinyconv.data synthesize: error: argument ") and message in line
    assert not (tmp_path / "s").exists()


def test_synthesize_out_checked_at_parse_time(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert "argument out: " in usage_error(["synthesize", str(tmp_path / "file")], capsys)
    assert "not empty" in usage_error(["synthesize", str(tmp_path / "full")], capsys)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_exit_status_1_for_bad_data_and_2_for_a_bad_argument(synth_root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", str(empty), "--out", str(tmp_path / "x.h5")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m tinyconv.data prepare: error: {empty}: not a CelebA folder")
    assert err.count("\n") == 1
    # an argument the parser cannot judge (it needs the data): still a usage error, exit 2
    assert main(["prepare", str(synth_root), "--out", str(tmp_path / "x.h5"), "--attributes", "Smilling"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: python -m tinyconv.data prepare")
    assert "unknown attribute(s) ['Smilling']" in err[-1]
    root = copy_official(synth_root, tmp_path / "src")
    attr = root / "list_attr_celeba.txt"
    assert main(["prepare", str(root), "--out", str(attr)]) == 2
    assert "is an input of prepare" in capsys.readouterr().err
    assert attr.read_text().startswith("40\n")


def test_ctrl_c_exits_130_with_one_line(synth_root, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(main_mod, "prepare", interrupted)
    assert main(["prepare", str(synth_root), "--out", str(tmp_path / "x.h5")]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "python -m tinyconv.data prepare: interrupted; nothing half-written was left behind"]


def option_blocks(help_text):
    """{option string: its help text} parsed from argparse's --help output."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (-{1,2}[\w-]+|[a-z]\w*)(?:[ ,]|$)(.*)$", line)
        if m and not line.startswith("   "):
            current = m.group(1)
            blocks[current] = m.group(2)
        elif current and line.startswith("   "):
            blocks[current] += " " + line.strip()
        elif not line.strip():
            current = None
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def shown(default):
    if isinstance(default, tuple):
        return "x".join(str(s) for s in default)
    if isinstance(default, list):
        return " ".join(default)
    return str(default)


@pytest.mark.parametrize("command", ["prepare", "synthesize"])
def test_help_describes_every_option_and_its_default(command, capsys):
    """Before: synthesize --help left --count, --seed and --label-noise undescribed."""
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    blocks = option_blocks(capsys.readouterr().out)
    actions = [a for a in build_parser()[command]._actions if not isinstance(a, argparse._HelpAction)]
    assert actions
    for action in actions:
        name = action.option_strings[-1] if action.option_strings else action.dest
        text = blocks.get(name)
        assert text, f"{command} {name}: no help line"
        described = re.sub(r"^[A-Z][A-Zx.]*( [A-Z.]+)*", "", text).strip()  # drop the metavar
        assert len(described) > 10, f"{command} {name}: help text missing ({text!r})"
        if action.option_strings and not action.required:
            assert "(default: " in text, f"{command} {name}: the default is not shown ({text!r})"
            if action.default not in (None, False):
                assert f"(default: {shown(action.default)})" in text, (name, text)


def test_both_commands_work_end_to_end(tmp_path, capsys):
    assert main(["synthesize", str(tmp_path / "s"), "--count", "6", "--workers", "1"]) == 0
    assert main(["prepare", str(tmp_path / "s"), "--out", str(tmp_path / "x.h5"), "--image-size", "8x8",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"wrote {tmp_path / 's'} (6 SYNTHETIC faces in the CelebA layout; not CelebA)",
                   f"wrote {tmp_path / 'x.h5'}"]
