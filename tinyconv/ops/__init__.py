"""The ops, and the one place that chooses how each runs.

Every op has one signature, whatever implements it; saved state is explicit (a small named type):
    conv2d_forward(x, params, train, stride, pad) -> (y, saved)
    conv2d_backward(saved, dy, params, grads, input_grad=True, accumulate=False) -> dx
    batchnorm_forward(x, params, buffers, train, momentum, eps) -> (y, saved)
    batchnorm_backward(saved, dy, params, grads, accumulate=False) -> dx
    bn_relu_forward / bn_relu_backward                   as batchnorm: relu(batchnorm(x))
    bn_relu_maxpool_forward(..., kernel, stride) / _backward   maxpool(relu(batchnorm(x)))
    maxpool_forward(x, kernel, stride, train) -> (y, saved);   maxpool_backward(saved, dy) -> dx
    relu_forward(x, train) -> (y, saved);                       relu_backward(saved, dy) -> dx
    dropout_forward(x, p, rng, train), dense_forward(x, params, train), global_avg_pool_forward(x)
                                                              (the reference only: no fast version)
    bce_forward(z, t, pos_weight) -> (loss, saved);             bce_backward(saved) -> dz
    adam_update(params, grads, ms, vs, lr, beta1, beta2, eps, t)   (lists of arrays, in place)
A backward writes the gradients of ``params`` into ``grads`` (grads.store_grad: into the arrays
already there; ``accumulate`` adds) and returns dx. ``train=False`` saves nothing a backward needs,
except for batchnorm, whose inference backward is supported. Each op states the bytes its saved
state keeps (``*_saved_bytes``), for the memory planner.

The implementations, each in its own file:
    reference   conv.py  norm.py  pool.py  activations.py  dense.py  loss.py  optim.py  fused.py
                plain xp, the same lines for NumPy and CuPy: the teaching text, with the formulas
    numba       *_numba.py   NumPy float32/float64, compiled loops and a thread pool (docs/cpu.md)
    CUDA        *_cuda.py    CuPy float32, the kernels in tinyconv/kernels/cuda/*.cu (docs/gpu.md)
:func:`backend` chooses from the arrays, here and nowhere else: NumPy arrays of one float dtype
(float32 or float64) with numba enabled -> numba; CuPy float32 arrays with the CUDA kernels
enabled -> CUDA; anything else (an empty array, mixed dtypes or devices, float16, ...) -> the
reference. An op without such an implementation runs the reference. A backward runs in the
implementation that made its saved state (the module that defines the saved type).

Switches: ``TINYCONV_NO_NUMBA=1`` and ``TINYCONV_NO_CUDA_KERNELS=1`` (read once, at import) leave
NumPy and CuPy arrays to the reference; tests flip :data:`NUMBA` and :data:`CUDA`.
Adding a fast op: its file beside the reference, one entry in the tables below, a test against
the reference (tests/test_kernels_cpu.py, tests/test_kernels_gpu.py).
"""
import os
import sys

import numpy as np

from ..backend import is_gpu_array
from . import activations, conv, dense, fused, loss, norm, optim, pool
from . import conv_cuda, fused_cuda, loss_cuda, norm_cuda, optim_cuda, pool_cuda   # CuPy: imported when used
from .activations import dropout_backward, dropout_forward, dropout_saved_bytes
from .dense import dense_backward, dense_forward, dense_saved_bytes
from .loss import sigmoid
from .pool import global_avg_pool_backward, global_avg_pool_forward

try:
    import numba  # noqa: F401
except ImportError:          # numba is a dependency, but a broken install should not break tinyconv
    HAVE_NUMBA = False
else:
    HAVE_NUMBA = True
    from . import activations_numba, conv_numba, fused_numba, norm_numba, optim_numba, pool_numba

NUMBA = HAVE_NUMBA and os.environ.get("TINYCONV_NO_NUMBA", "") in ("", "0")
CUDA = os.environ.get("TINYCONV_NO_CUDA_KERNELS", "") in ("", "0")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_F32 = np.dtype(np.float32)

# op -> the module implementing it, per backend
REFERENCE = {"conv2d": conv, "batchnorm": norm, "bn_relu": fused, "bn_relu_maxpool": fused, "maxpool": pool,
             "relu": activations, "bce": loss, "adam": optim}
FAST = {
    "numba": {"conv2d": conv_numba, "batchnorm": norm_numba, "bn_relu": fused_numba,
              "bn_relu_maxpool": fused_numba, "maxpool": pool_numba, "relu": activations_numba,
              "adam": optim_numba} if HAVE_NUMBA else {},
    "cuda": {"conv2d": conv_cuda, "batchnorm": norm_cuda, "bn_relu": fused_cuda, "bn_relu_maxpool": fused_cuda,
             "maxpool": pool_cuda, "bce": loss_cuda, "adam": optim_cuda},
}


def backend_for(device, dtype):
    """'numba', 'cuda' or 'reference': what runs arrays of ``dtype`` on ``device`` ('cpu' or 'gpu')."""
    dtype = np.dtype(dtype)
    if device == "cpu" and NUMBA and dtype in _FLOATS:
        return "numba"
    if device == "gpu" and CUDA and dtype == _F32:
        return "cuda"
    return "reference"


def backend(*arrays):
    """What runs an op on these arrays: backend_for their device and dtype when they share both and
    none is empty, else 'reference'."""
    if not arrays:
        return "reference"
    first = arrays[0]
    device = "gpu" if is_gpu_array(first) else "cpu" if type(first) is np.ndarray else None
    for a in arrays:
        if device is None or type(a) is not type(first) or a.dtype != first.dtype or a.size == 0:
            return "reference"
    return backend_for(device, first.dtype)


def implementation(op, *arrays):
    """The module that runs ``op`` on these arrays."""
    return FAST.get(backend(*arrays), REFERENCE).get(op, REFERENCE[op])


def implementation_for(op, device, dtype):
    return FAST.get(backend_for(device, dtype), REFERENCE).get(op, REFERENCE[op])


def _maker(saved):
    """The implementation that made ``saved``: its backward reads it."""
    return sys.modules[type(saved).__module__]


# -- conv2d --------------------------------------------------------------------------------------------
def conv2d_forward(x, params, train, stride, pad):
    return implementation("conv2d", x, *params.values()).conv2d_forward(x, params, train, stride, pad)


def conv2d_backward(saved, dy, params, grads, input_grad=True, accumulate=False):
    return _maker(saved).conv2d_backward(saved, dy, params, grads, input_grad, accumulate)


def conv2d_saved_bytes(x_shape, w_shape, stride, pad, dtype, device):
    impl = implementation_for("conv2d", device, dtype)
    return impl.conv2d_saved_bytes(x_shape, w_shape, stride, pad, np.dtype(dtype).itemsize)


def workspace_bytes(device, dtype):
    """The most memory any one op call on ``device`` allocates for itself and frees before it returns
    (beyond its output and saved state): the CUDA convolution's per-chunk buffers, at most
    ``conv_cuda.CHUNK_ELEMENTS`` values each for the columns and the GEMM's output. The memory plan
    keeps this much free."""
    impl = implementation_for("conv2d", device, dtype)
    return getattr(impl, "workspace_bytes", lambda itemsize: 0)(np.dtype(dtype).itemsize)


# -- batchnorm and the fused batchnorm -> relu (-> maxpool) ----------------------------------------
def _norm_impl(op, train, *arrays):
    """Synchronised BatchNorm (norm.SYNC set, training) runs an implementation that allreduces its sums
    (``SYNCS``: the reference and numba; the CUDA kernels do not, so the GPU runs the reference)."""
    impl = implementation(op, *arrays)
    if train and norm.SYNC is not None and not getattr(impl, "SYNCS", False):
        return REFERENCE[op]
    return impl


def batchnorm_forward(x, params, buffers, train, momentum, eps):
    impl = _norm_impl("batchnorm", train, x, *params.values(), *buffers.values())
    return impl.batchnorm_forward(x, params, buffers, train, momentum, eps)


def batchnorm_backward(saved, dy, params, grads, accumulate=False):
    return _maker(saved).batchnorm_backward(saved, dy, params, grads, accumulate)


def batchnorm_saved_bytes(x_shape, dtype, device):
    return implementation_for("batchnorm", device, dtype).batchnorm_saved_bytes(x_shape, np.dtype(dtype).itemsize)


def bn_relu_forward(x, params, buffers, train, momentum, eps):
    impl = _norm_impl("bn_relu", train, x, *params.values(), *buffers.values())
    return impl.bn_relu_forward(x, params, buffers, train, momentum, eps)


def bn_relu_backward(saved, dy, params, grads, accumulate=False):
    return _maker(saved).bn_relu_backward(saved, dy, params, grads, accumulate)


def bn_relu_saved_bytes(x_shape, dtype, device):
    return implementation_for("bn_relu", device, dtype).bn_relu_saved_bytes(x_shape, np.dtype(dtype).itemsize)


def bn_relu_maxpool_forward(x, params, buffers, train, momentum, eps, kernel, stride):
    impl = _norm_impl("bn_relu_maxpool", train, x, *params.values(), *buffers.values())
    return impl.bn_relu_maxpool_forward(x, params, buffers, train, momentum, eps, kernel, stride)


def bn_relu_maxpool_backward(saved, dy, params, grads, accumulate=False):
    return _maker(saved).bn_relu_maxpool_backward(saved, dy, params, grads, accumulate)


def bn_relu_maxpool_saved_bytes(x_shape, kernel, stride, dtype, device):
    impl = implementation_for("bn_relu_maxpool", device, dtype)
    return impl.bn_relu_maxpool_saved_bytes(x_shape, kernel, stride, np.dtype(dtype).itemsize)


# -- maxpool, relu ---------------------------------------------------------------------------------
def maxpool_forward(x, kernel, stride, train):
    return implementation("maxpool", x).maxpool_forward(x, kernel, stride, train)


def maxpool_backward(saved, dy):
    return _maker(saved).maxpool_backward(saved, dy)


def maxpool_saved_bytes(x_shape, kernel, stride, dtype, device):
    impl = implementation_for("maxpool", device, dtype)
    return impl.maxpool_saved_bytes(x_shape, kernel, stride, np.dtype(dtype).itemsize)


def relu_forward(x, train):
    return implementation("relu", x).relu_forward(x, train)


def relu_backward(saved, dy):
    return _maker(saved).relu_backward(saved, dy)


def relu_saved_bytes(x_shape, dtype, device):
    return implementation_for("relu", device, dtype).relu_saved_bytes(x_shape, np.dtype(dtype).itemsize)


# -- the loss and the optimizer ----------------------------------------------------------------------
def bce_forward(z, t, pos_weight=None):
    return implementation("bce", z).bce_forward(z, t, pos_weight)


def bce_backward(saved):
    return _maker(saved).bce_backward(saved)


def adam_update(params, grads, ms, vs, lr, beta1, beta2, eps, t):
    impl = implementation("adam", *params, *grads, *ms, *vs)
    impl.adam_update(params, grads, ms, vs, lr, beta1, beta2, eps, t)


def adam_wants_flat(*arrays):
    """True when the Adam that runs on these arrays wants them in flat buffers (CUDA: one launch)."""
    return getattr(implementation("adam", *arrays), "WANTS_FLAT", False)


__all__ = ["backend", "backend_for", "implementation", "sigmoid", "conv2d_forward", "conv2d_backward",
           "batchnorm_forward", "batchnorm_backward", "bn_relu_forward", "bn_relu_backward",
           "bn_relu_maxpool_forward", "bn_relu_maxpool_backward", "maxpool_forward", "maxpool_backward",
           "relu_forward", "relu_backward", "dropout_forward", "dropout_backward", "dropout_saved_bytes",
           "dense_forward", "dense_backward", "dense_saved_bytes", "global_avg_pool_forward", "global_avg_pool_backward", "bce_forward",
           "bce_backward", "adam_update", "adam_wants_flat"]
