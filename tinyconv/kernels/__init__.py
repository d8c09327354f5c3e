"""Hand-written kernels, each beside the plain-xp version it replaces (and a test holds the two equal).

CPU kernels are numba-compiled loops (``*_cpu.py``); layers call them only for NumPy arrays of
float32 or float64, see :func:`use_cpu_kernels`. CuPy arrays always take the plain-xp path (the CUDA
kernels will sit here too, as ``*_gpu.py``).

Set ``TINYCONV_NO_NUMBA=1`` to run the plain NumPy path on the CPU as well (for comparisons).

Threads: the kernels are serial (one core each); the GEMMs use the BLAS NumPy ships with, and its
threads. Measured on 2 cores (batch 32, training step): the same kernels with numba's
``parallel=True`` were 10-15% slower overall (54x44: 117 against 103 ms; 109x89: 425 against
378 ms), as numba's worker threads and OpenBLAS's (which spin a while after each call) took turns
on the same two cores; with numba's default OpenMP layer, whose threads spin too, small steps
were 5-10x slower. Serial kernels also compile faster and are safe to call from several threads.
"""
import os

import numpy as np

try:
    import numba  # noqa: F401
except ImportError:          # numba is a dependency, but a broken install should not break tinyconv
    HAVE_NUMBA = False
else:
    HAVE_NUMBA = True

ENABLED = HAVE_NUMBA and os.environ.get("TINYCONV_NO_NUMBA", "") in ("", "0")
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def use_cpu_kernels(*arrays):
    """True when every array is a NumPy float32/float64 array and the numba kernels are enabled."""
    return ENABLED and all(type(a) is np.ndarray and a.dtype in _DTYPES for a in arrays)

