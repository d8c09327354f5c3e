"""Data-parallel training over processes and machines: MPI (mpi4py) for CPU arrays and for the
host-side messages, NCCL (``cupy.cuda.nccl``) for GPU arrays. No sockets of our own.

Launched as ``mpiexec -n R python train.py ...`` (or ``srun``), every process (rank) runs the same
program: R copies of the model, each rank computes the gradient of its share of every global batch,
one allreduce sums the gradients (one contiguous buffer: the optimizer's flat gradient buffer), and
every rank takes the same optimizer step, so the copies stay equal. Started without a launcher,
:func:`init` returns the one-process :class:`Communicator` and nothing here costs anything.

Use in your own loop (docs/distributed.md walks through it)::

    comm = distributed.init("cpu")                  # or "gpu": one device per rank, NCCL
    comm.broadcast_parameters(model)                # ranks start equal even if seeded differently
    opt = Adam(model.parameters())
    grads = opt.flat_gradients()                    # one buffer holding every gradient
    for x, y in my_batches:                         # each rank: its share of the global batch
        ...forward, loss * (len(x) / B), backward...
        comm.allreduce(grads)                       # sum over ranks: the global batch's gradient
        opt.step()

How a global batch of B rows is split: :func:`share` gives rank r rows ``[lo, hi)`` of the batch's
rows (in the batch's sorted order, the order one process uses), as even as possible; rank r's loss
is its rows' mean times ``(hi - lo) / B``, so the sum over ranks is the mean over B, exactly what
one process computes.
"""
import os
import sys
import time

import numpy as np

from .backend import is_gpu_array

# Environment variables that MPI launchers set in each process (Open MPI, MPICH/Hydra, Intel MPI,
# Slurm's srun). A process that sees one of these with a size above 1 was started as one rank of
# several, and must not quietly train alone.
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS")


class DistributedError(RuntimeError):
    """A data-parallel set-up that cannot work (no mpi4py under a launcher, a batch smaller than the
    number of ranks, ...), with a message that says what to do."""


def launched_size():
    """The number of ranks a launcher started, from its environment variables (1 when none)."""
    for var in _SIZE_VARS:
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 1:
            return int(v)
    return 1


def share(total, size, rank):
    """Rows ``[lo, hi)`` of ``total`` that rank ``rank`` of ``size`` takes: the first ``total % size``
    ranks take one row more, so the shares differ by at most one."""
    base, extra = divmod(int(total), int(size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class Communicator:
    """One process: rank 0 of 1. Every collective is the identity, so a training loop written for R
    ranks runs unchanged (and bit for bit as before) in one process.

    ``seconds``/``bytes``/``calls`` count the gradient allreduces (the communication a step pays: on
    the GPU the seconds NCCL ran, from CUDA events);
    ``reset_counters`` starts a new count (per epoch in training.py)."""
    rank, size, local_rank, local_size = 0, 1, 0, 1
    backend = "none"
    parallel = False        # True for MPI: the training loop takes its data-parallel path (even at R = 1)

    def __init__(self):
        self.reset_counters()

    def reset_counters(self):
        self._seconds, self.bytes, self.calls, self._events = 0.0, 0, 0, []

    @property
    def seconds(self):
        """Seconds in gradient allreduces since the last reset (on the GPU, read from CUDA events:
        reading waits for the last one to finish)."""
        if self._events:
            import cupy
            self._events[-1][1].synchronize()
            self._seconds += sum(cupy.cuda.get_elapsed_time(a, b) for a, b in self._events) / 1e3
            self._events = []
        return self._seconds

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce(self, buf):
        """Sum ``buf`` (NumPy or CuPy) over the ranks, in place."""
        return buf

    def allreduce_small(self, values):
        """Sum a small float64 array (NumPy, or CuPy on the GPU) over the ranks, in place: control
        values, evaluation sums, BatchNorm's statistics; not timed as gradient communication."""
        return values

    def broadcast(self, obj, root=0):
        """A picklable Python object from ``root`` (small things only: settings, paths, decisions)."""
        return obj

    def broadcast_array(self, a, root=0):
        """``a`` (NumPy or CuPy) from ``root``, in place."""
        return a

    def broadcast_parameters(self, model, root=0):
        """Every parameter and buffer of ``model`` from ``root``: the ranks start equal."""
        for layer in model.layers:
            for d in (layer.params, layer.buffers):
                for a in d.values():
                    self.broadcast_array(a, root)

    def average_buffers(self, model):
        """The mean over ranks of every layer buffer (BatchNorm's running statistics), in place."""

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.exit(code)


def _reduce_arrays(comm, arrays, xp, average=False):
    """Sum (or average) several small arrays over the ranks in one allreduce of a float64 buffer."""
    if not arrays:
        return
    flat = comm.allreduce_small(xp.concatenate([a.astype(xp.float64).ravel() for a in arrays]))
    if average:
        flat /= comm.size
    off = 0
    for a in arrays:
        a[...] = flat[off:off + a.size].reshape(a.shape).astype(a.dtype)
        off += a.size


class MPICommunicator(Communicator):
    """R ranks over MPI (mpi4py's COMM_WORLD); GPU arrays over NCCL when ``device == "gpu"``."""
    backend = "mpi"
    parallel = True

    def __init__(self, device="cpu"):
        super().__init__()
        from mpi4py import MPI
        self.MPI = MPI
        self.world = MPI.COMM_WORLD
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.node = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)   # the ranks on this node
        self.local_rank, self.local_size = self.node.Get_rank(), self.node.Get_size()
        self.nccl = None
        if device == "gpu":
            self._init_nccl()

    def _init_nccl(self):
        from .backend import require_gpu
        cp = require_gpu()
        count = cp.cuda.runtime.getDeviceCount()
        if count == 1:                       # the launcher gave this rank its own device (srun --gpus-per-task)
            device = 0
        elif self.local_size <= count:       # the node's devices, one per rank on the node
            device = self.local_rank
        else:
            raise DistributedError(f"{self.local_size} ranks on this node but {count} GPU(s): start at most "
                                   f"{count} ranks per node with --device gpu (one GPU each)")
        cp.cuda.Device(device).use()
        buses = self.node.allgather(cp.cuda.Device(device).pci_bus_id)
        if len(set(buses)) < len(buses):
            raise DistributedError(f"two ranks on this node share the GPU at {buses[self.local_rank]}: give each "
                                   "rank its own device (CUDA_VISIBLE_DEVICES or the launcher's GPU binding)")
        from cupy.cuda import nccl
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.world.bcast(uid, root=0)
        self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.backend = "mpi+nccl"

    # --- collectives -------------------------------------------------------------------------
    def allreduce(self, buf):
        if is_gpu_array(buf):                # timed on the stream: NCCL runs asynchronously
            import cupy
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            self._allreduce_device(buf)
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            self.world.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            self._seconds += time.perf_counter() - t0
        self.bytes += _ring_bytes(buf.nbytes, self.size)
        self.calls += 1
        return buf

    def _allreduce_device(self, buf):
        """NCCL on the current stream (asynchronous: ordered after the backward that wrote ``buf``
        and before the optimizer step that reads it, with no host wait)."""
        if self.nccl is None:
            raise DistributedError("a GPU array to allreduce, but this communicator was made for the CPU: "
                                   "init('gpu')")
        import cupy
        from cupy.cuda import nccl
        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self.nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, types[buf.dtype], nccl.NCCL_SUM,
                            cupy.cuda.get_current_stream().ptr)

    def allreduce_small(self, values):
        if is_gpu_array(values):
            self._allreduce_device(values)
        else:
            self.world.Allreduce(self.MPI.IN_PLACE, values, op=self.MPI.SUM)
        return values

    def broadcast(self, obj, root=0):
        return self.world.bcast(obj, root=root)

    def broadcast_array(self, a, root=0):
        if is_gpu_array(a):                      # once, at the start: through the host is fine
            import cupy
            host = cupy.asnumpy(a)
            self.world.Bcast(host, root=root)
            a.set(host)
        else:
            self.world.Bcast(a, root=root)
        return a

    def average_buffers(self, model):
        arrays = [a for layer in model.layers for a in layer.buffers.values()]
        if arrays:
            from .backend import get_array_module
            _reduce_arrays(self, arrays, get_array_module(arrays[0]), average=True)

    def barrier(self):
        self.world.Barrier()

    def abort(self, code=1):
        """Stop every rank (MPI_Abort): what a rank that failed calls, so no rank waits forever in
        a collective the failed one will never join. It waits half a second first: the launcher forwards
        each rank's output asynchronously and drops what it has not forwarded when the job is torn down."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)
        self.world.Abort(code)


class DropoutShards:
    """Dropout masks drawn per global sample: before a rank's forward each Dropout layer skips the
    masks of the rows before the rank's share, after the step those after it (``Dropout.skip``), so
    sample i of a batch gets the mask it gets in one process and every rank's generator ends the
    step in the same state (the one a checkpoint saves)."""

    def __init__(self, model, input_shape):
        from .layers.activations import Dropout
        self.layers = []
        shape = tuple(input_shape)
        for layer in model.layers:
            if isinstance(layer, Dropout):
                self.layers.append((layer, int(np.prod(shape))))
            shape = layer.output_shape(shape)

    def before(self, batch):
        for layer, features in self.layers:
            layer.skip(batch.offset, features)

    def after(self, batch):
        for layer, features in self.layers:
            layer.skip(batch.total - batch.offset - len(batch.index), features)


def _ring_bytes(nbytes, size):
    """Bytes each rank sends in a ring allreduce of ``nbytes``: 2 (R - 1) / R of the buffer."""
    return int(2 * (size - 1) * nbytes // size) if size > 1 else 0


_COMM = None


def init(device="cpu"):
    """The communicator of this process (made once): :class:`MPICommunicator` when a launcher
    started several ranks, or when the program imported ``mpi4py.MPI`` itself (then even one rank
    goes through MPI and NCCL: how a one-GPU machine tests that path), else the one-process
    :class:`Communicator` (so ``mpiexec -n 1`` is the plain run, bit for bit, by construction). ``device="gpu"`` puts each rank on its own GPU (its rank on the node) and
    sets up NCCL. Raises DistributedError, saying what to install, when a launcher started several
    ranks and mpi4py is missing."""
    global _COMM
    if _COMM is not None:
        return _COMM
    size = launched_size()
    mpi_loaded = "mpi4py.MPI" in sys.modules
    if size == 1 and not mpi_loaded:
        _COMM = Communicator()
        return _COMM
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise DistributedError(
            f"started as one of {size} ranks (by mpiexec or srun), but mpi4py is not installed: "
            "pip install -e \".[mpi]\" (mpi4py and the mpich wheel, which puts mpiexec in the venv), "
            "or run without the launcher for one process") from None
    comm = MPICommunicator(device)
    _COMM = comm if comm.size > 1 or mpi_loaded else Communicator()
    return _COMM


def set_rank_threads(comm):
    """CPU ranks split the node's cores: each rank's kernel threads = cores / ranks on this node,
    unless TINYCONV_NUM_THREADS is set. Call before the first kernel runs."""
    if comm.local_size <= 1 or os.environ.get("TINYCONV_NUM_THREADS"):
        return None
    from .kernels.threads import set_num_threads
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count() or 1
    # a launcher that binds ranks to cores already gave this rank its share
    n = allowed if allowed < (os.cpu_count() or allowed) else max(1, allowed // comm.local_size)
    set_num_threads(n)
    return n
