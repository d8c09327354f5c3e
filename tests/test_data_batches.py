"""Batches: seeded shuffles, start_batch resume, changing batch sizes, conversion, prefetch thread,
errors surfacing from the worker, resident mode, and flat memory while streaming."""
import gc
import importlib
import tracemalloc

import numpy as np
import pytest

from tinyconv.backend import gpu_available
from tinyconv.data import DataError, Dataset, epoch_order

from conftest_data import make_h5

batches_mod = importlib.import_module("tinyconv.data.batches")


@pytest.fixture
def ds(tmp_path):
    with Dataset(make_h5(tmp_path / "d.h5", 250)) as d:  # 200 train rows
        yield d


def rows_of(it):
    return [b.index.tolist() for b in it]


def test_batch_contents_match_rows(ds):
    for b in ds.batches("train", batch_size=32, seed=1, epoch=0):
        assert b.x.dtype == np.float32 and b.x.shape == (len(b.index), 3, 54, 44)
        assert b.x.flags["C_CONTIGUOUS"]
        assert b.y.dtype == np.float32 and b.y.shape == (len(b.index), 3)
        assert b.index.dtype == np.int64
        # image i is filled with i % 251 (train rows are rows 0..199 of the file); labels are bits of i
        assert np.array_equal(b.x[:, :, 7, 5], np.repeat((b.index % 251)[:, None] / 255.0, 3, 1).astype(np.float32))
        assert np.array_equal(b.y, ((b.index[:, None] >> np.arange(3)) & 1).astype(np.float32))
    val = next(iter(ds.batches("validation", batch_size=4, shuffle=False)))
    assert val.index.tolist() == [0, 1, 2, 3] and val.x[0, 0, 0, 0] == np.float32(200 / 255)


def test_conversion_is_nchw_over_255_with_exact_ends():
    x = np.zeros((2, 3, 4, 3), np.uint8)
    x[0, 1, 2] = [0, 128, 255]
    y = batches_mod.to_model_input(x, np)
    assert y.shape == (2, 3, 3, 4) and y.dtype == np.float32 and y.flags["C_CONTIGUOUS"]
    assert y[0, 0, 1, 2] == 0.0 and y[0, 2, 1, 2] == 1.0 and y[0, 1, 1, 2] == np.float32(128) / np.float32(255)


def test_shuffle_is_a_pure_function_of_seed_and_epoch(ds):
    a = rows_of(ds.batches("train", 32, seed=5, epoch=2))
    b = rows_of(ds.batches("train", 32, seed=5, epoch=2))
    c = rows_of(ds.batches("train", 32, seed=5, epoch=3))
    d = rows_of(ds.batches("train", 32, seed=6, epoch=2))
    assert a == b and a != c and a != d
    flat = sorted(sum(a, []))
    assert flat == list(range(200))  # every row once per epoch
    order = np.random.default_rng([5, 2]).permutation(200)
    assert a[0] == sorted(order[:32].tolist())  # the documented formula
    assert np.array_equal(epoch_order(200, 5, 2), order)


def test_start_batch_resumes_exactly(ds):
    full = rows_of(ds.batches("train", 24, seed=0, epoch=4))
    for k in (0, 1, 5, len(full)):
        assert rows_of(ds.batches("train", 24, seed=0, epoch=4, start_batch=k)) == full[k:]
    assert len(ds.batches("train", 24, seed=0, epoch=4, start_batch=3)) == len(full) - 3
    with pytest.raises(ValueError):
        ds.batches("train", 24, start_batch=len(full) + 1)


def test_batch_size_may_change_between_epochs(ds):
    sizes = {}
    for epoch, bs in enumerate([16, 32, 64, 200, 7]):
        rows = rows_of(ds.batches("train", bs, seed=0, epoch=epoch))
        sizes[bs] = [len(r) for r in rows]
        assert sorted(sum(rows, [])) == list(range(200))
        assert len(rows) == ds.num_batches("train", bs)
    assert sizes[64] == [64, 64, 64, 8] and sizes[7][-1] == 200 % 7
    dropped = rows_of(ds.batches("train", 64, seed=0, epoch=0, drop_last=True))
    assert [len(r) for r in dropped] == [64, 64, 64] and len(dropped) == ds.num_batches("train", 64, True)


def test_resident_cpu_gives_the_same_batches(ds):
    s = list(ds.batches("train", 48, seed=2, epoch=1))
    r = list(ds.batches("train", 48, seed=2, epoch=1, resident=True))
    assert len(s) == len(r)
    for a, b in zip(s, r):
        assert np.array_equal(a.index, b.index) and np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("resident", [False, True])
def test_gpu_batches_equal_cpu_batches(ds, resident):
    import cupy
    for a, b in zip(ds.batches("train", 48, seed=2, epoch=1),
                    ds.batches("train", 48, seed=2, epoch=1, device="gpu", resident=resident)):
        assert isinstance(b.x, cupy.ndarray) and b.x.dtype == cupy.float32 and b.x.flags.c_contiguous
        assert np.array_equal(a.x, b.x.get()) and np.array_equal(a.y, b.y.get())


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_gpu_batches_stay_right_while_the_gpu_runs_far_behind(ds):
    """Queue long GPU work after the first batch, so that uploads and frees race ahead of the kernels
    that read each batch: every batch must still hold its own rows' images (the upload is ordered on the
    consumer's stream, and a pinned buffer is refilled only after its copy finished)."""
    import cupy
    slow = cupy.ones((2048, 2048), dtype=cupy.float32)
    seen = []
    for k, b in enumerate(ds.batches("train", 16, seed=3, epoch=0, device="gpu")):
        if k == 0:
            for _ in range(40):                 # ~a second of queued work on the consumer's stream
                slow = slow @ slow / 2048
        seen.append((b.index.copy(), b.x * 1))  # a kernel reading the batch, queued behind the work
    cupy.cuda.get_current_stream().synchronize()
    for index, x in seen:
        want = ds.images("train", index).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        assert np.array_equal(x.get(), want)


def _fake_cupy():
    """Just enough of CuPy to run _PinnedRing on the CPU, with copies that really are deferred: a copy
    queued on the stream runs only when an event recorded after it is waited on (or at the end), as a
    GPU that runs behind would run it."""
    class Stream:
        def __init__(self):
            self.pending, self.done = [], 0

        def run_until(self, n):
            while self.done < n:
                self.pending[self.done]()
                self.done += 1

    stream = Stream()

    class DeviceArray:
        def __init__(self, shape, dtype):
            self.data = np.full(shape, 77, dtype=dtype)

        def set(self, host, stream):
            stream.pending.append(lambda: np.copyto(self.data, host))

    class Event:
        def __init__(self, disable_timing=False):
            self.stream, self.at = None, 0

        def record(self, s):
            self.stream, self.at = s, len(s.pending)

        def synchronize(self):
            self.stream.run_until(self.at)

    from types import SimpleNamespace
    cuda = SimpleNamespace(Event=Event, get_current_stream=lambda: stream)
    return SimpleNamespace(cuda=cuda, empty=lambda shape, dtype: DeviceArray(shape, dtype)), stream


@pytest.mark.parametrize("slots_beyond_queue", [2, 1])
def test_pinned_ring_refills_a_buffer_only_after_its_copy(ds, monkeypatch, slots_beyond_queue):
    """The host side of the GPU upload on the CPU: the worker reads batches into the pinned ring while the
    consumer queues deferred copies out of it. With two slots beyond the queue's depth (what
    BatchIterator uses), every copy delivers its own batch; with one, a slot can be refilled before its
    copy was even queued, and a batch arrives holding another batch's images."""
    import queue
    import sys
    import threading
    import time
    import types
    cp, stream = _fake_cupy()
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=np.empty))
    prefetch = 2
    ring = batches_mod._PinnedRing(cp, prefetch + slots_beyond_queue)
    order = batches_mod.epoch_order(ds.split_size("train"), 5, 0)
    rows = [np.sort(order[k * 8:(k + 1) * 8]) for k in range(12)]
    split_rows = ds._split_rows("train")

    reads = []

    def produce(stop):                       # as _streaming_producer does, counting the reads
        for k, r in enumerate(rows):
            item = ring.read(k % len(ring.buffers), ds._images_dset(), split_rows[r])
            reads.append(k)
            yield item
    q, stop = queue.Queue(maxsize=prefetch), threading.Event()
    worker = threading.Thread(target=batches_mod._worker, args=(produce, q, stop), daemon=True)
    worker.start()
    uploaded = []
    for k in range(len(rows)):
        item = q.get()
        # a slow consumer: the worker reads as far ahead as it can (k + prefetch + 1) before the upload
        deadline = time.time() + 10
        while len(reads) < min(len(rows), k + prefetch + 2) and time.time() < deadline:
            time.sleep(0.002)
        uploaded.append(ring.upload(item))
    stream.run_until(len(stream.pending))
    stop.set()
    ok = [np.array_equal(u.data, ds.images("train", r)) for u, r in zip(uploaded, rows)]
    if slots_beyond_queue == 2:
        assert all(ok)
    else:
        assert not all(ok)


def test_early_break_and_garbage_collection_stop_the_thread(ds):
    it = ds.batches("train", 8, prefetch=2)
    thread = it._thread
    next(it)
    assert thread.is_alive()
    it.close()
    assert not thread.is_alive()
    for b in ds.batches("train", 8, prefetch=1):
        break
    it2 = ds.batches("train", 8, prefetch=1)
    next(it2)
    t2 = it2._thread
    del it2, b
    gc.collect()
    t2.join(timeout=5)
    assert not t2.is_alive()
    with ds.batches("train", 8) as it3:
        next(it3)
    assert not it3._thread.is_alive()


def test_worker_errors_surface_with_the_file_named(ds, monkeypatch):
    calls = []

    def failing(dset, rows, out=None):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk went away")
        return np.zeros((len(rows),) + dset.shape[1:], np.uint8)
    monkeypatch.setattr(batches_mod, "read_rows", failing)
    it = ds.batches("train", 16)
    next(it), next(it)
    with pytest.raises(DataError, match=r"d\.h5.*disk went away"):
        next(it)
    assert not it._thread.is_alive()


def test_streaming_memory_stays_flat(tmp_path):
    n, batch = 6000, 16
    # 6000 images of 54x44x3 = 43 MB of pixels; prefetch holds 2 batches of 16 (114 KB each).
    # Measured: about 2 MB peak (a few batches in flight); keeping every batch would need 214 MB.
    with Dataset(make_h5(tmp_path / "big.h5", n, split=(1.0, 0.0, 0.0))) as d:
        per_batch = batch * 54 * 44 * 3 * (1 + 4)  # uint8 read + float32 converted
        total = n * 54 * 44 * 3
        tracemalloc.start()
        try:
            seen = 0
            for b in d.batches("train", batch, seed=0, epoch=0, prefetch=2):
                seen += len(b.index)
                if seen == 10 * batch:
                    early_peak = tracemalloc.get_traced_memory()[1]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert seen == n
    assert peak < 12 * per_batch, (peak, per_batch)       # a handful of batches, not the dataset
    assert peak < total / 8, (peak, total)
    assert peak < early_peak + 4 * per_batch              # no growth after the first 10 batches
