"""Run folders and resume as a user meets them through train.py: never overwrite, never mix, resume the
same run or say why not, a crash at any moment leaves a consistent pair of checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinyconv.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from tinyconv.rundir import FolderLock, RunDirError, claim_new, unique_dir
from tinyconv.training import Run, TrainConfig, TrainingError, open_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train as train_cli  # noqa: E402

from conftest import SMALL_COUNT as COUNT, SMALL_SIZE as SIZE  # noqa: E402


@pytest.fixture(scope="module")
def cache(small_data):
    return small_data


def cli_args(cache, *extra, epochs=2):
    return ["--cache-dir", str(cache), "--synthetic-count", str(COUNT), "--image-size", "40x32", "--no-progress",
            "--width", "0.25", "--epochs", str(epochs), "--batch-size", "16", "--eval-batch-size", "64", *extra]


def train(cache, *extra, epochs=2, cwd=None):
    """train.py's main in this process (cwd: the folder to run it from)."""
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return train_cli.main(cli_args(cache, *extra, epochs=epochs))
    finally:
        os.chdir(old)


def weights(run_dir, name="last"):
    return load_checkpoint(Path(run_dir) / "checkpoints" / f"{name}.h5")["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- 1. run folders: never overwrite, never mix ----------------------------------------------------

def test_a_finished_run_folder_is_refused_and_overwrite_moves_it_aside(cache, tmp_path, capsys):
    run = tmp_path / "reuse"
    assert train(cache, "--schedule", "constant", "--run-dir", str(run)) == 0
    best_before = (run / "checkpoints" / "best.h5").read_bytes()
    assert train(cache, "--schedule", "constant", "--run-dir", str(run), "--lr", "5") == 1
    err = capsys.readouterr().err
    assert f"{run} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (run / "checkpoints" / "best.h5").read_bytes() == best_before          # untouched
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    assert train(cache, "--schedule", "constant", "--run-dir", str(run), "--overwrite", epochs=1) == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("reuse.replaced-")]
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "best.h5").read_bytes() == best_before
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_folder_in_use_is_refused_naming_the_other_process(cache, tmp_path, capsys):
    run = tmp_path / "busy"
    lock = FolderLock(run).acquire()          # as another train.py would hold it
    try:
        assert train(cache, "--schedule", "constant", "--run-dir", str(run)) == 1
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"{run} is in use by another training process (process {os.getpid()}" in err
    assert not (run / "config.json").exists()


def test_the_lock_dies_with_its_process(tmp_path):
    """A SIGKILLed holder leaves no stale lock: the OS drops a flock with the process."""
    code = (f"import time; from tinyconv.rundir import FolderLock; FolderLock({str(tmp_path)!r}).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunDirError, match=f"process {proc.pid}"):
        FolderLock(tmp_path).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    FolderLock(tmp_path).acquire().release()


def test_two_runs_started_in_the_same_second_get_two_folders(cache, tmp_path, monkeypatch):
    assert unique_dir(tmp_path / "20261201-055232-constant") != unique_dir(tmp_path / "20261201-055232-constant")
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261201-055232")
    assert train(cache, "--schedule", "constant", "--seed", "1", epochs=1, cwd=tmp_path) == 0
    assert train(cache, "--schedule", "constant", "--seed", "2", epochs=1, cwd=tmp_path) == 0
    seeds = {json.loads((d / "config.json").read_text())["config"]["seed"] for d in (tmp_path / "runs").iterdir()}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["20261201-055232-constant",
                                                                     "20261201-055232-constant-2"]
    assert seeds == {1, 2}


def test_overwrite_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    lock = FolderLock(tmp_path / "r").acquire()
    try:
        with pytest.raises(RunDirError, match="in use"):
            claim_new(tmp_path / "r", overwrite=True)
    finally:
        lock.release()
    assert (tmp_path / "r" / "config.json").is_file()


def test_resume_of_an_experiment_with_a_schedule_resumes_that_run(cache, tmp_path, capsys):
    exp = tmp_path / "exp"
    assert train(cache, "--run-dir", str(exp), epochs=1) == 0
    assert json.loads((exp / "experiment.json").read_text())["schedules"] == ["constant", "batch-increase",
                                                                              "lr-decay", "noise-adaptive"]
    capsys.readouterr()
    assert train_cli.main(["--resume", str(exp), "--schedule", "lr-decay", "--epochs", "2", "--no-progress"]) == 0
    rows = [json.loads(x)["epoch"] for x in (exp / "lr-decay" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2] and not (exp / "config.json").exists() and not (exp / "checkpoints").exists()
    assert len((exp / "constant" / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(SystemExit):                # argparse: not a schedule at all
        train_cli.main(["--resume", str(exp), "--schedule", "sgd-magic", "--no-progress"])
    capsys.readouterr()
    (exp / "batch-increase" / "config.json").rename(exp / "batch-increase" / "config.moved")
    assert train_cli.main(["--resume", str(exp), "--schedule", "batch-increase", "--no-progress"]) == 2
    assert "this experiment holds constant, lr-decay, noise-adaptive" in capsys.readouterr().err


# --- 2. resume continues the same run, or says why not ---------------------------------------------

def test_resume_refuses_every_option_that_changes_the_run_listing_each(cache, tmp_path, capsys):
    run = tmp_path / "r"
    assert train(cache, "--schedule", "constant", "--run-dir", str(run), epochs=1) == 0
    capsys.readouterr()
    rc = train_cli.main(["--resume", str(run), "--lr", "0.5", "--batch-size", "8", "--schedule", "lr-decay",
                         "--data", "/nonexistent", "--image-size", "64x64"])
    err = capsys.readouterr().err
    assert rc == 2
    for line in ("--lr: saved 0.001 -> given 0.5", "--batch-size: saved 16 -> given 8",
                 "--schedule: saved 'constant' -> given 'lr-decay'", "--image-size: saved [40, 32] -> given [64, 64]"):
        assert line in err, err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1              # nothing trained
    assert train_cli.main(["--resume", str(run), "--run-dir", "x"]) == 2
    # the same values as saved, and the options that do not change the run, are accepted
    assert train_cli.main(["--resume", str(run), "--lr", "0.001", "--batch-size", "16", "--epochs", "2",
                           "--no-progress", "--eval-batch-size", "32"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_adam_eps_placement_reaches_the_optimizer_and_cannot_change_on_resume(cache, tmp_path, capsys):
    run = tmp_path / "keras"
    assert train(cache, "--schedule", "constant", "--run-dir", str(run), "--adam-eps-placement", "keras", epochs=1) == 0
    assert json.loads((run / "config.json").read_text())["config"]["adam_eps_placement"] == "keras"
    assert load_checkpoint(run / "checkpoints" / "last.h5")["optimizer"]["hyper"]["eps_placement"] == "keras"
    capsys.readouterr()
    assert train_cli.main(["--resume", str(run), "--adam-eps-placement", "kingma-ba"]) == 2
    err = capsys.readouterr().err
    assert "--adam-eps-placement: saved 'keras' -> given 'kingma-ba'" in err, err
    assert train_cli.main(["--resume", str(run), "--adam-eps-placement", "keras", "--epochs", "2",
                           "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    # A run from before the option: no placement in config.json nor in the checkpoints. It was Kingma & Ba's.
    old = tmp_path / "old"
    assert train(cache, "--schedule", "constant", "--run-dir", str(old), epochs=1) == 0
    info = json.loads((old / "config.json").read_text())
    del info["config"]["adam_eps_placement"]
    (old / "config.json").write_text(json.dumps(info))
    for name in ("last", "best"):
        path = old / "checkpoints" / f"{name}.h5"
        state = load_checkpoint(path)
        del state["optimizer"]["hyper"]["eps_placement"]
        save_checkpoint(path, state, meta=read_checkpoint_meta(path))
    capsys.readouterr()
    assert train_cli.main(["--resume", str(old), "--adam-eps-placement", "keras"]) == 2
    assert "--adam-eps-placement: saved 'kingma-ba' -> given 'keras'" in capsys.readouterr().err
    assert train_cli.main(["--resume", str(old), "--adam-eps-placement", "kingma-ba", "--epochs", "2",
                           "--no-progress"]) == 0
    assert load_checkpoint(old / "checkpoints" / "last.h5")["optimizer"]["hyper"]["eps_placement"] == "kingma-ba"
    with pytest.raises(ValueError, match="unknown adam_eps_placement 'Keras': expected kingma-ba or keras"):
        TrainConfig(adam_eps_placement="Keras")


def test_resume_checks_the_data_fingerprint_and_finds_moved_data_from_another_folder(cache, tmp_path, capsys):
    import shutil
    work = tmp_path / "work"
    work.mkdir()
    data = tmp_path / "mydata"
    shutil.copytree(cache, data)
    h5 = next(data.glob("*.h5"))
    assert train(cache, "--schedule", "constant", "--run-dir", "r", "--data", str(h5.relative_to(tmp_path)),
                 epochs=1, cwd=tmp_path) == 0
    # another prepared file (other data): refused, saying why
    other = tmp_path / "other"
    open_data(TrainConfig(cache_dir=str(other), image_size=SIZE, synthetic_count=COUNT + 40, progress=False)).close()
    other_h5 = next(other.glob("*.h5"))
    capsys.readouterr()
    assert train_cli.main(["--resume", str(tmp_path / "r"), "--data", str(other_h5), "--no-progress"]) == 1
    assert "is not the data this run trained on" in capsys.readouterr().err
    # from another working folder, with the saved relative path: found through the saved cwd
    os.chdir(work)
    try:
        assert train_cli.main(["--resume", str(tmp_path / "r"), "--epochs", "2", "--no-progress"]) == 0
        # a moved copy of the same data is fine
        moved = tmp_path / "moved.h5"
        shutil.copy(h5, moved)
        assert train_cli.main(["--resume", str(tmp_path / "r"), "--epochs", "3", "--data", str(moved),
                               "--no-progress"]) == 0
    finally:
        os.chdir(ROOT)
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 3


def _two_improving_epochs_config(cache, **kw):
    base = dict(cache_dir=str(cache), image_size=SIZE, synthetic_count=COUNT, progress=False, epochs=3,
                batch_size=16, width=0.25, eval_batch_size=64, schedule="constant")
    base.update(kw)
    return TrainConfig(**base)


def test_a_crash_between_the_two_checkpoint_writes_leaves_best_consistent(cache, tmp_path, monkeypatch):
    """Kill the run right after the first checkpoint write of an improving epoch 2, whatever the order:
    best.h5 must never be behind what last.h5 records, and resume ends where an uninterrupted run ends."""
    ds = open_data(_two_improving_epochs_config(cache))
    full = Run(_two_improving_epochs_config(cache), tmp_path / "full", ds)
    full.train()
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["val_loss"] < rows[0]["val_loss"], "the test needs epoch 2 to improve"

    run = Run(_two_improving_epochs_config(cache), tmp_path / "crash", ds)
    real_save, writes = Run.save, []

    def save(self, name):
        real_save(self, name)
        writes.append((self.epoch, name))
        if self.epoch == 2 and len([w for w in writes if w[0] == 2]) == 1:
            raise SystemExit("killed between the two writes")
    monkeypatch.setattr(Run, "save", save)
    with pytest.raises(SystemExit):
        run.train()
    monkeypatch.setattr(Run, "save", real_save)
    last = load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.h5")["progress"]
    best_epoch = read_checkpoint_meta(tmp_path / "crash" / "checkpoints" / "best.h5")["epoch"]
    assert last["best_epoch"] is None or best_epoch >= last["best_epoch"]
    assert best_epoch == 2                          # the better epoch reached best.h5 before anything else
    resumed = Run.resume(tmp_path / "crash", lambda c: ds)
    resumed.train()
    assert same_weights(weights(tmp_path / "full", "best"), weights(tmp_path / "crash", "best"))
    assert same_weights(weights(tmp_path / "full"), weights(tmp_path / "crash"))
    ds.close()


def test_a_stale_best_from_an_older_version_is_repaired_on_resume(cache, tmp_path):
    import shutil
    ds = open_data(_two_improving_epochs_config(cache))
    run = Run(_two_improving_epochs_config(cache, epochs=1), tmp_path / "r", ds)
    run.train()
    epoch1_best = tmp_path / "epoch1-best.h5"
    shutil.copy(tmp_path / "r" / "checkpoints" / "best.h5", epoch1_best)
    resumed = Run.resume(tmp_path / "r", lambda c: ds, epochs=2)
    resumed.train()
    assert resumed.best_epoch == 2
    shutil.copy(epoch1_best, tmp_path / "r" / "checkpoints" / "best.h5")    # last written, best not: old order
    again = Run.resume(tmp_path / "r", lambda c: ds, epochs=2)
    again.train()
    assert read_checkpoint_meta(tmp_path / "r" / "checkpoints" / "best.h5")["epoch"] == 2
    assert "repaired" in (tmp_path / "r" / "train.log").read_text()
    ds.close()


def test_leftover_temporary_files_go_and_the_log_has_no_duplicate_lines(cache, tmp_path, monkeypatch):
    ds = open_data(_two_improving_epochs_config(cache))
    run = Run(_two_improving_epochs_config(cache, epochs=3), tmp_path / "r", ds)
    real_save = Run.save

    def save(self, name):                # killed in the middle of epoch 2's last.h5 write
        if self.epoch == 2 and name == "last":
            (self.ckpt_dir / "last.h5.tmp-99999").write_bytes(b"partial")
            raise SystemExit("killed mid-write")
        real_save(self, name)
    monkeypatch.setattr(Run, "save", save)
    with pytest.raises(SystemExit):
        run.train()
    monkeypatch.setattr(Run, "save", real_save)
    assert "epoch 2/3" in (tmp_path / "r" / "train.log").read_text()     # logged, not saved
    Run.resume(tmp_path / "r", lambda c: ds).train()
    assert not list((tmp_path / "r" / "checkpoints").glob("*.tmp-*"))
    log = (tmp_path / "r" / "train.log").read_text()
    for epoch in (1, 2, 3):
        assert log.count(f"constant epoch {epoch}/3:") == 1, log
    ds.close()


def test_a_second_ctrl_c_exits_at_once_with_130_and_resume_is_exact(cache, tmp_path):
    """Two SIGINTs 0-50 ms apart, in a real process: exit code 130 every time, and whatever checkpoint is
    on disk resumes to exactly the uninterrupted result."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = cli_args(cache, "--schedule", "constant", epochs=4)
    assert subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--run-dir", "full"], cwd=tmp_path,
                          env=env, capture_output=True, timeout=300).returncode == 0
    for i, gap in enumerate((0.0, 0.02, 0.05)):
        name = f"int{i}"
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "--run-dir", name], cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        metrics = tmp_path / name / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not metrics.exists():
            time.sleep(0.01)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.returncode == 130, (gap, proc.returncode, proc.stderr.read()[-2000:])
        if (tmp_path / name / "checkpoints" / "last.h5").exists():
            r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--resume", name, "--no-progress"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            assert same_weights(weights(tmp_path / "full"), weights(tmp_path / name))


# --- 5. options are checked at parse time, naming the option ---------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--pos-weight", "-1", "-1", "-1"], "argument --pos-weight: must be in (0, inf), got -1"),
    (["--pos-weight", "1", "2"], "argument --pos-weight: needs one weight per attribute (3"),
    (["--optimizer", "sgd", "--momentum", "-5"], "argument --momentum: must be in [0, 1), got -5"),
    (["--lr", "inf"], "argument --lr: expected a finite number, got 'inf'"),
    (["--lr", "nan"], "argument --lr: expected a finite number"),
    (["--seed", "-1"], "argument --seed: must be in [0, inf), got -1"),
    (["--factor", "0.5"], "argument --factor: must be in (1, inf)"),
    (["--patience", "-2"], "argument --patience"),
    (["--min-delta", "-1"], "argument --min-delta"),
    (["--width", "1e5"], "argument --width: must be in (0, 8]"),
    (["--dropout", "1"], "argument --dropout: must be in [0, 1)"),
    (["--milestones", "6,3"], "argument --milestones: expected increasing epochs"),
    (["--synthetic-count", "-5"], "argument --synthetic-count"),
    (["--max-micro-batch", "0"], "argument --max-micro-batch"),
    (["--eval-batch-size", "0"], "argument --eval-batch-size"),
    (["--min-lr", "-1"], "argument --min-lr"),
])
def test_every_numeric_option_is_checked_naming_it(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        train_cli.main(args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_train_config_refuses_what_the_cli_refuses():
    for bad in (dict(lr=float("inf")), dict(momentum=-5.0), dict(pos_weight=(-1, -1, -1)), dict(pos_weight=(1, 2)),
                dict(width=1e5), dict(seed=-1), dict(dropout=1.0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_nan_stop_says_no_checkpoint_exists_when_none_does(cache, tmp_path):
    ds = open_data(_two_improving_epochs_config(cache))
    run = Run(_two_improving_epochs_config(cache), tmp_path / "nan", ds)
    real_step = run.step

    def step(batch):
        for params, _ in run.model.parameters():
            for p in params.values():
                p[...] = np.nan
        return real_step(batch)
    run.step = step
    with pytest.raises(TrainingError, match="no checkpoint had been written yet"):
        run.train()
    ds.close()


@pytest.mark.parametrize("tool", ["train", "evaluate", "export"])
def test_every_option_has_help_and_shows_its_default(tool):
    """--help of train.py, evaluate.py and export.py: a line of help for every option, and its default
    wherever it has one (tinyconv.data, predict.py and the app have the same test beside them)."""
    module = __import__(tool)
    p = module.parser()
    text = p.format_help().split("options:")[1]
    for action in p._actions:
        if action.dest == "help":
            continue
        assert action.help, (tool, action.dest)
        if action.default not in (None, False, ()) and action.option_strings:
            opt = action.option_strings[0]
            block = text[text.index(f"  {opt}"):].split("\n  --")[0]
            assert "default" in block, (tool, opt, block)


# --- seeds --------------------------------------------------------------------------------------------

def test_seeds_run_every_schedule_per_seed_in_one_experiment_and_resume(cache, tmp_path, capsys):
    exp = tmp_path / "exp"
    assert train(cache, "--schedule", "constant", "--seeds", "3,5", "--run-dir", str(exp), epochs=1) == 0
    out = capsys.readouterr().out
    assert "warm-up: kernels ready in" in out and "not counted in any run's wall time" in out
    info = json.loads((exp / "experiment.json").read_text())
    assert info["runs"] == ["seed3-constant", "seed5-constant"] and info["seeds"] == [3, 5]
    for name, seed in (("seed3-constant", 3), ("seed5-constant", 5)):
        assert json.loads((exp / name / "config.json").read_text())["config"]["seed"] == seed
    assert "constant (2 seeds)" in (exp / "comparison.md").read_text()
    # resume the whole experiment one epoch further: both runs continue, the report covers both
    assert train_cli.main(["--resume", str(exp), "--epochs", "2", "--no-progress"]) == 0
    for name in ("seed3-constant", "seed5-constant"):
        assert len((exp / name / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit) as stop:
        train_cli.main(["--seed", "1", "--seeds", "1,2"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit):
        train_cli.main(["--seeds", "1,1"])
    assert "distinct non-negative seeds" in capsys.readouterr().err
