"""kernels/allocator.py: after keep_freed_memory() a freed large array's pages are reused (no page
faults on the next allocation of that size); TINYCONV_KEEP_FREED_MEMORY=0 leaves glibc alone.

Each case runs in a fresh interpreter: the setting is per process and cannot be undone.
"""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc only")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 40 MB: above glibc's largest automatic mmap threshold (32 MiB), so by default every such
# allocation is a fresh mapping whose pages fault in on first touch.
SNIPPET = """
import resource, sys
import numpy as np
from tinyconv.kernels import allocator
applied = allocator.keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(10_000_000, np.float32)             # allocate, touch, free
before = faults()
a = np.ones(10_000_000, np.float32)         # the same size again
print(applied, faults() - before)
"""


def run(env_value):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TINYCONV_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["TINYCONV_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_freed_large_blocks_are_reused():
    applied, faults = run(None)
    assert applied
    assert faults < 5                                   # the freed pages were reused


def test_can_be_turned_off():
    applied, faults = run("0")
    assert not applied
    assert faults >= 5                                  # glibc's default: a fresh mapping, faulted in


def test_the_cpu_kernels_apply_it_on_first_use():
    snippet = ("import numpy as np\nfrom tinyconv.kernels import allocator\nfrom tinyconv import Conv2D\n"
               "assert allocator._state is None\n"
               "Conv2D(1, 1, 3).forward(np.ones((1, 1, 600, 600), np.float32))\n"
               "print(allocator._state)")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TINYCONV_KEEP_FREED_MEMORY", None)
    out = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"]
