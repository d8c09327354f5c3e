"""A small persistent thread pool for the numba ops (ops/*_numba.py): each splits its work into parts.

    run_parts(fn, parts)      calls fn(0), ..., fn(parts - 1): part 0 on the calling thread, the
                              others on the pool's threads, and returns when all are done

The numba kernels are compiled ``nogil=True`` and NumPy's matmul releases the GIL, so the parts run
on separate cores. Inside ``run_parts`` the BLAS is held to one thread (through threadpoolctl: a
few microseconds per call), so each part's GEMMs run in its own thread, and OpenBLAS's threads,
which spin a while after each call, never compete with the pool's.

Results do not depend on the number of threads: the ops split their work into parts whose
boundaries do not depend on it (images, channels or element ranges written by one part only; the
convolution's dw and db as one partial sum per chunk of images, added in chunk order by the caller),
and the GEMMs inside run on one BLAS thread even when the pool has one thread (OpenBLAS's threaded
GEMMs round differently), whichever thread calls. This holds when one Python thread at a time
trains; a second thread that calls in while the pool is busy runs its parts serially (its results
then agree to BLAS rounding: rarely, 1 forward in a few hundred here, an OpenBLAS GEMM of such a
thread still ran multi-threaded).

The number of threads is the number of cores this process may use (``os.sched_getaffinity``),
or ``TINYCONV_NUM_THREADS``, or :func:`set_num_threads`. Without threadpoolctl it is 1 (the
kernels then run serially and the GEMMs use the BLAS's threads).
"""
import contextlib
import os
import threading

from .allocator import keep_freed_memory

_local = threading.local()      # .inside: this thread is a helper (nested calls run serially)
_num_threads = None
_blas = None                    # threadpoolctl's BLAS controllers, or () when there are none
_blas_local = None              # OpenBLAS's openblas_set_num_threads_local functions, or ()


def _blas_controllers():
    global _blas
    if _blas is None:
        try:
            import numpy  # noqa: F401  (the BLAS must be loaded before threadpoolctl looks for it)
            from threadpoolctl import ThreadpoolController
            _blas = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:           # not installed, or an unknown BLAS
            _blas = ()
    return _blas


def _blas_local_setters():
    """OpenBLAS's per-thread setting (``openblas_set_num_threads_local``, OpenBLAS >= 0.3.27).

    The global ``openblas_set_num_threads`` that threadpoolctl calls does not always reach a
    thread other than the main one: measured with OpenBLAS 0.3.31 here, a worker thread that set 1
    still ran its GEMMs on 2 threads (and so rounded them differently) once the main thread had
    used OpenBLAS. The per-thread setting does reach it, so the pool sets it in every thread that
    runs parts."""
    global _blas_local
    if _blas_local is None:
        setters = []
        for c in _blas_controllers():
            if getattr(c, "internal_api", "") != "openblas":
                continue
            try:
                import ctypes
                fn = ctypes.CDLL(c.filepath).openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            setters.append(fn)
        _blas_local = tuple(setters)
    return _blas_local


def _default_num_threads():
    env = os.environ.get("TINYCONV_NUM_THREADS", "")
    if env:
        return max(1, int(env))
    if not _blas_controllers():
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # not on Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads():
    """Threads the CPU kernels use (the calling thread included)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_num_threads()
    return _num_threads


def set_num_threads(n):
    """Use ``n`` threads from now on (1: everything on the calling thread)."""
    global _num_threads
    _num_threads = max(1, int(n))


# Below this many elements of work a pass runs on one thread: waking a pool thread costs about
# 0.1 ms (measured on 2 cores), as much as a pass over 64 Ki float32 elements.
MIN_PARALLEL_ELEMENTS = 1 << 16


def parts_for(units, elements):
    """How many parts to cut ``units`` (images, channels, elements) into, for a pass over
    ``elements`` elements: one per thread, at most one per unit, one for small passes."""
    if elements < MIN_PARALLEL_ELEMENTS:
        return 1
    return max(1, min(get_num_threads(), units))


def split(n, parts, i):
    """Bounds (start, stop) of part i of range(n) cut into ``parts`` near-equal pieces."""
    return i * n // parts, (i + 1) * n // parts


class _Helper:
    """A daemon thread that runs ``fn(i)`` for each part handed to it. Raw locks as semaphores
    (start: main -> helper, done: helper -> main): about 30 microseconds per handover here,
    against about 90 through concurrent.futures."""

    def __init__(self):
        self.start, self.done = threading.Lock(), threading.Lock()
        self.start.acquire()
        self.done.acquire()
        self.work, self.error = None, None
        threading.Thread(target=self._loop, daemon=True, name="tinyconv-cpu").start()

    def _loop(self):
        _local.inside = True
        for set_local in _blas_local_setters():     # this thread only ever runs parts
            set_local(1)
        while True:
            self.start.acquire()
            fn, indexes = self.work
            try:
                for i in indexes:
                    fn(i)
            except BaseException as e:      # handed back to the caller
                self.error = e
            self.work = None
            self.done.release()


_helpers = []                   # get_num_threads() - 1 helpers, started on first use
_busy = threading.Lock()        # one run_parts at a time; a concurrent caller runs serially


@contextlib.contextmanager
def _blas_on_one_thread(also_global):
    """The calling thread's GEMMs on one BLAS thread (OpenBLAS's per-thread setting), and with
    ``also_global`` the BLAS's global setting too; both restored on exit."""
    blas = _blas_controllers() if also_global else ()
    saved = [c.get_num_threads() for c in blas]
    for c in blas:
        c.set_num_threads(1)
    saved_local = [set_local(1) for set_local in _blas_local_setters()]
    try:
        yield
    finally:
        for set_local, n in zip(_blas_local_setters(), saved_local):
            set_local(n)
        for c, n in zip(blas, saved):
            c.set_num_threads(n)


def run_parts(fn, parts):
    """Call fn(i) for i in range(parts), concurrently; part 0 on this thread. Exceptions propagate.

    The BLAS is held to one thread throughout, with one thread here too, so that every GEMM runs
    single-threaded whatever the thread count (OpenBLAS's multi-threaded GEMMs round differently).
    The first call also applies kernels/allocator.py (once per process).
    """
    keep_freed_memory()
    if getattr(_local, "inside", False):
        for i in range(parts):      # a helper (its BLAS is at 1 thread for good): run serially
            fn(i)
        return
    if not _busy.acquire(blocking=False):
        # another thread is using the pool: run serially, this thread's GEMMs on 1 BLAS thread too
        # (per thread only: the global setting belongs to the pool's user, which restores it)
        with _blas_on_one_thread(also_global=False):
            for i in range(parts):
                fn(i)
        return
    try:
        with _blas_on_one_thread(also_global=True):
            _run(fn, parts, min(get_num_threads(), parts))
    finally:
        _busy.release()


def _run(fn, parts, threads):
    if threads <= 1:
        for i in range(parts):
            fn(i)
        return
    while len(_helpers) < threads - 1:
        _helpers.append(_Helper())
    used = _helpers[:threads - 1]
    for t, h in enumerate(used, start=1):
        h.error = None
        h.work = (fn, range(t, parts, threads))
        h.start.release()
    error = None
    try:
        for i in range(0, parts, threads):
            fn(i)
    except BaseException as e:
        error = e
    for h in used:                  # wait for all before raising: no part outlives the call
        h.done.acquire()
        error = error or h.error
        h.error = None
    if error is not None:
        raise error
