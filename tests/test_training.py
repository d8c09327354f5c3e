"""The training loop end to end on a tiny synthetic set: schedules, logs, checkpoints, exact resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinyconv.checkpoint import load_checkpoint
from tinyconv.training import Run, TrainConfig, TrainingError, open_data, run_experiment

ROOT = Path(__file__).resolve().parents[1]
SIZE = (40, 32)
COUNT = 160


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A built-in synthetic set of COUNT images at 40x32, drawn and prepared once for the module."""
    d = tmp_path_factory.mktemp("data")
    cfg = TrainConfig(cache_dir=str(d), image_size=SIZE, synthetic_count=COUNT, progress=False)
    open_data(cfg).close()
    return d


def config(cache, **kw):
    base = dict(cache_dir=str(cache), image_size=SIZE, synthetic_count=COUNT, progress=False, epochs=2,
                batch_size=16, width=0.25, eval_batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert np.array_equal(a[k], b[k]), f"{k} differs"


def test_all_schedules_write_every_file(cache, tmp_path):
    cfg = config(cache, epochs=3, patience=0)
    dirs = run_experiment(cfg, ("constant", "batch-increase", "lr-decay"), tmp_path / "exp")
    assert [d.name for d in dirs] == ["constant", "batch-increase", "lr-decay"]
    for d in dirs:
        for name in ("config.json", "metrics.csv", "metrics.jsonl", "train.log", "checkpoints/last.h5",
                     "checkpoints/best.h5"):
            assert (d / name).is_file(), d / name
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        info = json.loads((d / "config.json").read_text())
        assert info["config"]["schedule"] == d.name and info["data"]["synthetic"] is True
        assert info["num_params"] > 0 and info["versions"]["numpy"]
        n_train = info["data"]["sizes"]["train"]
        assert rows[-1]["updates"] == sum(-(-n_train // r["batch_size"]) for r in rows)
        for r in rows:
            assert r["noise_scale"] == pytest.approx(r["lr"] * n_train / r["batch_size"])
            assert r["noise_scale_exact"] == pytest.approx(r["lr"] * (n_train / r["batch_size"] - 1))
            assert r["images_seen"] == n_train * r["epoch"]
    text = (tmp_path / "exp" / "comparison.md").read_text()
    assert "NOT CelebA" in text and "test accuracy" in text
    # All three start from the same weights and see the same first epoch.
    firsts = [json.loads((d / "metrics.jsonl").read_text().splitlines()[0]) for d in dirs]
    assert firsts[0]["train_loss"] == firsts[1]["train_loss"] == firsts[2]["train_loss"]


def test_plateau_changes_take_effect_next_epoch(cache, tmp_path):
    # patience 0: every epoch whose validation loss does not improve triggers a change.
    for schedule, key in (("batch-increase", "batch_size"), ("lr-decay", "lr")):
        run = Run(config(cache, schedule=schedule, epochs=4, patience=0, min_delta=10.0), tmp_path / schedule,
                  open_data(config(cache)))
        rows = run.train()
        # min_delta 10: nothing after epoch 1 counts as an improvement, so the ends of epochs 2, 3
        # and 4 each change the value, which applies from the next epoch on.
        values = [r[key] for r in rows]
        first = values[0]
        expected = [first, first, first * 2, first * 4] if key == "batch_size" else \
                   [first, first, first / 2, first / 4]
        assert values == pytest.approx(expected)
        assert [bool(r["change"]) for r in rows] == [False, False, True, True]   # the row it applies to
        assert rows[2]["change"].startswith("epoch 2:") and "did not improve" in rows[2]["change"]
        log = (tmp_path / schedule / "train.log").read_text()
        assert log.count("schedule change:") == 3   # the change after epoch 4 is logged too
        run.ds.close()


def test_resume_after_a_crash_mid_epoch_is_bit_exact(cache, tmp_path):
    ds = open_data(config(cache))
    full = Run(config(cache, epochs=3, schedule="lr-decay", patience=0), tmp_path / "full", ds)
    full.train()

    # The same run, "killed" (an uncaught error, nothing saved) in the middle of epoch 2.
    crashed = Run(config(cache, epochs=3, schedule="lr-decay", patience=0), tmp_path / "crash", ds)
    real_step, calls = crashed.step, []

    def dying_step(batch):
        calls.append(1)
        if len(calls) == 14:      # epoch 1 has 8 batches of 16: this is batch 6 of epoch 2
            raise SystemExit("simulated kill")
        return real_step(batch)

    crashed.step = dying_step
    with pytest.raises(SystemExit):
        crashed.train()
    assert load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.h5")["progress"]["epoch"] == 1
    resumed = Run.resume(tmp_path / "crash", lambda c: ds)
    resumed.train()
    assert_same_weights(weights(tmp_path / "full" / "checkpoints" / "last.h5"),
                        weights(tmp_path / "crash" / "checkpoints" / "last.h5"))
    full_rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed_rows = [json.loads(x) for x in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(full_rows, resumed_rows, strict=True):
        assert a["val_loss"] == b["val_loss"] and a["train_loss"] == b["train_loss"] and a["lr"] == b["lr"]
    ds.close()


def test_interrupt_saves_the_exact_position_and_resume_is_bit_exact(cache, tmp_path):
    ds = open_data(config(cache))
    full = Run(config(cache, epochs=2), tmp_path / "full", ds)
    full.train()

    run = Run(config(cache, epochs=2), tmp_path / "int", ds)
    real_step, calls = run.step, []

    def interrupted_step(batch):
        calls.append(1)
        if len(calls) == 11:      # Ctrl-C arrives during batch 3 of epoch 2: the loop stops after it
            run.stop.requested = True
        return real_step(batch)

    run.step = interrupted_step
    with pytest.raises(KeyboardInterrupt):
        run.train()
    progress = load_checkpoint(tmp_path / "int" / "checkpoints" / "last.h5")["progress"]
    assert (progress["epoch"], progress["batch"]) == (1, 3)
    resumed = Run.resume(tmp_path / "int", lambda c: ds)
    resumed.train()
    assert_same_weights(weights(tmp_path / "full" / "checkpoints" / "last.h5"),
                        weights(tmp_path / "int" / "checkpoints" / "last.h5"))
    a = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    b = json.loads((tmp_path / "int" / "metrics.jsonl").read_text().splitlines()[-1])
    assert a["train_loss"] == b["train_loss"] and a["train_acc_mean"] == b["train_acc_mean"]
    ds.close()


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(cache, tmp_path):
    ds = open_data(config(cache))
    run = Run(config(cache, epochs=3), tmp_path / "nan", ds)
    real_step, calls = run.step, []

    def step(batch):
        calls.append(1)
        if len(calls) == 12:     # in epoch 2: the weights go bad
            for params, _ in run.model.parameters():
                for p in params.values():
                    p[...] = np.nan
        return real_step(batch)

    run.step = step
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2.*last.h5 \(the end of epoch 1.*kept"):
        run.train()
    state = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.h5")
    assert state["progress"]["epoch"] == 1
    assert all(np.isfinite(v).all() for v in state["model"].values())
    ds.close()


def test_micro_batches_give_the_full_batch_gradient_without_batchnorm(cache):
    from tinyconv import Conv2D, Dense, GlobalAvgPool2D, ReLU, Sequential
    ds = open_data(config(cache))

    def model():
        rng = np.random.default_rng(0)
        m = Sequential([Conv2D(3, 4, 3, padding=1, rng=rng), ReLU(), GlobalAvgPool2D(), Dense(4, 3, rng=rng)])
        m.config = {}
        return m.astype(np.float64)

    results = []
    for micro in (None, 5):
        run = Run(config(cache, max_micro_batch=micro, optimizer="sgd", momentum=0.0, lr=0.1), "unused", ds,
                  model=model())
        batch = next(iter(ds.batches("train", 16, seed=0, epoch=0)))
        batch.x = batch.x.astype(np.float64)
        loss = run.step(batch)
        results.append((float(loss), run.model.state_dict()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    for k in results[0][1]:
        np.testing.assert_allclose(results[0][1][k], results[1][1][k], rtol=1e-12, atol=1e-14)
    ds.close()


def run_cli(*args, cwd, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "argument --epochs: must be in [1, inf), got 0"),
    (["--image-size", "10x10"], "each side must be in [32, 1024]"),
    (["--image-size", "big"], "expected HxW"),
    (["--factor", "1"], "factor"),
    (["--batch-size", "64", "--max-batch-size", "32"], "max_batch_size"),
    (["--attributes", "Smiling", "Wearing_Monocle", "--schedule", "constant"], "Wearing_Monocle"),
    (["--device", "gpu"], "GPU"),
    (["--resume", "no-such-run"], "no-such-run"),
])
def test_bad_arguments_give_one_clear_line(cache, tmp_path, args, message):
    if "--device" in args:
        from tinyconv.backend import gpu_available
        if gpu_available():
            pytest.skip("this machine has a GPU")
    common = ["--cache-dir", str(cache), "--synthetic-count", str(COUNT), "--image-size", "40x32",
              "--no-progress", "--width", "0.25", "--epochs", "1"]
    r = run_cli(*common, *args, cwd=tmp_path)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(cache, tmp_path):
    """The real thing: a train.py process killed with SIGKILL, resumed by a new process."""
    common = ["--schedule", "constant", "--cache-dir", str(cache), "--synthetic-count", str(COUNT),
              "--image-size", "40x32", "--no-progress", "--width", "0.25", "--epochs", "6",
              "--batch-size", "16"]
    assert run_cli(*common, "--run-dir", "full", cwd=tmp_path).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *common, "--run-dir", "killed"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1 and \
                (tmp_path / "killed" / "checkpoints" / "last.h5").exists():
            break
        time.sleep(0.02)
    time.sleep(0.05)   # into epoch 2 (six epochs: the run cannot be over before the kill)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    r = run_cli("--resume", "killed", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_weights(weights(tmp_path / "full" / "checkpoints" / "last.h5"),
                        weights(tmp_path / "killed" / "checkpoints" / "last.h5"))


def test_batches_that_would_not_fit_are_split_not_crashed(cache, tmp_path, monkeypatch):
    import tinyconv.training as training
    ds = open_data(config(cache))
    cfg = config(cache, schedule="batch-increase", epochs=3, patience=0, min_delta=10.0, max_batch_size=64)
    model_probe = Run(cfg, tmp_path / "probe", ds).model
    per_sample = training.training_bytes_per_sample(model_probe, (3,) + SIZE)
    # Pretend only ~20 samples' worth of memory is free: the cap of 64 cannot run in one piece.
    monkeypatch.setattr(training, "available_bytes", lambda device: int(20 * per_sample / 0.6))
    monkeypatch.setattr(training, "measured_bytes_per_sample", lambda model, shape, n=4: per_sample)
    run = Run(cfg, tmp_path / "small", ds)
    assert run.micro_batch == 16
    rows = run.train()
    assert [r["batch_size"] for r in rows] == [16, 16, 32]
    assert "split into micro-batches of 16" in (tmp_path / "small" / "train.log").read_text()
    monkeypatch.setattr(training, "available_bytes", lambda device: 10)
    with pytest.raises(TrainingError, match="more than the free memory"):
        Run(cfg, tmp_path / "tiny", ds)
    ds.close()


def test_lagged_losses_read_one_step_late_without_a_blocking_device_read(monkeypatch):
    """The GPU side with a stand-in for CuPy whose copies are deferred: each loss comes back one step
    late and right, read through pinned memory after an event, never by a blocking read of the device
    scalar (which would wait for the step queued after it)."""
    import sys
    import types
    from tinyconv.training import LaggedLosses
    pending = []

    class DeviceScalar:
        def __init__(self, v):
            self.v = np.float32(v)

        def astype(self, dtype, copy=True):
            return self

        def __float__(self):
            raise AssertionError("a blocking read of a device scalar")

    class Event:
        def record(self):
            self.at = len(pending)

        def synchronize(self):
            for op in pending[:self.at]:
                op()

    def asnumpy(a, out, blocking=True):
        assert not blocking
        pending.append(lambda: out.__setitem__((), a.v))

    fake = types.SimpleNamespace(float32=np.float32, asnumpy=asnumpy,
                                 cuda=types.SimpleNamespace(Event=lambda disable_timing: Event()))
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=np.empty))
    reader = LaggedLosses(fake)
    got = [reader.push(DeviceScalar(v), n) for v, n in ((0.5, 8), (0.25, 8), (0.125, 4))] + [reader.pop()]
    assert got == [None, (0.5, 8), (0.25, 8), (0.125, 4)] and reader.pop() is None
    cpu = LaggedLosses(np)
    assert cpu.push(np.float32(1.5), 3) is None and cpu.pop() == (1.5, 3)


def test_the_exact_noise_scale_has_the_momentum_factor_for_sgd(cache, tmp_path):
    """Smith & Le: g = lr / (1 - m) * (N / B - 1); hand-computed for N = 100, B = 20, lr 0.1, m 0.9."""
    from tinyconv.training import sgd_noise_scale
    assert sgd_noise_scale(0.1, 100, 20, 0.9) == pytest.approx(0.1 / 0.1 * 4)
    assert sgd_noise_scale(0.1, 100, 20) == pytest.approx(0.4)
    run = Run(config(cache, epochs=1, optimizer="sgd", momentum=0.5, lr=0.01), tmp_path / "sgd", open_data(config(cache)))
    row = run.train()[0]
    n = json.loads((tmp_path / "sgd" / "config.json").read_text())["data"]["sizes"]["train"]
    assert row["noise_scale_exact"] == pytest.approx(0.01 / 0.5 * (n / 16 - 1))
    run.ds.close()


def test_measuring_the_gradient_noise_scale_leaves_the_run_unchanged(cache, tmp_path):
    """The extra half-batch pass restores BatchNorm's running statistics and the dropout generators: a run
    measuring every step ends with the same weights, bit for bit, as one that never measures, and logs a
    positive B_simple. It measures on full batches only."""
    ds = open_data(config(cache))
    # batch 32: at 16 this small model's gradient is so noise-dominated (B_simple ~130) that the |G|^2
    # average is still negative after 20 measurements, and no estimate is given yet
    a = Run(config(cache, epochs=3, batch_size=32, noise_every=1), tmp_path / "a", ds)
    rows = a.train()
    b = Run(config(cache, epochs=3, batch_size=32, noise_every=0), tmp_path / "b", ds)
    b.train()
    assert_same_weights(weights(tmp_path / "a" / "checkpoints" / "last.h5"),
                        weights(tmp_path / "b" / "checkpoints" / "last.h5"))
    assert rows[-1]["grad_noise_scale"] is not None and rows[-1]["grad_noise_scale"] > 0
    n = ds.split_size("train")
    assert n % 32 and a.noise.updates == 3 * (n // 32)         # every full batch; never an epoch's short last one
    ds.close()


def test_noise_adaptive_runs_end_to_end_and_follows_its_measurement(cache, tmp_path):
    from tinyconv.schedules import BatchSizeFollowsNoise
    ds = open_data(config(cache))
    run = Run(config(cache, schedule="noise-adaptive", epochs=4, noise_every=1, factor=1.5, batch_size=32,
                     max_batch_size=128), tmp_path / "na", ds)
    rows = run.train()
    assert any(r["change"].startswith("epoch") and "B_simple" in r["change"] for r in rows), rows
    expect = BatchSizeFollowsNoise(32, 128, factor=1.5)
    for prev, row in zip(rows, rows[1:]):
        expect.step({"grad_noise_scale": prev["grad_noise_scale"]})
        assert row["batch_size"] == expect.batch_size and row["lr"] == rows[0]["lr"]
    ds.close()
