"""Hand-written kernels, each beside the plain-xp version it replaces (and a test holds the two equal).

CPU kernels are numba-compiled loops (``*_cpu.py``); layers call them only for NumPy arrays of
float32 or float64, see :func:`use_cpu_kernels`. CuPy arrays always take the plain-xp path (the CUDA
kernels will sit here too, as ``*_gpu.py``).

Set ``TINYCONV_NO_NUMBA=1`` to run the plain NumPy path on the CPU as well (for comparisons).

Threads (``threads.py``): each layer cuts its work into parts (chunks of images for the convolution,
images or channels for BatchNorm and max-pool, element ranges for ReLU and Adam) and runs them on a
small persistent pool, one part per core, with the kernels compiled ``nogil=True`` and the BLAS held
to one thread inside (so numba's and OpenBLAS's threads never take turns on the same cores, as they
did with ``parallel=True``). The part boundaries never depend on the number of threads, so results
are bit-identical for any thread count. ``TINYCONV_NUM_THREADS`` or ``threads.set_num_threads``
choose it (default: the cores this process may use).
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

