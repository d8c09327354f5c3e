"""glibc malloc settings for CPU training: keep freed large blocks for reuse instead of unmapping them.

A training step allocates the same large arrays every step (layer outputs and input gradients:
~10 MB each at 54x44, ~40 MB at 109x89) and frees them before the next. By default glibc serves
blocks above a threshold (128 KiB, raised on the fly up to 32 MiB) with fresh ``mmap`` calls, and
hands free memory at the top of its heap back to the kernel beyond another threshold. Either way
the next step's array lands on pages the kernel must fault in and zero again: 1,200-1,700 page
faults per step at 54x44, and on this (virtual) machine a fault costs several microseconds.

:func:`keep_freed_memory` raises both thresholds (``mallopt``): blocks up to ``MMAP_THRESHOLD``
come from the heap, and up to ``TRIM_THRESHOLD`` of free heap stays with the process, so a step
reuses the previous step's pages. Measured with ``python3 benchmarks/cpu_train.py --no-torch``
(2 cores, same code, the setting on and off, 2026-11-27): 54x44 ~645 against ~570-590 img/s,
109x89 ~195 against ~150-175 img/s; training's peak memory the same within 2 MiB (50 / 178 / 609
MiB against 48 / 175 / 608 at 54x44 / 109x89 / 218x178). Higher thresholds (256 MiB) let the
218x178 arrays (~160 MB) into the heap too, and its peak grew by ~100 MiB (fragmentation), so
they stay memory-mapped.

The CPU kernels call it once, on first use (``threads.run_parts``); ``TINYCONV_KEEP_FREED_MEMORY=0``
(or false / no / off) turns it off. It changes the allocator of the whole process, which is why
it waits for the first CPU kernel call (a process that only uses CuPy, or only imports tinyconv,
keeps glibc's defaults). Elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""
import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 64 << 20       # blocks up to this size come from the heap (glibc's default: <= 32 MiB)
TRIM_THRESHOLD = 128 << 20      # free memory kept at the top of the heap (glibc's default: 2x the former)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3       # glibc's <malloc.h> parameter numbers

_state = None                   # None: not tried yet; else whether the settings took


def keep_freed_memory():
    """Apply the settings once per process; True when they are in effect (glibc only)."""
    global _state
    if _state is None:
        _state = False
        if os.environ.get("TINYCONV_KEEP_FREED_MEMORY", "").strip().lower() in ("0", "false", "no", "off"):
            return _state
        if not sys.platform.startswith("linux"):
            return _state
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):       # not glibc (musl has no mallopt)
            return _state
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        # older glibc refuses thresholds above 32 MiB (HEAP_MAX_SIZE / 2): take that then
        mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        _state = bool(mmap_ok) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _state
