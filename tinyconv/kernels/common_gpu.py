"""What every CUDA implementation (tinyconv/ops/*_cuda.py) shares: loading the ``.cu`` sources, launching.

The kernels' CUDA C sources are the files in ``tinyconv/kernels/cuda/`` (read them: each one says
its index algebra). CuPy compiles a file once per process with NVRTC (``cupy.RawModule``) and
caches the binary on disk (``~/.cupy``). tinyconv/ops/__init__.py sends CuPy float32 arrays here;
anything else takes the reference (plain xp). ``TINYCONV_NO_CUDA_KERNELS=1`` switches this off.

Every kernel strides over its work (a flat index, or rows and the elements along each row), so the
grid size is a tuning choice, not a correctness one: ``launch`` gives one thread per element up to
``MAX_BLOCKS`` blocks, ``launch_rows`` one y-block per row (up to 65,535) and x threads along it.
"""
import os
from pathlib import Path

import numpy as np

CUDA_DIR = Path(__file__).with_name("cuda")
THREADS = 256                 # threads per block
MAX_BLOCKS = 65536            # beyond this, threads loop (grid-stride)
_modules = {}
_functions = {}               # (module, name) -> the kernel function, looked up once per process


def source(name):
    """The CUDA C source of ``cuda/<name>.cu``."""
    return (CUDA_DIR / f"{name}.cu").read_text()


def kernel(module, name):
    """The compiled kernel ``name`` of ``cuda/<module>.cu``: the module compiled on first use, each
    function looked up once (``get_function`` builds a new RawKernel object on every call)."""
    fn = _functions.get((module, name))
    if fn is None:
        if module not in _modules:
            import cupy
            _modules[module] = cupy.RawModule(code=source(module), options=("--std=c++14",))
        fn = _functions[(module, name)] = _modules[module].get_function(name)
    return fn


def blocks_for(total):
    return int(min(max(1, -(-int(total) // THREADS)), MAX_BLOCKS))


def launch(module, name, total, *args):
    """Launch a flat grid-stride kernel with enough threads for ``total`` elements."""
    kernel(module, name)((blocks_for(total),), (THREADS,), args)


def launch_rows(module, name, rows, row_len, *args):
    """Launch a ROW_LOOP/ALONG_ROW kernel: blockIdx.y over ``rows``, x threads along ``row_len``.
    Short rows (13 x 11 = 143 elements in the last block) get a block of just enough warps."""
    threads = min(THREADS, 32 * -(-int(row_len) // 32))
    bx = min(-(-int(row_len) // threads), 1024)
    by = int(min(max(1, rows), 65535, max(1, MAX_BLOCKS * 16 // bx)))
    kernel(module, name)((bx, by), (threads,), args)


def i32(v):
    return np.int32(v)


def i64(v):
    return np.int64(v)


def f32(v):
    return np.float32(v)


def set_tf32(enabled=True):
    """Let cuBLAS run float32 GEMMs on the tensor cores in TF32 (10-bit mantissa inputs, float32
    accumulation): off by default. Affects the float32 GEMMs CuPy sends to cuBLAS from now on (the
    convolutions' and Dense's 2-D matmuls; CuPy's batched matmul does not take this compute type);
    the hand-written kernels are unaffected.
    Same as starting the process with ``CUPY_TF32=1``, but switchable at run time."""
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    from ..backend import gpu_available
    if not gpu_available():    # no device yet: the variable takes effect at CuPy's first GEMM
        return
    from cupy._core import _routines_linalg as linalg
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)


def tf32_enabled():
    from ..backend import gpu_available
    if not gpu_available():
        return os.environ.get("CUPY_TF32", "0") not in ("", "0")
    from cupy._core import _routines_linalg as linalg
    return linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
