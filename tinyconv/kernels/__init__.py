"""Hand-written kernels, each beside the plain-xp version it replaces (and a test holds the two equal).

CPU kernels are numba-compiled loops (``*_cpu.py``); layers call them only for NumPy arrays of
float32 or float64, see :func:`use_cpu_kernels`. CuPy arrays always take the plain-xp path (the CUDA
kernels will sit here too, as ``*_gpu.py``).

Set ``TINYCONV_NO_NUMBA=1`` to run the plain NumPy path on the CPU as well (for comparisons).

Threads: unless ``NUMBA_THREADING_LAYER`` is set, tinyconv selects numba's ``workqueue`` layer. The
default, OpenMP, spin-waits after every parallel loop; beside OpenBLAS's own threads (the GEMMs)
on 2 cores that spinning cost 5-10x the CPU time of a small training step. The workqueue layer
sleeps instead, but must not be entered by two threads at once: every kernel launch goes through
:func:`launcher`, which serialises them with a lock.
"""
import functools
import os
import threading

import numpy as np

try:
    import numba
except ImportError:          # numba is a dependency, but a broken install should not break tinyconv
    HAVE_NUMBA = False
else:
    HAVE_NUMBA = True
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"

ENABLED = HAVE_NUMBA and os.environ.get("TINYCONV_NO_NUMBA", "") in ("", "0")
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def use_cpu_kernels(*arrays):
    """True when every array is a NumPy float32/float64 array and the numba kernels are enabled."""
    return ENABLED and all(type(a) is np.ndarray and a.dtype in _DTYPES for a in arrays)


_LAUNCH_LOCK = threading.Lock()


def launcher(kernel):
    """Wrap a numba kernel so that launches from several Python threads take turns."""
    @functools.wraps(kernel)
    def launch(*args):
        with _LAUNCH_LOCK:
            return kernel(*args)
    launch.kernel = kernel
    return launch
