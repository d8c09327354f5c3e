import os

import numpy as np
import pytest

# Keep tools from writing into the home folder during tests.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from tinyconv.backend import gpu_available  # noqa: E402


def _xp_params():
    gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
    return [pytest.param("numpy", id="cpu"), pytest.param("cupy", id="gpu", marks=[gpu, pytest.mark.gpu])]


@pytest.fixture(params=_xp_params())
def xp(request):
    """The array module under test: NumPy always; CuPy where a GPU is present (else skipped)."""
    if request.param == "numpy":
        return np
    import cupy
    return cupy


@pytest.fixture
def device(xp):
    return "cpu" if xp is np else "gpu"


# The small built-in set that the end-to-end training tests share (train.py's own tests and the
# data-parallel ones): 160 synthetic faces at 40x32, prepared once per test module.
SMALL_SIZE, SMALL_COUNT = (40, 32), 160


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """A cache folder holding the small built-in set, ready for --cache-dir."""
    from tinyconv.training import TrainConfig, open_data
    d = tmp_path_factory.mktemp("data")
    open_data(TrainConfig(cache_dir=str(d), image_size=SMALL_SIZE, synthetic_count=SMALL_COUNT,
                          progress=False)).close()
    return d
