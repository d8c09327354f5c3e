"""Batches over one split of a prepared HDF5 file: seeded shuffles, background prefetch, bounded memory.

Order: the split's rows are permuted by ``np.random.default_rng([seed, epoch]).permutation(n)``
(a pure function of seed and epoch); batch ``k`` holds ``order[k*B:(k+1)*B]``. ``start_batch`` skips
the first batches of that order, so resuming mid-epoch gives exactly the batches an unbroken run
would have seen. Within a batch the rows come sorted (so HDF5 reads are forward runs);
``batch.index`` says which rows they are.

Shards (data-parallel training, tinyconv/distributed.py): ``shard=(rank, size)`` gives each rank
rows ``[lo, hi)`` of every batch's sorted rows (``distributed.share``), and the rank reads only
those; the ranks' shares, in rank order, are the batch one process reads.

Streaming (``resident=False``): one background thread reads each batch's sorted index runs from the
file into a fresh uint8 (B, H, W, 3) array and puts it on a queue of at most ``prefetch`` batches, so
memory holds at most ``prefetch + 2`` batches whatever the dataset size. The main thread converts:
uint8 NHWC -> float32 NCHW / 255, on the device (for the GPU the uint8 batch is uploaded, 4x fewer
bytes than float32, and converted there).

GPU streaming, ordered by construction: the worker only reads, into page-locked host buffers
(:class:`_PinnedRing`); the consumer uploads each batch on its **own current stream** (an
asynchronous copy from pinned memory: the host does not wait) and converts it there. Device memory
is thus allocated, written, read and freed on one stream, so CuPy's pool can never hand a block to a
copy while a kernel that reads it is still queued (an upload on a separate non-blocking stream could:
the pool returns a freed block to the allocating stream's arena without ordering it after the
consumer's kernels). A host buffer is refilled only after the copy out of it has completed: the
consumer records an event after each copy and the worker waits on it.

Resident (``resident=True``): the split's uint8 images are loaded once (to the GPU for
``device="gpu"``, to RAM on the CPU) and each batch is a gather on that array.
"""
import queue
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from ..backend import require_gpu, xp_for
from .errors import DataError


@dataclass
class Batch:
    """x: float32 (B, 3, H, W) in [0, 1] on the device; y: float32 (B, K) on the device;
    index: int64 (B,) NumPy row numbers within the split. With a shard (data-parallel ranks), these
    are this rank's rows ``[offset, offset + B)`` of a global batch of ``total`` rows."""
    x: object
    y: object
    index: np.ndarray
    total: int = None
    offset: int = 0

    def __post_init__(self):
        if self.total is None:
            self.total = len(self.index)


def epoch_order(n, seed, epoch, shuffle=True):
    """The order of the ``n`` rows of a split in this epoch: int64 (n,)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int64)


def num_batches(n, batch_size, drop_last=False):
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def read_rows(dset, rows, out=None):
    """Read sorted, unique ``rows`` of an h5py dataset by contiguous runs: one slice read per run.

    h5py fancy indexing is slow for scattered rows; ``read_direct`` per run writes straight into
    ``out`` without temporary copies. Returns ``out`` with shape (len(rows),) + dset.shape[1:].
    """
    rows = np.asarray(rows, dtype=np.int64)
    if out is None:
        out = np.empty((len(rows),) + dset.shape[1:], dtype=dset.dtype)
    if len(rows) == 0:
        return out
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [len(rows)]))
    for i, j in zip(starts, stops):
        a = int(rows[i])
        dset.read_direct(out, source_sel=np.s_[a:a + (j - i)], dest_sel=np.s_[i:j])
    return out


def to_model_input(x_u8, xp):
    """uint8 (B, H, W, 3) on its device -> float32 (B, 3, H, W) in [0, 1], C-contiguous.

    Division (not multiplication by 1/255) keeps 255 -> exactly 1.0.
    """
    x = xp.ascontiguousarray(x_u8.transpose(0, 3, 1, 2), dtype=xp.float32)
    x /= 255.0
    return x


_END = object()


class _Failure:
    def __init__(self, exc):
        self.exc = exc


def _worker(produce, q, stop):
    """Background thread body: put each produced item on ``q`` until done or told to stop.

    It holds no reference to the iterator, so an abandoned iterator can be garbage-collected,
    and its finalizer then sets ``stop``.
    """
    try:
        for item in produce(stop):
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        item = _END
    except BaseException as exc:  # surfaced in the consumer, never lost in the thread
        item = _Failure(exc)
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return
        except queue.Full:
            continue


def _shutdown(stop, q, thread):
    stop.set()
    try:  # unblock a worker waiting on a full queue
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=5)


class _PinnedRing:
    """``slots`` page-locked host buffers that the prefetch thread fills in turn (see the module
    docstring). ``slots`` must exceed the queue's depth by 2: when the worker refills slot i, the
    consumer has finished ``upload`` for the batch that last used it (it has taken the next one off
    the queue), so its event exists."""

    def __init__(self, cp, slots):
        self.cp = cp
        self.buffers = [None] * slots          # flat uint8 pinned arrays, grown when needed
        self.events = [None] * slots           # recorded after the copy out of each slot

    def read(self, i, images, rows):
        """Read ``rows`` of ``images`` into slot i (after its last copy finished) -> (i, host view)."""
        ev = self.events[i]
        if ev is not None:
            ev.synchronize()
        shape = (len(rows),) + images.shape[1:]
        nbytes = int(np.prod(shape)) * images.dtype.itemsize
        if self.buffers[i] is None or self.buffers[i].nbytes < nbytes:
            import cupyx
            self.buffers[i] = cupyx.empty_pinned((max(nbytes, 1),), dtype=np.uint8)
        view = self.buffers[i][:nbytes].view(images.dtype).reshape(shape)
        return i, read_rows(images, rows, out=view)

    def upload(self, item):
        """(slot, host view) -> the device array, copied on the caller's current stream."""
        i, view = item
        stream = self.cp.cuda.get_current_stream()
        x = self.cp.empty(view.shape, dtype=view.dtype)
        x.set(view, stream=stream)             # asynchronous: pinned source, the consumer's stream
        ev = self.cp.cuda.Event(disable_timing=True)
        ev.record(stream)
        self.events[i] = ev
        return x


class BatchIterator:
    """Iterator of :class:`Batch` over one split; see the module docstring. ``len()`` = batches left.

    Close it (or leave the ``for`` loop and drop it, or use ``with``) to stop the prefetch thread.
    """

    def __init__(self, dataset, split, batch_size, seed=0, epoch=0, shuffle=True, start_batch=0,
                 device="cpu", resident=False, drop_last=False, prefetch=2, shard=None):
        n = dataset.split_size(split)
        total = num_batches(n, batch_size, drop_last)
        if not 0 <= start_batch <= total:
            raise ValueError(f"start_batch must be in [0, {total}], got {start_batch}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self.xp = xp_for(device)  # raises with a clear message when the GPU is missing
        self.device = device
        order = epoch_order(n, seed, epoch, shuffle)
        # sorted rows of each remaining batch, computed up front: cheap (8 bytes per image)
        self._batches = [np.sort(order[k * batch_size:(k + 1) * batch_size])
                         for k in range(start_batch, total)]
        self._totals = [len(rows) for rows in self._batches]
        self._offsets = [0] * len(self._batches)
        if shard is not None and shard[1] > 1:
            from ..distributed import share
            rank, size = shard
            spans = [share(len(rows), size, rank) for rows in self._batches]
            self._offsets = [lo for lo, _ in spans]
            self._batches = [rows[lo:hi] for rows, (lo, hi) in zip(self._batches, spans)]
        self._labels = dataset.labels(split)
        self._path = dataset.path
        self._pos = 0
        self._thread = None
        self._ring = None
        if resident:
            self._images = dataset._resident_images(split, device)
            self._queue, self._stop = None, threading.Event()
        else:
            self._images = None
            self._queue, self._stop = queue.Queue(maxsize=prefetch), threading.Event()
            self._ring = _PinnedRing(require_gpu(), prefetch + 2) if device == "gpu" else None
            produce = _streaming_producer(dataset._images_dset(), dataset._split_rows(split),
                                          self._batches, device, self._ring)
            self._thread = threading.Thread(target=_worker, args=(produce, self._queue, self._stop),
                                            name=f"tinyconv-prefetch-{split}", daemon=True)
            self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._queue or queue.Queue(),
                                           self._thread)

    def __len__(self):
        return len(self._batches) - self._pos

    def __iter__(self):
        return self

    def __next__(self):
        if self._pos >= len(self._batches):
            self.close()
            raise StopIteration
        rows, total, offset = self._batches[self._pos], self._totals[self._pos], self._offsets[self._pos]
        if self._images is not None:
            xp = self.xp
            x_u8 = self._images[xp.asarray(rows)] if xp is not np else self._images[rows]
        else:
            item = self._queue.get()
            if item is _END:
                self.close()
                raise StopIteration
            if isinstance(item, _Failure):
                self.close()
                raise DataError(f"{self._path}: reading a batch failed: {item.exc!r}") from item.exc
            x_u8 = item if self._ring is None else self._ring.upload(item)
        self._pos += 1
        x = to_model_input(x_u8, self.xp)
        y = self.xp.asarray(self._labels[rows], dtype=self.xp.float32)
        return Batch(x, y, rows, total, offset)

    def close(self):
        """Stop the prefetch thread and drop queued batches. Safe to call twice."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _streaming_producer(images, split_rows, batches, device, ring=None):
    """A generator factory yielding each batch's uint8 host images: arrays on the CPU; for the GPU,
    (slot, view) of ``ring``'s pinned buffers, which the consumer uploads (``_PinnedRing.upload``)."""
    if device == "gpu":
        cp = require_gpu()
        device_id = cp.cuda.Device().id  # the consumer's device: the worker's event waits need it

    def produce(stop):
        if device == "gpu":
            with cp.cuda.Device(device_id):
                for k, rows in enumerate(batches):
                    if stop.is_set():
                        return
                    yield ring.read(k % len(ring.buffers), images, split_rows[rows])
        else:
            for rows in batches:
                if stop.is_set():
                    return
                yield read_rows(images, split_rows[rows])
    return produce
