"""prepare's output: never over an input or a foreign file, the user's umask, and a full disk
(refused up front, or failing midway) leaves nothing behind and says so in one line."""
import errno
import importlib
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import pytest

from tinyconv.data import DataError, prepare
from tinyconv.data.__main__ import main
from tinyconv.data.errors import UsageError

from conftest_data import copy_official, make_h5, make_zip_layout, synth_root  # noqa: F401  (a fixture)

prepare_mod = importlib.import_module("tinyconv.data.prepare")


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.mark.parametrize("target", ["list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba.zip"])
def test_output_over_an_input_is_refused(target, synth_root, tmp_path):
    """Before: --out ROOT/list_attr_celeba.txt replaced the annotation file with HDF5."""
    root = (make_zip_layout if target.endswith(".zip") else copy_official)(synth_root, tmp_path / "src")
    path = root / target
    before = path.read_bytes()
    with pytest.raises(UsageError, match=f"{path}: is an input of prepare"):
        prepare(root, path, image_size=(8, 8), progress=False)
    assert path.read_bytes() == before and leftovers(root) == []


def test_output_over_a_foreign_file_is_refused(synth_root, tmp_path):
    notes = tmp_path / "notes.h5"
    notes.write_text("my notes")
    checkpoint = tmp_path / "best.h5"
    with h5py.File(checkpoint, "w") as f:  # HDF5, but not a prepared file (a checkpoint, say)
        f["w"] = [1.0, 2.0]
    for path, what in ((notes, "not a tinyconv prepared data file"), (checkpoint, "not a tinyconv prepared")):
        before = path.read_bytes()
        with pytest.raises(UsageError, match=f"{path}: exists and is {what}"):
            prepare(synth_root, path, image_size=(8, 8), progress=False)
        assert path.read_bytes() == before
    with pytest.raises(UsageError, match="is inside the image folder"):
        prepare(synth_root, synth_root / "img_align_celeba" / "x.h5", image_size=(8, 8), progress=False)
    assert not (synth_root / "img_align_celeba" / "x.h5").exists()


def test_existing_prepared_file_is_replaced(synth_root, tmp_path):
    out = make_h5(tmp_path / "d.h5", 10)  # a prepared-schema file of other data, 54x44
    fresh = prepare(synth_root, tmp_path / "fresh.h5", image_size=(8, 8), progress=False)
    prepare(synth_root, out, image_size=(8, 8), progress=False)
    with h5py.File(out) as f, h5py.File(fresh) as g:
        assert list(f["filenames"][()]) == list(g["filenames"][()])
        assert (f["images"][()] == g["images"][()]).all()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_prepared_file_follows_the_umask(umask, synth_root, tmp_path):
    """Before: always 0600 (the temporary file came from mkstemp)."""
    old = os.umask(umask)
    try:
        out = prepare(synth_root, tmp_path / "x.h5", image_size=(8, 8), progress=False)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_not_enough_free_space_is_refused_up_front(synth_root, tmp_path, monkeypatch, capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    decoded = []
    monkeypatch.setattr(prepare_mod, "_decode_many", lambda *a: decoded.append(1))
    out = tmp_path / "out" / "x.h5"
    assert main(["prepare", str(synth_root), "--out", str(out), "--image-size", "54x44"]) == 1
    err = capsys.readouterr().err
    need = prepare_mod.needed_bytes(35, (54, 44), 3)
    assert err == (f"python -m tinyconv.data prepare: error: {out.parent}: not enough free space for x.h5: "
                   f"it needs about {need / 1e6:.1f} MB, 100.0 kB free\n")
    assert decoded == [] and list(out.parent.iterdir()) == []


@pytest.mark.parametrize("where", ["_write_block", "_reserve_space"])
def test_disk_full_midway_removes_the_partial_file(where, synth_root, tmp_path, monkeypatch, capsys):
    """Before: an OSError traceback, then a segmentation fault at exit (h5py closing the file)."""
    calls = []

    def full(*a):
        calls.append(1)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(prepare_mod, where, full)
    out = tmp_path / "x.h5"
    assert main(["prepare", str(synth_root), "--out", str(out), "--image-size", "8x8"]) == 1
    err = capsys.readouterr().err.splitlines()  # the progress bar, then the one error line
    assert err[-1] == (f"python -m tinyconv.data prepare: error: {out}: writing failed: No space left on device "
                       "(errno ENOSPC); the partial file was removed")
    assert "Traceback" not in "".join(err)
    assert calls and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_real_write_failure_exits_1_without_a_crash(synth_root, tmp_path):
    """HDF5 itself meets the failure (a file-size limit stands in for a full disk): one line, exit 1,
    no temporary file, and no segmentation fault when the interpreter exits (before: exit 139)."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # a write over the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000))
        from tinyconv.data.__main__ import main
        sys.exit(main(["prepare", {str(synth_root)!r}, "--out", "x.h5", "--image-size", "54x44",
                       "--workers", "1"]))
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    err = run.stderr.splitlines()[-1]
    assert run.returncode == 1, run.stderr[-2000:]
    assert err == ("python -m tinyconv.data prepare: error: x.h5: writing failed: File too large (errno EFBIG); "
                   "the partial file was removed")
    assert "Traceback" not in run.stderr and list(tmp_path.iterdir()) == []


def test_write_failure_is_a_data_error_for_library_callers(synth_root, tmp_path, monkeypatch):
    def broken(*a):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(prepare_mod, "_write_block", broken)
    with pytest.raises(DataError, match=r"x.h5: writing failed: Input/output error \(errno EIO\)"):
        prepare(synth_root, tmp_path / "x.h5", image_size=(8, 8), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_synthesize_checks_space_and_cleans_up_a_failed_write(tmp_path, monkeypatch):
    synthetic_mod = importlib.import_module("tinyconv.data.synthetic")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=50_000))
    with pytest.raises(DataError, match=r"not enough free space for 3 synthetic images: they need up to 96 kB, 50 kB free"):
        synthetic_mod.synthesize(tmp_path / "s", count=3, workers=1, progress=False)
    monkeypatch.setattr(shutil, "disk_usage", real)

    def full(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(synthetic_mod, "_write_annotations", full)
    with pytest.raises(DataError, match=r"s: writing failed: \[Errno 28\] No space left on device; the partial "):
        synthetic_mod.synthesize(tmp_path / "s", count=3, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_synthesize_into_a_folder_filled_meanwhile_says_so(tmp_path, monkeypatch):
    """Two `synthesize OUT` at once: the second used to fail with "[Errno 39] Directory not empty"."""
    synthetic_mod = importlib.import_module("tinyconv.data.synthetic")
    real = synthetic_mod._write_annotations

    def other_process_finishes_first(root, *a):
        real(root, *a)
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / "list_attr_celeba.txt").write_text("the other run's")
    monkeypatch.setattr(synthetic_mod, "_write_annotations", other_process_finishes_first)
    with pytest.raises(DataError, match=r"s: another process wrote this folder meanwhile; this run's copy"):
        synthetic_mod.synthesize(tmp_path / "s", count=2, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert (tmp_path / "s" / "list_attr_celeba.txt").read_text() == "the other run's"
