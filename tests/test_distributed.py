"""Data-parallel training (tinyconv/distributed.py): the pieces in one process (shares, sharded batches,
dropout masks per global sample, flat buffers, synchronised BatchNorm with threads as ranks), then
train.py under ``mpiexec -n 2`` against one process. The MPI tests need the ``mpi`` extra
(``pip install -e ".[mpi]"``: mpi4py and the mpich wheel's mpiexec) and skip, saying so, without it."""
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tinyconv import distributed
from tinyconv.backend import gpu_available
from tinyconv.checkpoint import load_checkpoint
from tinyconv.data.batches import Batch
from tinyconv.layers import BatchNorm2D
from tinyconv.layers.activations import Dropout
from tinyconv.models import seed_cnn
from tinyconv.ops import norm
from tinyconv.optim import ALIGN, SGD, Adam
from tinyconv.training import TrainConfig, open_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train as train_cli  # noqa: E402

from conftest import SMALL_COUNT as COUNT, SMALL_SIZE as SIZE  # noqa: E402


@pytest.fixture(scope="module")
def cache(small_data):
    return small_data


# --- 1. the pieces, in one process -------------------------------------------------------------------

def test_share_gives_contiguous_shares_that_differ_by_at_most_one():
    for total in range(0, 23):
        for size in range(1, 6):
            spans = [distributed.share(total, size, r) for r in range(size)]
            assert spans[0][0] == 0 and spans[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))          # contiguous, in rank order
            counts = [hi - lo for lo, hi in spans]
            assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)


def test_sharded_batches_put_together_are_the_one_process_batches(cache):
    ds = open_data(TrainConfig(cache_dir=str(cache), image_size=SIZE, synthetic_count=COUNT, progress=False))
    try:
        whole = list(ds.batches("train", 24, seed=3, epoch=1))
        for size in (2, 3):
            ranks = [list(ds.batches("train", 24, seed=3, epoch=1, shard=(r, size))) for r in range(size)]
            for k, batch in enumerate(whole):
                parts = [ranks[r][k] for r in range(size)]
                assert all(p.total == len(batch.index) for p in parts)
                assert [p.offset for p in parts] == [distributed.share(len(batch.index), size, r)[0]
                                                     for r in range(size)]
                np.testing.assert_array_equal(np.concatenate([p.index for p in parts]), batch.index)
                np.testing.assert_array_equal(np.concatenate([p.x for p in parts]), batch.x)
                np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), batch.y)
    finally:
        ds.close()


def test_dropout_masks_are_drawn_per_global_sample_whatever_the_number_of_ranks():
    B, F, p = 13, 7, 0.4
    x = np.ones((B, F), dtype=np.float32)
    one = Dropout(p, seed=5)
    steps = [one.forward(x) * 1 for _ in range(3)]                      # one process, three steps
    model = type("M", (), {"layers": []})()
    for size in (2, 3, 5):
        layers = [Dropout(p, seed=5) for _ in range(size)]
        for step in range(3):
            got = []
            for r, layer in enumerate(layers):
                model.layers = [layer]
                shards = distributed.DropoutShards(model, (F,))
                lo, hi = distributed.share(B, size, r)
                batch = Batch(None, None, np.arange(lo, hi), B, lo)
                shards.before(batch)
                got.append(layer.forward(x[lo:hi]))
                shards.after(batch)
            np.testing.assert_array_equal(np.concatenate(got), steps[step])
        states = {json.dumps(layer.rng.bit_generator.state, sort_keys=True) for layer in layers}
        assert states == {json.dumps(one.rng.bit_generator.state, sort_keys=True)}   # what a checkpoint saves


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=1e-2), lambda ps: SGD(ps, lr=0.1, momentum=0.9)],
                         ids=["adam", "sgd"])
def test_flat_buffers_align_every_parameter_and_step_as_the_separate_arrays(make):
    rng = np.random.default_rng(0)
    a, b = (seed_cnn(input_shape=(3, 40, 32), width=0.3, seed=1) for _ in range(2))   # odd channel counts
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params.values()]
             for params, _ in a.parameters()]
    opt_a, opt_b = make(a.parameters()), make(b.parameters())
    flat = opt_a.flat_gradients()
    assert any(p.size % ALIGN for params, _ in a.parameters() for p in params.values())
    for step in range(3):
        for model in (a, b):
            for (params, g), gs in zip(model.parameters(), grads):
                for k, v in zip(params, gs):
                    if k in g:
                        g[k][...] = v * (step + 1)
                    else:
                        g[k] = v * (step + 1)
        opt_a.step()
        opt_b.step()
    assert opt_a.flat.g is flat
    assert all(off % ALIGN == 0 for off in opt_a.flat.offsets)
    used = np.zeros(opt_a.flat.n, dtype=bool)
    for off, views in zip(opt_a.flat.offsets, opt_a.flat.views):
        used[off:off + views[0].size] = True
        for view in views:                                                # p, g and each slot
            assert view.__array_interface__["data"][0] % (4 * ALIGN) == 0   # 256-byte aligned in memory
    for buf in (opt_a.flat.p, opt_a.flat.g, *opt_a.flat.slot.values()):
        assert not buf[~used].any()                                       # the gaps stay zeros
    for (pa, _), (pb, _) in zip(a.parameters(), b.parameters()):
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k])                   # elementwise: the same bits


class ThreadRanks:
    """R threads as R ranks, for the collectives synchronised BatchNorm makes (allreduce_small)."""

    def __init__(self, size):
        self.size, self.local = size, threading.local()
        self.barrier = threading.Barrier(size)
        self.slots = [None] * size

    @property
    def rank(self):
        return self.local.rank

    def allreduce_small(self, values):
        self.slots[self.rank] = values.copy()
        self.barrier.wait()
        total = sum(self.slots[r] for r in range(self.size))           # the same order on every rank
        self.barrier.wait()
        values[...] = total
        return values

    def run(self, fn):
        out, errors = [None] * self.size, []

        def body(r):
            self.local.rank = r
            try:
                out[r] = fn(r)
            except BaseException as exc:    # surfaced below
                errors.append(exc)
                self.barrier.abort()
        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out


@pytest.mark.parametrize("numba", [True, False], ids=["numba", "reference"])
@pytest.mark.parametrize("sizes", [(6,), (3, 3), (2, 2, 2), (4, 2, 0)], ids=str)
def test_synchronised_batchnorm_computes_what_one_process_computes_on_the_whole_batch(sizes, numba, monkeypatch):
    """float64, the numba and the reference op: R ranks' y, dx, running statistics and the sum of their
    parameter gradients equal one process's on the concatenated batch (an empty rank takes part too;
    the two implementations send the same messages, so they could even be mixed)."""
    from tinyconv import ops
    monkeypatch.setattr(ops, "NUMBA", numba)
    rng = np.random.default_rng(1)
    C, N = 3, sum(sizes)
    x = rng.standard_normal((N, C, 4, 5)) * 2 + 1.5
    dy = rng.standard_normal((N, C, 4, 5))

    def layer():
        bn = BatchNorm2D(C, momentum=0.3, dtype=np.float64)
        bn.params["gamma"][:] = [0.5, 1.5, -2.0]
        bn.buffers["running_mean"][:] = [1.0, 1.2, 1.4]
        return bn
    whole = layer()
    y_want = whole.forward(x)
    dx_want = whole.backward(dy)

    comm = ThreadRanks(len(sizes))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    monkeypatch.setattr(norm, "SYNC", comm)

    def rank(r):
        bn, a, b = layer(), bounds[r], bounds[r + 1]
        if a == b:
            norm.sync_empty_rank([bn])
            return bn, None, None
        y = bn.forward(x[a:b])
        return bn, y, bn.backward(dy[a:b])
    results = comm.run(rank)
    monkeypatch.setattr(norm, "SYNC", None)
    want = "tinyconv.ops.norm_numba" if numba else "tinyconv.ops.norm"
    assert all(type(bn.cache).__module__ == want for bn, y, _ in results if y is not None)
    got = [res for res in results if res[1] is not None]
    np.testing.assert_allclose(np.concatenate([y for _, y, _ in got]), y_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([dx for _, _, dx in got]), dx_want, rtol=1e-10, atol=1e-12)
    for bn, _, _ in results:                                            # identical on every rank
        for k in ("running_mean", "running_var"):
            np.testing.assert_allclose(bn.buffers[k], whole.buffers[k], rtol=1e-12)
    for k in ("gamma", "beta"):                                         # what the gradient allreduce adds
        np.testing.assert_allclose(sum(bn.grads[k] for bn, _, _ in got), whole.grads[k], rtol=1e-10, atol=1e-12)


def test_cpu_ranks_split_the_nodes_cores(monkeypatch):
    from tinyconv.kernels import threads
    got = []
    monkeypatch.setattr(threads, "set_num_threads", got.append)
    monkeypatch.delenv("TINYCONV_NUM_THREADS", raising=False)
    node = type("Comm", (), {"local_size": 2})()
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert distributed.set_rank_threads(node) == 8                    # 16 cores, 2 ranks on the node
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 4, 5})
    assert distributed.set_rank_threads(node) == 3                    # the launcher bound this rank to 3
    monkeypatch.setenv("TINYCONV_NUM_THREADS", "5")
    assert distributed.set_rank_threads(node) is None                 # the user's setting stands
    assert got == [8, 3]


def test_ranks_without_mpi4py_are_told_what_to_install(monkeypatch):
    monkeypatch.setattr(distributed, "_COMM", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)                    # import mpi4py fails
    with pytest.raises(distributed.DistributedError, match=r'pip install -e "\.\[mpi\]"'):
        distributed.init("cpu")
    monkeypatch.setattr(distributed, "_COMM", None)
    monkeypatch.delenv("PMI_SIZE")
    assert distributed.init("cpu").size == 1                            # no launcher: one process
    monkeypatch.setattr(distributed, "_COMM", None)


# --- 2. train.py under mpiexec --------------------------------------------------------------------------

def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.is_file() else shutil.which("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install -e \".[mpi]\")"
    return (found, None) if found else (None, "no mpiexec on PATH (pip install -e \".[mpi]\" brings MPICH's)")


MPIEXEC, WHY = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason=WHY or "")


def cli(cache, *extra):
    return ["--cache-dir", str(cache), "--synthetic-count", str(COUNT), "--image-size", "40x32", "--no-progress",
            "--width", "0.5", "--eval-batch-size", "64", "--schedule", "constant", *extra]


def mpirun(ranks, args, cwd, timeout=300, script="train.py"):
    """``script`` (relative to the checkout, or absolute) under mpiexec -n ranks."""
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def in_process(args, cwd):
    old = os.getcwd()
    try:
        os.chdir(cwd)
        return train_cli.main(args)
    finally:
        os.chdir(old)


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoints" / "last.h5")["model"]


@needs_mpi
def test_two_ranks_with_sync_bn_give_the_one_process_weights(cache, tmp_path):
    """SGD, dropout 0, one step on the whole training split (120 images, 60 per rank): --sync-bn over 2
    ranks against one process. Tolerance per tensor: |a - b| <= 1e-5 max|b| + 1e-7. The gradients
    differ only in float32 summation order (measured: 5e-7 of a tensor's largest value; the conv
    biases, whose gradient before BatchNorm is rounding noise of ~1e-8, differ absolutely), and one SGD
    step of lr 0.05 moves weights by lr*g. Later steps part further for a reason that is not the ranks:
    near-ties in max-pool windows (the synthetic faces' flat backgrounds) fall either way under any
    change of rounding, so one process's numba and reference implementations part as much (5e-3 of the
    gradient at the third step, measured): the test compares one step. Without --sync-bn (each rank
    normalises its 60 images) the weights differ by far more, which shows the test can fail."""
    common = cli(cache, "--optimizer", "sgd", "--lr", "0.05", "--dropout", "0", "--batch-size", "128",
                 "--max-batch-size", "128", "--epochs", "1")
    assert in_process(common + ["--sync-bn", "--run-dir", "one"], tmp_path) == 0
    r = mpirun(2, common + ["--sync-bn", "--run-dir", "two"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = mpirun(2, common + ["--run-dir", "ghost"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two, ghost = (weights(tmp_path / d) for d in ("one", "two", "ghost"))
    worst_ghost = 0.0
    for k in one:
        scale = np.abs(one[k]).max()
        assert np.abs(two[k] - one[k]).max() <= 1e-5 * scale + 1e-7, k
        worst_ghost = max(worst_ghost, np.abs(ghost[k] - one[k]).max() / (scale + 1e-30))
    assert worst_ghost > 1e-3
    rows, alone = (metrics(tmp_path / d) for d in ("two", "one"))
    assert rows[-1]["ranks"] == 2 and rows[-1]["comm_time_s"] > 0 and rows[-1]["comm_bytes"] > 0
    assert alone[-1]["ranks"] == 1 and alone[-1]["comm_time_s"] == 0
    for key in ("updates", "images_seen", "train_loss", "val_loss", "val_acc_mean"):   # the global figures
        assert rows[-1][key] == pytest.approx(alone[-1][key], rel=1e-5), key
    assert "2 ranks" in (tmp_path / "two" / "train.log").read_text()
    from tinyconv.report import evaluate_runs                           # the report shows ranks and allreduce
    table = evaluate_runs([tmp_path / "two"], out=tmp_path / "report", device="cpu", progress=False)["table"]
    assert "| ranks (data-parallel processes) | 2 |" in table
    assert "| gradient allreduce time (all epochs) |" in table and "allreduce share of the training time" in table
    alone = evaluate_runs([tmp_path / "one"], out=tmp_path / "report1", device="cpu", progress=False)["table"]
    assert "ranks" not in alone                                         # one-process reports are as before
    assert not (tmp_path / "two" / "checkpoints" / "last.h5.tmp").exists()


@needs_mpi
def test_one_rank_under_mpiexec_is_the_one_process_run_bit_for_bit(cache, tmp_path):
    common = cli(cache, "--batch-size", "32", "--epochs", "1")
    assert in_process(common + ["--run-dir", "plain"], tmp_path) == 0
    r = mpirun(1, common + ["--run-dir", "mpi1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "mpi1")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@needs_mpi
def test_a_run_resumes_with_another_number_of_ranks_and_a_failing_rank_stops_all(cache, tmp_path):
    common = cli(cache, "--batch-size", "32")
    r = mpirun(2, common + ["--epochs", "1", "--run-dir", "run"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("constant epoch 1/1") == 1                   # rank 0 alone prints
    assert in_process(["--resume", "run", "--epochs", "2", "--no-progress"], tmp_path) == 0
    rows = metrics(tmp_path / "run")
    assert [row["ranks"] for row in rows] == [2, 1] and rows[1]["updates"] == 2 * rows[0]["updates"]

    # rank 1 raises in its third step: every rank stops (MPI_Abort), rank 1 says why, nothing is saved
    crash = ("import runpy, sys, tinyconv.training as t\n"
             "from tinyconv import distributed\n"
             "step = t.Run._step_ranks\n"
             "def failing(self, batch):\n"
             "    if self.comm.rank == 1 and self.updates == 2: raise RuntimeError('disk on fire')\n"
             "    return step(self, batch)\n"
             "t.Run._step_ranks = failing\n"
             "sys.argv = ['train.py'] + sys.argv[1:]\n"
             "runpy.run_path(sys.argv[0].replace('train.py', '') + '" + str(ROOT / "train.py") + "', run_name='__main__')\n")
    (tmp_path / "crash.py").write_text(crash)
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(tmp_path / "crash.py"),
                        *common, "--epochs", "1", "--run-dir", "crashed"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0
    assert "error on rank 1" in r.stderr and "disk on fire" in r.stderr
    assert not list((tmp_path / "crashed" / "checkpoints").glob("*.h5"))


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("gpu", marks=[pytest.mark.gpu,
                                      pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")])])
def test_one_rank_through_mpi_is_the_plain_run_bit_for_bit(cache, tmp_path, device):
    """A program that imports mpi4py.MPI itself gets the MPI communicator even for one rank, so one
    machine runs the whole data-parallel path (the allreduce of the flat gradients, over NCCL on a
    GPU; the control allreduce; batches of one share; the half-batch noise measurement): one rank's
    sum is the gradient itself, so the weights are the plain run's, bit for bit."""
    if MPIEXEC is None:
        pytest.skip(WHY)
    common = cli(cache, "--device", device, "--batch-size", "32", "--epochs", "2")
    assert in_process(common + ["--run-dir", "plain"], tmp_path) == 0
    script = ("from mpi4py import MPI\nimport runpy, sys\n"
              f"sys.argv = [{str(ROOT / 'train.py')!r}] + sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    (tmp_path / "nccl.py").write_text(script)
    r = subprocess.run([sys.executable, str(tmp_path / "nccl.py"), *common, "--run-dir", "nccl"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"1 rank(s) ({'mpi+nccl' if device == 'gpu' else 'mpi'})" in r.stdout
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "nccl")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@needs_mpi
def test_the_docs_own_training_loop_runs_on_two_ranks(tmp_path):
    """docs/distributed.md's example loop, as written, under mpiexec -n 2."""
    text = (ROOT / "docs" / "distributed.md").read_text()
    code = text.split("<!-- distributed-example -->\n```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "loop.py").write_text(code)
    r = mpirun(2, [], tmp_path, script=tmp_path / "loop.py")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("2 ranks, 3 steps")


WRAPPERS = {
    # Ctrl-C reaches rank 0 after a step's control allreduce, before its check: the next step's decides
    "mid-epoch": ("step = t.Run._step_ranks\n"
                  "def patched(self, batch):\n"
                  "    loss = step(self, batch)\n"
                  "    if self.comm.rank == 0 and self.epoch == 0 and self.batch == 2: self.stop.requested = True\n"
                  "    return loss\n"
                  "t.Run._step_ranks = patched\n"),
    # ... or while rank 0 writes last.h5 at an epoch's end, when the others are already past it
    "epoch-end": ("save = t.Run.save\n"
                  "def patched(self, name):\n"
                  "    save(self, name)\n"
                  "    if self.comm.rank == 0 and name == 'last' and self.epoch == 1: self.stop.requested = True\n"
                  "t.Run.save = patched\n"),
}


@needs_mpi
@pytest.mark.parametrize("when", list(WRAPPERS))
def test_a_stop_asked_of_one_rank_stops_every_rank_after_the_same_step(cache, tmp_path, when):
    """Ranks stop only on what all agreed (the control allreduce, or one at an epoch's start): every
    rank exits 130, rank 0 saved the position, and the run resumes."""
    script = ("import runpy, sys, tinyconv.training as t\n" + WRAPPERS[when] +
              f"sys.argv = [{str(ROOT / 'train.py')!r}] + sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    (tmp_path / "stop.py").write_text(script)
    r = mpirun(2, cli(cache, "--batch-size", "16", "--epochs", "3", "--run-dir", "run"), tmp_path, timeout=120,
               script=tmp_path / "stop.py")
    assert r.returncode == 130, r.stderr[-3000:]
    assert "interrupted; the position is saved" in r.stderr
    assert (tmp_path / "run" / "checkpoints" / "last.h5").is_file()
    assert in_process(["--resume", "run", "--no-progress"], tmp_path) == 0
    assert [row["epoch"] for row in metrics(tmp_path / "run")] == [1, 2, 3]
