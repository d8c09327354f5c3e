"""The CUDA kernels (tinyconv/kernels/cuda/*.cu, driven by tinyconv/ops/*_cuda.py) against the reference ops.

Three levels, so that most of it runs without a GPU:
  1. nvcc: every .cu file compiles to PTX for sm_90 (skipped without nvcc).
  2. CPU emulation: the same .cu files compiled as C++ with a tiny shim (``__global__`` dropped,
     threadIdx/blockIdx/blockDim/gridDim as globals) and called thread by thread through ctypes,
     while NumPy stands in for CuPy inside the ops/*_cuda.py modules. The layers then run their whole
     CUDA path (chunking, GEMM orientation, the fused BN+ReLU(+max-pool) ops, flat Adam) on the CPU,
     and are held to the reference ops on NumPy. Small grids whose threads stride (grid 2 x 3, 4 threads) test the loops.
     None of the kernels uses shared memory or barriers, which is what makes this exact.
     (skipped without g++)
  3. GPU: the same comparisons with CuPy on a device, plus a training-step parity with the CPU
     (skipped without CuPy and a CUDA device).
"""
import ctypes
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tinyconv import Adam, BatchNorm2D, BCEWithLogits, Conv2D, MaxPool2D, ReLU, ops, seed_cnn
from tinyconv.backend import gpu_available, to_cpu
from tinyconv.fusion import BNReLU as FusedBNReLU
from tinyconv.fusion import BNReLUMaxPool
from tinyconv.kernels import common_gpu
from tinyconv.ops import conv_cuda, loss_cuda, norm_cuda

from parity import assert_states_close, train_steps  # noqa: E402  (tests/parity.py)

SOURCES = sorted(common_gpu.CUDA_DIR.glob("*.cu"))
SHIM = r"""
#include <math.h>
struct Dim3 { unsigned x, y, z; };
extern "C" { Dim3 threadIdx, blockIdx, blockDim, gridDim; }
#define __global__
#define __restrict__
"""


# -- 1. nvcc ---------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_to_ptx(path, tmp_path):
    out = subprocess.run(["nvcc", "-ptx", "-arch=sm_90", "-o", str(tmp_path / "k.ptx"), str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ".entry" in (tmp_path / "k.ptx").read_text()


# -- 2. serial emulation on the CPU ---------------------------------------------------------------
class Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


class EmulatedModule:
    """One .cu file compiled by g++; ``get_function(name)(grid, block, args)`` runs every thread
    of a (shrunk) grid one after the other."""

    def __init__(self, path, build_dir):
        (build_dir / "shim.h").write_text(SHIM)
        so = build_dir / (path.stem + ".so")
        cmd = ["g++", "-O1", "-shared", "-fPIC", "-x", "c++", "-include", str(build_dir / "shim.h"),
               str(path), "-o", str(so)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        self.lib = ctypes.CDLL(str(so))
        self.ids = {n: Dim3.in_dll(self.lib, n) for n in ("threadIdx", "blockIdx", "blockDim", "gridDim")}

    @staticmethod
    def _arg(a):
        if isinstance(a, np.ndarray):
            assert a.flags.c_contiguous
            return ctypes.c_void_p(a.ctypes.data)
        return {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.float32: ctypes.c_float}[type(a)](a)

    def get_function(self, name):
        fn = getattr(self.lib, name)
        fn.restype = None

        def run(grid, block, args):
            grid = tuple(grid) + (1,) * (3 - len(grid))
            gx, gy, threads = grid[0], grid[1], block[0]
            if not name.endswith("_partial"):      # partial sums: the grid fixes the layout, keep it
                gx, gy, threads = min(gx, 2), min(gy, 3), min(threads, 4)
            cargs = [self._arg(a) for a in args]
            ids = self.ids
            ids["gridDim"].x, ids["gridDim"].y, ids["gridDim"].z = gx, gy, 1
            ids["blockDim"].x, ids["blockDim"].y, ids["blockDim"].z = threads, 1, 1
            for by in range(gy):
                for bx in range(gx):
                    for tx in range(threads):
                        ids["blockIdx"].x, ids["blockIdx"].y, ids["threadIdx"].x = bx, by, tx
                        fn(*cargs)
        return run


@pytest.fixture(scope="module")
def emulated_modules(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    build = tmp_path_factory.mktemp("cuda_emulation")
    return {p.stem: EmulatedModule(p, build) for p in SOURCES}


@pytest.fixture
def emulated(emulated_modules, monkeypatch):
    """The CUDA implementation of every op, run on NumPy arrays with the emulated kernels: the one
    dispatch (tinyconv/ops/__init__.py) is told that NumPy arrays are on the GPU."""
    monkeypatch.setitem(sys.modules, "cupy", np)                  # NumPy plays CuPy
    monkeypatch.setattr(ops, "NUMBA", False)                      # no numba kernels in the way
    monkeypatch.setattr(ops, "CUDA", True)
    monkeypatch.setattr(ops, "is_gpu_array", lambda a: isinstance(a, np.ndarray))
    emulate = lambda m, name: emulated_modules[m].get_function(name)
    monkeypatch.setattr(common_gpu, "kernel", emulate)
    monkeypatch.setattr(common_gpu, "THREADS", 4)
    monkeypatch.setattr(norm_cuda, "TARGET_THREADS", 24)
    assert ops.backend(np.zeros(2, np.float32)) == "cuda"


@pytest.fixture
def plain_path(monkeypatch):
    """Call ``plain_path()`` inside a test to switch every kernel off: the reference ops."""
    def switch():
        monkeypatch.setattr(ops, "CUDA", False)
    return switch


TOL = dict(rtol=2e-5, atol=2e-6)


def run_layer(layer, x, seed, train=True):
    y = layer.forward(x, train)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    return y, dx, {k: np.array(g, copy=True) for k, g in layer.grads.items()}


def compare(make_layer, x, plain_path, seed=1, train=True, tol=TOL):
    if not train:                                   # inference: forward only
        got = make_layer().forward(x, False)
        plain_path()
        np.testing.assert_allclose(got, make_layer().forward(x, False), **tol, err_msg="forward")
        return
    got = run_layer(make_layer(), x, seed, train)
    plain_path()
    want = run_layer(make_layer(), x, seed, train)
    np.testing.assert_allclose(got[0], want[0], **tol, err_msg="forward")
    if want[1] is None:
        assert got[1] is None
    else:
        np.testing.assert_allclose(got[1], want[1], **tol, err_msg="dx")
    assert got[2].keys() == want[2].keys()
    for k in want[2]:
        np.testing.assert_allclose(got[2][k], want[2][k], **tol, err_msg=k)


@pytest.mark.parametrize("C,H,W,k,stride,pad,chunk", [
    (3, 11, 9, 3, 1, 1, None), (5, 7, 10, 3, 2, 1, None), (2, 9, 8, (3, 2), (1, 2), (2, 0), None),
    (4, 8, 7, 3, 1, 1, 300),                    # several chunks (the dw/db accumulation)
    (3, 6, 5, 1, 1, 0, 50),
])
def test_conv_emulated_matches_plain(emulated, plain_path, monkeypatch, C, H, W, k, stride, pad, chunk):
    if chunk:
        monkeypatch.setattr(conv_cuda, "CHUNK_ELEMENTS", chunk)
    x = np.random.default_rng(0).standard_normal((3, C, H, W)).astype(np.float32)

    def make():
        layer = Conv2D(C, 4, k, stride=stride, padding=pad, rng=np.random.default_rng(2))
        layer.params["b"][...] = np.arange(4, dtype=np.float32) / 7
        return layer
    compare(make, x, plain_path)


def test_conv_emulated_skips_input_grad(emulated):
    layer = Conv2D(3, 4, 3, padding=1, rng=np.random.default_rng(2))
    layer.needs_input_grad = False
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    assert run_layer(layer, x, 1)[1] is None and layer.grads["w"].shape == (4, 3, 3, 3)


class PoisonedEmpty:
    """NumPy playing CuPy, with ``empty`` filled with NaN: an output element left unwritten shows."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=np.float32):
        return np.full(shape, np.nan, dtype=dtype)


def test_conv_chunks_bound_the_gemm_output_too():
    """A 1x1 conv with many outputs: the GEMM output (C_out, G*P), not the column matrix (K, G*P),
    sets the chunk. 256 images of 109 x 89, 64 -> 4096 channels: by K alone all 256 images would
    go in one chunk, a 4096 x 2.5M output (10 G floats)."""
    g = conv_cuda.geometry((256, 64, 109, 89), (1, 1), (1, 1), (0, 0))
    G = conv_cuda._images_per_chunk(g, 4096, True)
    assert G == conv_cuda.CHUNK_ELEMENTS // (4096 * 109 * 89) == 6
    g = g._replace(N=1024)                     # few outputs: K (+1 for the bias's ones row) decides
    assert conv_cuda._images_per_chunk(g, 16, True) == conv_cuda.CHUNK_ELEMENTS // (65 * 109 * 89) == 425
    assert conv_cuda._images_per_chunk(g, 16, False) == conv_cuda.CHUNK_ELEMENTS // (64 * 109 * 89) == 432
    big = conv_cuda.geometry((4, 64, 2000, 3000), (3, 3), (1, 1), (1, 1))   # one image over budget
    assert conv_cuda._images_per_chunk(big, 8, True) == 1
    assert [n for _, n in conv_cuda._chunks(256, G)] == [6] * 42 + [4]


@pytest.mark.parametrize("bias", [True, False])
def test_conv_emulated_many_outputs_over_chunks(emulated, plain_path, monkeypatch, bias):
    """1x1 conv, 3 -> 40 channels, chunks of 2, 2 and 1 images (a last partial chunk after full
    ones: backward's ones row must hold for it), every buffer within CHUNK_ELEMENTS."""
    monkeypatch.setitem(sys.modules, "cupy", PoisonedEmpty())
    P, C_out = 4 * 5, 40
    monkeypatch.setattr(conv_cuda, "CHUNK_ELEMENTS", C_out * 2 * P)      # 2 images' GEMM output
    chunks, launch = [], conv_cuda.launch_rows

    def record(module, name, rows, row_len, *args):
        if name in ("chunk_to_nchw", "nchw_to_chunk"):
            chunks.append((name, int(args[-2])))                      # (.., n0, n, out)
        launch(module, name, rows, row_len, *args)
    monkeypatch.setattr(conv_cuda, "launch_rows", record)
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 5)).astype(np.float32)

    def make():
        layer = Conv2D(3, C_out, 1, bias=bias, rng=np.random.default_rng(2))
        if bias:
            layer.params["b"][...] = np.arange(C_out, dtype=np.float32) / 7
        return layer
    compare(make, x, plain_path)
    assert chunks == [("chunk_to_nchw", n) for n in (2, 2, 1)] + [("nchw_to_chunk", n) for n in (2, 2, 1)]


@pytest.mark.parametrize("accumulate", [False, True])
def test_conv_emulated_empty_batch(emulated, monkeypatch, accumulate):
    """N = 0, called directly (the dispatch sends empty arrays to the reference): an empty y, and
    backward writes zero gradients (with ``accumulate``, adds nothing), as the numba version does."""
    monkeypatch.setitem(sys.modules, "cupy", PoisonedEmpty())
    layer = Conv2D(3, 4, 3, padding=1, rng=np.random.default_rng(2))
    x = np.zeros((0, 3, 5, 6), dtype=np.float32)
    y, saved = conv_cuda.conv2d_forward(x, layer.params, True, (1, 1), (1, 1))
    assert y.shape == (0, 4, 5, 6)
    before = {"w": np.full((4, 3, 3, 3), 0.5, np.float32), "b": np.full(4, -2.0, np.float32)}
    grads = {k: v.copy() for k, v in before.items()}
    dx = conv_cuda.conv2d_backward(saved, y, layer.params, grads, True, accumulate)
    assert dx.shape == x.shape
    for k in before:
        np.testing.assert_array_equal(grads[k], before[k] if accumulate else 0, err_msg=k)


@pytest.mark.parametrize("shape,k,stride", [((2, 3, 9, 7), 2, None), ((2, 2, 8, 6), 2, None),
                                             ((1, 3, 9, 8), 3, 2), ((2, 2, 7, 9), (2, 3), (3, 2))])
def test_maxpool_emulated_matches_plain(emulated, plain_path, shape, k, stride):
    x = np.random.default_rng(3).permutation(np.prod(shape)).reshape(shape).astype(np.float32)
    compare(lambda: MaxPool2D(k, stride), x, plain_path)
    ties = np.zeros(shape, dtype=np.float32)                       # first maximum wins ties
    compare(lambda: MaxPool2D(k, stride), ties + 1, plain_path)


class BNReLU:
    """BatchNorm2D then ReLU as one layer-like object: the fused step a model's plan makes of them
    (tinyconv/fusion.py), or the two layers one after the other."""

    def __init__(self, C, fuse):
        rng = np.random.default_rng(5)
        self.bn, self.relu = BatchNorm2D(C), ReLU()
        self.bn.params["gamma"][...] = rng.uniform(0.5, 1.5, C)
        self.bn.params["beta"][...] = rng.uniform(-0.5, 0.5, C)
        self.grads = self.bn.grads
        self.steps = [FusedBNReLU(self.bn, self.relu)] if fuse else [self.bn, self.relu]

    def forward(self, x, train=True):
        for step in self.steps:
            x = step.forward(x, train)
        return x

    def backward(self, dy):
        for step in reversed(self.steps):
            dy = step.backward(dy)
        return dy

    def saved(self):
        return self.steps[0].saved if len(self.steps) == 1 else self.bn.cache


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 3, 1, 1), (4, 2, 13, 11)])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_relu_emulated_matches_plain(emulated, plain_path, shape, fuse, train):
    x = (np.random.default_rng(6).standard_normal(shape) * 3 + 10).astype(np.float32)
    layers = []

    def make():
        layers.append(BNReLU(shape[1], fuse))
        return layers[-1]
    compare(make, x, plain_path, train=train, tol=dict(rtol=1e-4, atol=2e-5))
    got, want = layers[0], layers[1]
    if train or not fuse:                                   # (a fused inference saves nothing)
        cuda = "fused_cuda" if fuse else "norm_cuda"
        assert type(got.saved()).__module__ == f"tinyconv.ops.{cuda}"
        assert type(want.saved()).__module__ == f"tinyconv.ops.{'fused' if fuse else 'norm'}"
    for k in ("running_mean", "running_var"):
        np.testing.assert_allclose(got.bn.buffers[k], want.bn.buffers[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,k,stride", [((3, 4, 9, 7), 2, None), ((2, 3, 8, 9), (2, 3), (3, 4))])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_relu_maxpool_emulated_matches_plain(emulated, plain_path, shape, k, stride, train):
    """The fused bn_relu_maxpool op of the default model's blocks: BN+ReLU kernel, then max-pool."""
    x = (np.random.default_rng(9).standard_normal(shape) * 3 + 10).astype(np.float32)

    def make():
        pair = BNReLU(shape[1], True)
        pair.steps = [BNReLUMaxPool(pair.bn, pair.relu, MaxPool2D(k, stride))]
        return pair
    compare(make, x, plain_path, train=train, tol=dict(rtol=1e-4, atol=2e-5))


@pytest.mark.parametrize("pos_weight", [None, np.array([1.0, 4.0, 0.5], dtype=np.float32)])
def test_bce_emulated_matches_plain(emulated, pos_weight):
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((5, 3)) * 30).astype(np.float32)    # far into both tails
    t = (rng.random((5, 3)) > 0.5).astype(np.float32)
    loss, saved = loss_cuda.bce_forward(z, t, pos_weight)
    got = BCEWithLogits(pos_weight)
    assert got.forward_array(z, t) == loss                       # the loss dispatches to it
    assert type(got.cache) is loss_cuda.BCECudaSaved
    np.testing.assert_array_equal(got.backward(), saved.dz)
    ref = BCEWithLogits(pos_weight)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "CUDA", False)
        np.testing.assert_allclose(loss, ref.forward_array(z, t), rtol=1e-6)
        np.testing.assert_allclose(saved.dz, ref.backward(), rtol=1e-6, atol=1e-9)


def test_training_steps_emulated_match_plain(emulated, plain_path):
    """The whole CUDA path (fused BN+ReLU+max-pool, flat Adam) for 3 steps of the default model."""
    rng = np.random.default_rng(8)
    x = rng.random((2, 3, 54, 44), dtype=np.float32)
    t = (rng.random((2, 3)) > 0.5).astype(np.float32)
    model = seed_cnn(input_shape=(3, 54, 44), seed=5)
    assert sum(isinstance(step, BNReLUMaxPool) for step in model.plan()) == 5
    got_loss, got_state, opt = train_steps(model, x, t)
    assert type(model.steps[1].saved).__module__ == "tinyconv.ops.fused_cuda"
    assert opt.flat is not None and sum(v[0].size for v in opt.flat.views) == model.num_params()
    assert np.shares_memory(model.layers[0].params["w"], opt.flat.p)   # params are views
    assert np.shares_memory(model.layers[0].grads["w"], opt.flat.g)    # and so are the gradients
    plain_path()
    want_loss, want_state, opt = train_steps(seed_cnn(input_shape=(3, 54, 44), seed=5), x, t)
    assert opt.flat is None
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    assert_states_close(got_state, want_state)


def test_flat_adam_rebuilds_after_arrays_are_replaced(emulated):
    layer = Conv2D(2, 3, 3, rng=np.random.default_rng(0))
    opt = Adam([(layer.params, layer.grads)])
    for k, p in layer.params.items():
        layer.grads[k] = np.ones_like(p)
    opt.step()
    first = opt.flat
    layer.params["w"] = layer.params["w"].copy()                 # as model.to / astype would
    opt.step()
    assert opt.flat is not first and np.shares_memory(layer.params["w"], opt.flat.p)


# -- 3. on a GPU -----------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")


@pytest.fixture
def cupy_plain(monkeypatch):
    def switch():
        monkeypatch.setattr(ops, "CUDA", False)
    return switch


def _gpu_compare(make_layer, x_np, cupy_plain, train=True, tol=TOL, seed=1):
    import cupy
    def run():
        layer = make_layer()
        for d in (layer.params, layer.buffers) if hasattr(layer, "params") else ():
            for k in d:
                d[k] = cupy.asarray(d[k])
        y = layer.forward(cupy.asarray(x_np), train)
        y_np = to_cpu(y)                            # poison check: NaN never passes
        if not train:
            return y_np, None, {}
        dy = cupy.asarray(np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32))
        dx = layer.backward(dy)
        return y_np, None if dx is None else to_cpu(dx), {k: to_cpu(g) for k, g in layer.grads.items()}
    got = run()
    cupy_plain()
    want = run()
    for a, b, what in ((got[0], want[0], "forward"), (got[1], want[1], "dx")):
        if b is not None:
            assert np.isfinite(a).all(), what
            np.testing.assert_allclose(a, b, **tol, err_msg=what)
    for k in want[2]:
        np.testing.assert_allclose(got[2][k], want[2][k], **tol, err_msg=k)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("C,H,W,k,stride,pad", [(3, 37, 29, 3, 1, 1), (32, 27, 22, 3, 1, 1),
                                                 (5, 17, 23, 3, 2, 1), (7, 13, 11, (3, 2), (1, 2), (2, 0))])
def test_conv_gpu_matches_plain(cupy_plain, C, H, W, k, stride, pad):
    x = np.random.default_rng(0).standard_normal((5, C, H, W)).astype(np.float32)
    make = lambda: Conv2D(C, 19, k, stride=stride, padding=pad, rng=np.random.default_rng(2))
    _gpu_compare(make, x, cupy_plain, tol=dict(rtol=1e-4, atol=1e-4))


@gpu
@pytest.mark.gpu
def test_conv_gpu_chunks_match_plain(cupy_plain, monkeypatch):
    monkeypatch.setattr(conv_cuda, "CHUNK_ELEMENTS", 5000)
    x = np.random.default_rng(0).standard_normal((7, 4, 13, 11)).astype(np.float32)
    _gpu_compare(lambda: Conv2D(4, 6, 3, padding=1, rng=np.random.default_rng(2)), x, cupy_plain,
                 tol=dict(rtol=1e-4, atol=1e-4))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("bias", [True, False])
def test_conv_gpu_many_outputs_chunks_match_plain(cupy_plain, monkeypatch, bias):
    """1x1 conv, 5 -> 300 channels: the GEMM output sets the chunk (3, 3, then 1 image), and the
    bias gradient comes from the ones row over chunks of both sizes."""
    monkeypatch.setattr(conv_cuda, "CHUNK_ELEMENTS", 300 * 3 * 13 * 11)
    x = np.random.default_rng(0).standard_normal((7, 5, 13, 11)).astype(np.float32)

    def make():
        layer = Conv2D(5, 300, 1, bias=bias, rng=np.random.default_rng(2))
        if bias:
            layer.params["b"][...] = np.arange(300, dtype=np.float32) / 70
        return layer
    _gpu_compare(make, x, cupy_plain, tol=dict(rtol=1e-4, atol=1e-4))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("accumulate", [False, True])
def test_conv_gpu_empty_batch(accumulate):
    """N = 0 through the CUDA op itself: an empty y, zero gradients (accumulate: unchanged)."""
    import cupy
    params = {"w": cupy.ones((4, 3, 3, 3), dtype=np.float32), "b": cupy.ones(4, dtype=np.float32)}
    x = cupy.zeros((0, 3, 5, 6), dtype=np.float32)
    y, saved = conv_cuda.conv2d_forward(x, params, True, (1, 1), (1, 1))
    assert y.shape == (0, 4, 5, 6)
    before = {"w": np.full((4, 3, 3, 3), 0.5, np.float32), "b": np.full(4, -2.0, np.float32)}
    grads = {k: cupy.asarray(v) for k, v in before.items()}
    dx = conv_cuda.conv2d_backward(saved, y, params, grads, True, accumulate)
    assert dx.shape == x.shape
    for k in before:
        np.testing.assert_array_equal(to_cpu(grads[k]), before[k] if accumulate else 0, err_msg=k)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape,k,stride", [((5, 7, 37, 29), 2, None), ((3, 4, 9, 8), 3, 2)])
def test_maxpool_gpu_matches_plain(cupy_plain, shape, k, stride):
    x = np.random.default_rng(3).permutation(np.prod(shape)).reshape(shape).astype(np.float32)
    _gpu_compare(lambda: MaxPool2D(k, stride), x, cupy_plain)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_relu_gpu_matches_plain(cupy_plain, fuse, train):
    import cupy
    x = (np.random.default_rng(6).standard_normal((9, 13, 37, 29)) * 3 + 10).astype(np.float32)

    class Pair(BNReLU):
        def __init__(self):
            super().__init__(13, fuse)
            self.params, self.buffers = self.bn.params, self.bn.buffers
    _gpu_compare(Pair, x, cupy_plain, train=train, tol=dict(rtol=1e-3, atol=1e-4))


@gpu
@pytest.mark.gpu
def test_bce_gpu_matches_plain():
    import cupy
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((257, 3)) * 30).astype(np.float32)
    t = (rng.random((257, 3)) > 0.5).astype(np.float32)
    loss, saved = loss_cuda.bce_forward(cupy.asarray(z), cupy.asarray(t))
    ref = BCEWithLogits()
    np.testing.assert_allclose(float(loss), ref.forward_array(z, t), rtol=1e-5)
    np.testing.assert_allclose(to_cpu(saved.dz), ref.backward(), rtol=1e-5, atol=1e-9)


@gpu
@pytest.mark.gpu
def test_training_steps_gpu_kernels_match_cpu():
    """3 steps of the default model (fused BN+ReLU, flat Adam) on the GPU against the CPU."""
    from tinyconv.backend import to_device
    rng = np.random.default_rng(8)
    x = rng.random((6, 3, 54, 44), dtype=np.float32)
    t = (rng.random((6, 3)) > 0.5).astype(np.float32)
    results = {}
    for device in ("cpu", "gpu"):
        model = seed_cnn(input_shape=(3, 54, 44), seed=5).to(device)   # Sequential marks BN->ReLU
        results[device] = train_steps(model, to_device(x, device), to_device(t, device))
    assert results["gpu"][2].flat is not None
    np.testing.assert_allclose(results["gpu"][0], results["cpu"][0], rtol=1e-4)
    assert_states_close(results["gpu"][1], results["cpu"][1])


@gpu
@pytest.mark.gpu
def test_tf32_switch_round_trips():
    common_gpu.set_tf32(True)
    try:
        assert common_gpu.tf32_enabled()
    finally:
        common_gpu.set_tf32(False)
    assert not common_gpu.tf32_enabled()


def test_kernel_functions_are_looked_up_once(monkeypatch):
    """common_gpu.kernel compiles a module once and looks each function up once: CuPy's get_function
    builds a new RawKernel object on every call, which a launch per op per step would pay each time."""
    import types
    calls = []

    class Module:
        def __init__(self, code, options):
            calls.append(("compile", code[:10]))

        def get_function(self, name):
            calls.append(("get", name))
            return f"fn:{name}"
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=Module))
    monkeypatch.setattr(common_gpu, "_modules", {})
    monkeypatch.setattr(common_gpu, "_functions", {})
    for _ in range(3):
        assert common_gpu.kernel("pool", "maxpool_forward") == "fn:maxpool_forward"
        assert common_gpu.kernel("pool", "maxpool_backward") == "fn:maxpool_backward"
    assert [c[0] for c in calls] == ["compile", "get", "get"]
