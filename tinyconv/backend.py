"""Array-module selection: one code path for NumPy (CPU) and CuPy (GPU).

Every op begins with ``xp = get_array_module(x)`` and then uses ``xp`` only, so the
same lines run on both backends. CuPy is imported once, here, behind a guard:
importing tinyconv never needs CuPy or a GPU; asking for the GPU without them
raises :class:`GPUUnavailableError` with what is missing.
"""
import numpy as np

DEFAULT_DTYPE = np.float32

try:  # CuPy is an optional extra: pip install -e .[gpu]
    import cupy as _cupy
except Exception as exc:  # ImportError, or a broken CUDA install raising on import
    _cupy = None
    _CUPY_IMPORT_ERROR = exc
else:
    _CUPY_IMPORT_ERROR = None


class GPUUnavailableError(RuntimeError):
    """Raised when the GPU is asked for but CuPy or a CUDA device is missing."""


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device. Never raises."""
    if _cupy is None:
        return False
    try:
        return bool(_cupy.cuda.is_available())
    except Exception:
        return False


def gpu_status():
    """A one-line, human-readable account of why the GPU can or cannot be used."""
    if _cupy is None:
        return (f"CuPy is not installed ({_CUPY_IMPORT_ERROR}); install the GPU extra: "
                "`pip install -e .[gpu]` for CUDA 12 drivers, `pip install -e .[gpu-cuda13]` for CUDA 13")
    if not gpu_available():
        return f"CuPy {_cupy.__version__} is installed but sees no CUDA device (driver or GPU missing)"
    props = _cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"CuPy {_cupy.__version__} on {name}"


def require_gpu():
    """Return the cupy module, or raise GPUUnavailableError saying what is missing."""
    if not gpu_available():
        raise GPUUnavailableError("the GPU was asked for, but " + gpu_status())
    return _cupy


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (like Chainer and CuPy)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def is_gpu_array(x):
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def xp_for(device):
    """The array module for a device name: 'cpu' -> numpy, 'gpu' -> cupy (checked)."""
    if device == "cpu":
        return np
    if device == "gpu":
        return require_gpu()
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'gpu'")


def to_device(x, device):
    """Copy an array (or a dict of arrays, recursively) to 'cpu' or 'gpu'. No copy if already there."""
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if x is None:
        return None
    if device == "cpu":
        return to_cpu(x)
    return xp_for(device).asarray(x)


def to_cpu(x):
    """A NumPy array for any array (or dict of arrays, recursively)."""
    if isinstance(x, dict):
        return {k: to_cpu(v) for k, v in x.items()}
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)


def device_of(x):
    return "gpu" if is_gpu_array(x) else "cpu"
