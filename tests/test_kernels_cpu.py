"""Each numba implementation of an op (tinyconv/ops/*_numba.py) against the reference it replaces.

The reference is the plain-xp code CuPy runs too; here it runs on NumPy with the numba
implementations switched off (``ops.NUMBA = False``), so both sides are the library's own layers,
fed the same arrays. Random shapes, strides, paddings and odd sizes; float32 (the training dtype)
and float64. The fused ops run as a model's plan runs them (tinyconv/fusion.py).
"""
import numpy as np
import pytest

from tinyconv import Adam, BatchNorm2D, Conv2D, MaxPool2D, ReLU, ops
from tinyconv.fusion import BNReLU, BNReLUMaxPool, plan
from tinyconv.layers import col2im, conv_out_size, im2col

pytestmark = pytest.mark.skipif(not ops.HAVE_NUMBA, reason="numba is not installed")
if ops.HAVE_NUMBA:
    from tinyconv.ops import conv_numba as conv_module

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture
def plain():
    """A context switch: inside ``with plain():`` layers take the plain-xp path."""
    class Switch:
        def __enter__(self):
            ops.NUMBA = False

        def __exit__(self, *exc):
            ops.NUMBA = True
    assert ops.NUMBA, "the numba implementations must be enabled for these tests (TINYCONV_NO_NUMBA is set?)"
    return Switch


def run_steps(steps, x, dy_seed=None, train=True):
    """Forward through ``steps`` (layers or fused steps), and back with a seeded dy."""
    h = x
    for step in steps:
        h = step.forward(h, train)
    if dy_seed is None:
        return h, None
    dy = np.random.default_rng(dy_seed).standard_normal(h.shape).astype(x.dtype)
    for step in reversed(steps):
        dy = step.backward(dy)
    return h, dy


def made_by(saved):
    """The implementation module that made a saved state, e.g. 'fused_numba'."""
    return type(saved).__module__.rpartition(".")[2]


def run_layer(layer, x, dy_seed, train=True):
    y = layer.forward(x, train)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(x.dtype)
    dx = layer.backward(dy)
    return y, dx, {k: g.copy() for k, g in layer.grads.items()}


def assert_same(a, b, dtype):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,c_out,k,stride,pad", [
    ((2, 3, 7, 6), 4, 3, 1, 1),
    ((3, 2, 9, 8), 5, 3, 2, 0),
    ((2, 3, 9, 7), 2, (3, 2), (2, 1), (1, 0)),
    ((1, 4, 5, 5), 2, 5, 1, 2),
    ((5, 3, 11, 13), 7, (1, 3), (1, 2), (0, 2)),
    ((4, 6, 4, 3), 3, 2, 3, 1),
])
@pytest.mark.parametrize("one_image_max_k", [0, 64])   # multi-image chunks; one image each for small K
@pytest.mark.parametrize("cache_cols", [0, 1 << 20])     # columns rebuilt in backward; kept from forward
def test_conv2d_kernels_match_plain(plain, monkeypatch, dtype, shape, c_out, k, stride, pad, one_image_max_k,
                                    cache_cols):
    monkeypatch.setattr(conv_module, "ONE_IMAGE_MAX_K", one_image_max_k)
    monkeypatch.setattr(conv_module, "CACHE_COLS_BYTES", cache_cols)
    rng = np.random.default_rng(sum(shape))
    layer = Conv2D(shape[1], c_out, k, stride=stride, padding=pad, rng=rng).astype(dtype)
    layer.params["b"][:] = rng.standard_normal(c_out)
    x = rng.standard_normal(shape).astype(dtype)
    fast = run_layer(layer, x, 1)
    assert made_by(layer.cache) == "conv_numba" and layer.cache.cols is None   # columns freed
    with plain():
        ref = run_layer(layer, x, 1)
        assert made_by(layer.cache) == "conv"
    for a, b in [(fast[0], ref[0]), (fast[1], ref[1])] + [(fast[2][n], ref[2][n]) for n in ("w", "b")]:
        assert_same(a, b, dtype)


@pytest.mark.parametrize("one_image_max_k", [0, 64])
def test_conv2d_kernels_without_bias(plain, monkeypatch, one_image_max_k):
    """No bias: no row of ones under the columns, and no "b" gradient."""
    monkeypatch.setattr(conv_module, "ONE_IMAGE_MAX_K", one_image_max_k)
    rng = np.random.default_rng(21)
    layer = Conv2D(3, 4, 3, padding=1, bias=False, rng=rng)
    x = rng.standard_normal((5, 3, 7, 6)).astype(np.float32)
    fast = run_layer(layer, x, 1)
    assert set(fast[2]) == {"w"}
    with plain():
        ref = run_layer(layer, x, 1)
    for a, b in [(fast[0], ref[0]), (fast[1], ref[1]), (fast[2]["w"], ref[2]["w"])]:
        assert_same(a, b, np.float32)


@pytest.mark.parametrize("chunk", [1, 37, 10_000])
def test_conv2d_chunking_does_not_change_results(plain, monkeypatch, chunk):
    """Chunks of 1 image, of a few images with a ragged last chunk, and of the whole batch."""
    monkeypatch.setattr(conv_module, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(conv_module, "ONE_IMAGE_MAX_K", 0)      # K = 27 would take one image each
    rng = np.random.default_rng(5)
    layer = Conv2D(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((7, 3, 5, 4))
    fast = run_layer(layer, x, 2)
    with plain():
        ref = run_layer(layer, x, 2)
    for a, b in [(fast[0], ref[0]), (fast[1], ref[1]), (fast[2]["w"], ref[2]["w"])]:
        assert_same(a, b, np.float64)


# (x shape, kernel, stride, padding): general geometries, and "same" ones (stride 1, out_w == W)
# that take the shifted-plane kernels, including planes narrower than the kernel's reach
IM2COL_GEOMETRIES = [
    ((5, 3, 8, 7), (3, 2), (2, 1), (1, 2)),
    ((4, 2, 9, 6), (3, 3), (1, 1), (0, 0)),
    ((4, 3, 8, 7), (3, 3), (1, 1), (1, 1)),           # same
    ((3, 2, 6, 1), (5, 5), (1, 1), (2, 2)),           # same, W = 1 < kernel reach
    ((3, 2, 2, 3), (5, 5), (1, 1), (2, 2)),           # same, H = 2
    ((4, 2, 7, 9), (3, 5), (1, 1), (0, 2)),           # same across, no padding down
    ((4, 2, 5, 6), (5, 3), (1, 1), (3, 1)),           # same across, extra rows of padding
    ((4, 3, 5, 4), (1, 1), (1, 1), (0, 0)),           # same, 1x1
]


def chunk_geometry(shape, k, s, p):
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    return kh, kw, sh, sw, ph, pw, conv_out_size(shape[2], kh, sh, ph), conv_out_size(shape[3], kw, sw, pw)


@pytest.mark.parametrize("shape,k,s,p", IM2COL_GEOMETRIES)
def test_im2col_chunk_matches_plain_im2col(shape, k, s, p):
    from tinyconv.ops import conv_numba
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    geo = chunk_geometry(shape, k, s, p)
    ref = im2col(x, k[0], k[1], s, p)                   # (N, K, P), strided slices
    n0, G = 1, shape[0] - 2
    # cols[k, g*P + p] == ref[n0 + g, k, p]
    want = ref[n0:n0 + G].transpose(1, 0, 2).reshape(ref.shape[1], -1)
    for fn in (conv_numba.im2col_chunk, conv_numba._im2col_general):
        cols = np.full(want.shape, np.nan, dtype=np.float32)
        fn(x, n0, G, *geo, cols)
        np.testing.assert_array_equal(cols, want)


@pytest.mark.parametrize("shape,k,s,p", IM2COL_GEOMETRIES)
def test_col2im_chunk_matches_plain_col2im(shape, k, s, p):
    """The chunk version against the strided-slice col2im; the shifted-plane and general kernels
    add in the same order, so they agree to the bit; images outside the chunk are left alone."""
    from tinyconv.ops import conv_numba
    rng = np.random.default_rng(4)
    geo = chunk_geometry(shape, k, s, p)
    K, P = shape[1] * k[0] * k[1], geo[6] * geo[7]
    n0, G = 1, shape[0] - 2
    cols = rng.standard_normal((K, G * P))
    full = np.zeros((shape[0], K, P))
    full[n0:n0 + G] = cols.reshape(K, G, P).transpose(1, 0, 2)
    want = col2im(full, shape, k[0], k[1], s, p)
    results = []
    for fn in (conv_numba.col2im_chunk, conv_numba._col2im_general):
        dx = np.full(shape, 7.0)
        fn(cols.copy(), n0, G, *geo, dx)
        np.testing.assert_allclose(dx[n0:n0 + G], want[n0:n0 + G], rtol=1e-13, atol=1e-13)
        assert (dx[:n0] == 7).all() and (dx[n0 + G:] == 7).all()
        results.append(dx)
    np.testing.assert_array_equal(results[0], results[1])


def test_conv2d_backward_twice_rebuilds_the_freed_columns(monkeypatch):
    """Kept columns are freed by the backward that used them; a second backward rebuilds them from x."""
    monkeypatch.setattr(conv_module, "CACHE_COLS_BYTES", 1 << 20)
    rng = np.random.default_rng(14)
    layer = Conv2D(3, 4, 3, padding=1, rng=rng)
    x = rng.standard_normal((3, 3, 6, 5)).astype(np.float32)
    dy = rng.standard_normal((3, 4, 6, 5)).astype(np.float32)
    layer.forward(x, True)
    assert layer.cache.cols is not None                # kept
    first = layer.backward(dy), layer.grads["w"].copy(), layer.grads["b"].copy()
    assert layer.cache.cols is None                    # freed
    second = layer.backward(dy), layer.grads["w"], layer.grads["b"]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_conv2d_without_input_grad(plain):
    rng = np.random.default_rng(4)
    layer = Conv2D(3, 4, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    full = run_layer(layer, x, 3)
    layer.needs_input_grad = False
    skipped = run_layer(layer, x, 3)
    assert skipped[1] is None
    np.testing.assert_array_equal(skipped[2]["w"], full[2]["w"])
    with plain():
        assert run_layer(layer, x, 3)[1] is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s", [((2, 3, 6, 8), 2, None), ((1, 2, 7, 5), 2, None),
                                       ((2, 2, 9, 9), 3, 2), ((1, 1, 8, 7), (3, 2), (2, 3)),
                                       ((3, 4, 11, 10), 3, 1), ((2, 2, 5, 6), 2, 1), ((2, 3, 9, 6), 2, (2, 3))])
def test_maxpool_kernels_match_plain(plain, dtype, shape, k, s):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, :2, :2] = 1.5                              # a tie: both paths send dy to the first maximum
    layer = MaxPool2D(k, s)
    fast = run_layer(layer, x, 4)
    fast_argmax = layer.cache.argmax.copy()
    with plain():
        ref = run_layer(layer, x, 4)
    np.testing.assert_array_equal(fast_argmax, layer.cache.argmax)
    np.testing.assert_array_equal(fast[0], ref[0])
    # disjoint windows: dx holds copies of dy; overlapping ones add up, in another order
    assert_same(fast[1], ref[1], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (7, 1, 3, 3), (1, 5, 1, 1), (3, 2, 13, 11)])
def test_relu_kernels_match_plain(plain, dtype, shape):
    x = np.random.default_rng(7).standard_normal(shape).astype(dtype)
    x.flat[0] = 0.0                                    # the kink: y = 0, no gradient
    fast = run_layer(ReLU(), x, 5)
    with plain():
        ref = run_layer(ReLU(), x, 5)
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,offset", [((4, 3, 5, 6), 0.0), ((2, 5, 7, 3), 3.0), ((1, 2, 1, 9), -1.0),
                                          ((6, 4, 2, 2), 100.0)])
def test_batchnorm_kernels_match_plain(plain, dtype, shape, offset):
    rng = np.random.default_rng(8)
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    fast_layer, ref_layer = BatchNorm2D(shape[1]).astype(dtype), BatchNorm2D(shape[1]).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    for layer in (fast_layer, ref_layer):
        layer.params["gamma"][:], layer.params["beta"][:] = gamma, beta
    fast = run_layer(fast_layer, x, 6)
    with plain():
        ref = run_layer(ref_layer, x, 6)
    # float32: the plain path sums in float32 (pairwise), the kernel in float64; a large offset
    # costs the plain path digits, so compare relative to the spread of the values.
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast[0], ref[0], **tol)
    np.testing.assert_allclose(fast[1], ref[1], rtol=tol["rtol"], atol=tol["atol"] * np.abs(ref[1]).max())
    for k in ("gamma", "beta"):
        np.testing.assert_allclose(fast[2][k], ref[2][k], rtol=tol["rtol"], atol=tol["atol"] * x[:, 0].size)
    for k in ("running_mean", "running_var"):
        np.testing.assert_allclose(fast_layer.buffers[k], ref_layer.buffers[k], **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 5, 1, 1), (3, 4, 9, 7)])
def test_batchnorm_relu_fused_matches_unfused_and_plain(plain, dtype, shape):
    """The fused bn_relu op on the numba path: the BatchNorm kernel applies the ReLU, and backward
    masks dy by y > 0 recomputed from x. Bit for bit the unfused numba ops (batchnorm, then relu) on
    any CPU, by construction (the same expressions, no fast-math, sums in the order the source
    writes: see test_batchnorm_sums_follow_the_stated_order), and the reference within tolerance."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) + 0.3).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])

    def run(fuse):
        bn, relu = BatchNorm2D(shape[1]).astype(dtype), ReLU()
        bn.params["gamma"][:], bn.params["beta"][:] = gamma, beta
        steps = plan([bn, relu]) if fuse else [bn, relu]
        y, dx = run_steps(steps, x, 12)
        return made_by(steps[0].saved if fuse else bn.cache), [y, dx, bn.grads["gamma"], bn.grads["beta"]]

    made, fused = run(True)
    assert made == "fused_numba"                        # the numba fused op ran
    assert (fused[0] == 0).any() and (fused[0] > 0).any()
    made, unfused = run(False)
    assert made == "norm_numba"
    for a, b in zip(fused, unfused):
        np.testing.assert_array_equal(a, b)
    with plain():
        made, ref = run(True)
    assert made == "fused"                              # the reference: the composition of the ops
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1, np.abs(b).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,fuses", [
    ((4, 3, 8, 6), 2, None, True),                      # the default model's 2x2 windows
    ((3, 4, 9, 7), 2, None, True),                      # odd sizes: floor mode drops a row and a column
    ((3, 2, 9, 8), 3, None, True),
    ((2, 3, 8, 9), (2, 3), (3, 4), True),               # stride > kernel: gaps between windows
    ((2, 3, 7, 7), 3, 2, False),                        # overlapping windows are not fused
])
def test_batchnorm_relu_maxpool_fused_matches_unfused_and_plain(plain, dtype, shape, k, s, fuses):
    """BatchNorm2D -> ReLU -> MaxPool2D as the plan runs it: on the numba path one op that normalises,
    rectifies and pools each window, whose backward takes the pooled gradient. Output, argmax and
    gradients bit for bit the unfused numba ops (by construction, on any CPU); the reference within
    tolerance. Overlapping windows are not fused: the plan keeps the MaxPool2D a step of its own."""
    rng = np.random.default_rng(10)
    x = (rng.standard_normal(shape) + 0.2).astype(dtype)
    x[0, 0, :2, :2] = x[0, 0, 0, 0]                     # a tie inside a window
    gamma, beta = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])

    def run(fuse):
        bn, relu, pool = BatchNorm2D(shape[1]).astype(dtype), ReLU(), MaxPool2D(k, s)
        bn.params["gamma"][:], bn.params["beta"][:] = gamma, beta
        steps = plan([bn, relu, pool]) if fuse else [bn, relu, pool]
        y, dx = run_steps(steps, x, 11)
        applied = isinstance(steps[0], BNReLUMaxPool)
        saved = steps[0].saved if applied else pool.cache
        argmax = saved.pool.argmax if made_by(saved) == "fused" else saved.argmax
        return (applied, made_by(saved)), [y, argmax.copy()], [dx, bn.grads["gamma"], bn.grads["beta"]]

    (applied, made), fused_fwd, fused_bwd = run(True)
    assert applied == fuses and made == ("fused_numba" if fuses else "pool_numba")
    _, fwd, bwd = run(False)
    for a, b in zip(fused_fwd, fwd):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fused_bwd, bwd):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    with plain():
        (applied, made), ref_fwd, ref_bwd = run(True)
    assert applied == fuses and made == ("fused" if fuses else "pool")   # the reference composition
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    for a, b in zip(fused_fwd[:1] + fused_bwd, ref_fwd[:1] + ref_bwd):
        np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1, np.abs(b).max()))


def _sums_in_stated_order(t0, t1):
    """The order norm_numba._channel_sums promises, written with NumPy elementwise adds (each one IEEE
    rounding, no reordering possible) and a Python loop: per pixel, images four at a time as
    (a + b) + (c + d), then the rest one by one; then the pixel sums from the first pixel up."""
    def fold(t):                                         # t: (N, HW) float64
        acc = np.zeros(t.shape[1])
        n = 0
        while n + 4 <= t.shape[0]:
            acc += (t[n] + t[n + 1]) + (t[n + 2] + t[n + 3])
            n += 4
        for m in range(n, t.shape[0]):
            acc += t[m]
        total = 0.0
        for v in acc:
            total += float(v)
        return total
    return fold(t0), fold(t1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 3, 5, 9), (4, 2, 13, 11), (1, 2, 3, 3)])
def test_batchnorm_sums_follow_the_stated_order(dtype, shape):
    """The statistics and backward sums equal, bit for bit, the same sums written out in the order the
    kernel's docstring states. Any reassociation (fast-math, a vectoriser reordering a reduction)
    breaks this on some CPU, which is what makes fused == unfused hold on every CPU."""
    from tinyconv.ops import norm_numba
    rng = np.random.default_rng(21)
    N, C, H, W = shape
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    mean, var = np.empty(C), np.empty(C)
    norm_numba.channel_mean_var(x, mean, var, 0, C)
    mu = rng.standard_normal(C).astype(dtype)
    s = rng.uniform(0.5, 2, C).astype(dtype)
    g, b = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    for relu in (False, True):
        dbeta, dgamma = np.empty(C), np.empty(C)
        norm_numba.backward_sums(x, dy, mu, s, g, b, relu, dbeta, dgamma, 0, C)
        for c in range(C):
            xc, dc = x[:, c].reshape(N, H * W), dy[:, c].reshape(N, H * W)
            if c == 0 and not relu:                      # the statistics, shifted by x[0, c, 0, 0]
                for cc in range(C):
                    d = x[:, cc].reshape(N, H * W).astype(np.float64) - np.float64(x[0, cc, 0, 0])
                    s1, s2 = _sums_in_stated_order(d, d * d)
                    m1 = s1 / (N * H * W)
                    assert mean[cc] == np.float64(x[0, cc, 0, 0]) + m1
                    assert var[cc] == max(s2 / (N * H * W) - m1 * m1, 0.0)
            xhat = (xc - mu[c]) * s[c]                   # in x's dtype, as the kernel computes it
            gd = dc.astype(np.float64)
            if relu:
                gd = np.where(g[c] * xhat + b[c] > 0, gd, 0.0)
            sb, sg = _sums_in_stated_order(gd, gd * xhat.astype(np.float64))
            assert dbeta[c] == sb and dgamma[c] == sg, (relu, c)


def test_fused_kernels_agree_under_another_numba_target(tmp_path):
    """The fused == unfused and stated-order tests again, with numba compiling for a generic x86-64
    (no AVX): LLVM then vectorises differently, so a sum whose order depended on the vectoriser
    would fail here even when it passes for this machine's CPU (an AMD EPYC failed that way)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
            "-k", "fused_matches_unfused or stated_order"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_fused_maxpool_too_small_an_input_is_the_pools_error():
    from tinyconv import Sequential
    bn, relu, pool = BatchNorm2D(2), ReLU(), MaxPool2D(2)
    model = Sequential([bn, relu, pool])
    assert isinstance(model.plan()[0], BNReLUMaxPool)
    for train in (True, False):
        with pytest.raises(ValueError, match="does not fit an input of size 1"):
            model.forward(np.ones((2, 2, 1, 4), np.float32), train)
        with pytest.raises(ValueError, match="does not fit an input of size 1"):
            pool.forward(np.ones((2, 2, 1, 4), np.float32), train)


@pytest.mark.parametrize("train", [True, False])
def test_fusion_acts_only_inside_the_model_forward(train):
    """A model's BatchNorm2D, ReLU and MaxPool2D called one by one (a user probing activations)
    are the plain layers, also right after a fused model forward."""
    from tinyconv import seed_cnn
    model = seed_cnn(input_shape=(3, 64, 48), seed=1)
    bn, relu, pool = model.layers[1:4]
    assert model.plan()[1].layers == (bn, relu, pool)
    x = np.random.default_rng(15).random((2, 3, 64, 48), dtype=np.float32)
    model.forward(x, train)
    assert isinstance(model.steps[1], BNReLUMaxPool)        # fused inside the model's forward
    z = model.layers[0].forward(x, train)
    y = bn.forward(z, train)
    assert y.shape == z.shape and (y < 0).any()             # BatchNorm only: no ReLU, no pooling
    r = relu.forward(y, train)
    np.testing.assert_array_equal(r, np.maximum(y, 0))
    p = pool.forward(r, train)
    assert p.shape == (2, 32, 32, 24)
    np.testing.assert_array_equal(p, r.reshape(2, 32, 32, 2, 24, 2).max(axis=(3, 5)))


def test_a_sub_model_sharing_layers_fuses_by_its_own_structure():
    """Sequential(model.layers[:3]) = conv, BatchNorm2D, ReLU: no max-pool is fused into its
    BatchNorm2D (the full model's MaxPool2D is not in it), and the full model still fuses."""
    from tinyconv import Sequential, seed_cnn
    model = seed_cnn(input_shape=(3, 64, 48), seed=2)
    head = Sequential(model.layers[:3])
    x = np.random.default_rng(16).random((2, 3, 64, 48), dtype=np.float32)
    for train in (True, False):
        y = head.forward(x, train)
        assert y.shape == (2, 32, 64, 48) and (y >= 0).all() and (y == 0).any()
        assert type(head.steps[1]) is BNReLU                # no max-pool in the sub-model
        model.forward(x, train)
        assert type(model.steps[1]) is BNReLUMaxPool
        np.testing.assert_array_equal(head.forward(x, train), y)


def test_fusion_is_per_thread_when_threads_share_a_model():
    """Several threads running one model's forward at once (a server, say) each get the model's
    output: the plan is built per call (tinyconv/fusion.py) and the fused steps' saved state lives in
    it, not in flags on the shared layers. Thread switches are forced often to interleave the layers. (To BLAS rounding:
    the threads' GEMMs run with per-thread OpenBLAS settings, see kernels/threads.py.)"""
    import sys
    import threading
    from tinyconv import seed_cnn
    model = seed_cnn(input_shape=(3, 64, 48), seed=3)
    xs = [np.random.default_rng(20 + i).random((2, 3, 64, 48), dtype=np.float32) for i in range(3)]
    want = [model.forward(x, False) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(15):
                np.testing.assert_allclose(model.forward(xs[i], False), want[i], rtol=1e-5, atol=1e-5)
                if i == 0:                       # a probe of one layer, outside the chain
                    assert model.layers[1].forward(model.layers[0].forward(xs[i], False), False).shape == (2, 32, 64, 48)
        except Exception as e:                   # noqa: BLE001  (reported below)
            errors.append(e)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]


@pytest.mark.parametrize("train", [True, False])
def test_a_layer_object_used_twice_in_a_model(plain, train):
    """One ReLU and one MaxPool2D object at two places in a model: each use is a step of its own."""
    from tinyconv import Sequential
    rng = np.random.default_rng(17)
    relu, pool = ReLU(), MaxPool2D(2)
    model = Sequential([Conv2D(3, 4, 3, padding=1, rng=rng), BatchNorm2D(4), relu, pool,
                        Conv2D(4, 4, 3, padding=1, rng=rng), BatchNorm2D(4), relu, pool])
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    y = model.forward(x, train)
    assert [type(st) for st in model.steps[1::2]] == [BNReLUMaxPool] * 2 and y.shape == (2, 4, 4, 4)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dy) if train else None
    with plain():
        ref = model.forward(x, train)
        ref_dx = model.backward(dy) if train else None
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    if train:
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-4 * np.abs(ref_dx).max())


def test_batchnorm_inference_backward_is_scale_times_dy_even_for_infinite_inputs(plain):
    """Inference backward multiplies dy by gamma * inv_std; an infinite input does not turn the
    gradient into NaN (the training formula's xhat * 0 would)."""
    bn = BatchNorm2D(2)
    x = np.ones((2, 2, 3, 3), np.float32)
    x[0, 0, 0, 0] = np.inf
    dy = np.ones_like(x)
    bn.forward(x, False)
    fast = bn.backward(dy)
    with plain():
        bn.forward(x, False)
        ref = bn.backward(dy)
    assert np.isfinite(fast).all()
    np.testing.assert_allclose(fast, ref, rtol=1e-6)


def test_fused_maxpool_checks_the_gradient_shape():
    step = BNReLUMaxPool(BatchNorm2D(2), ReLU(), MaxPool2D(2))
    y = step.forward(np.ones((2, 2, 4, 4), np.float32), True)
    assert y.shape == (2, 2, 2, 2) and made_by(step.saved) == "fused_numba"
    with pytest.raises(ValueError, match=r"gradient of shape \(2, 2, 2, 2\)"):
        step.backward(np.ones((2, 2, 4, 4), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chain", ["bn", "bn-relu", "bn-relu-pool"])
def test_batchnorm_inference_kernels_match_plain(plain, dtype, chain):
    """Inference mode (running statistics) on the numba path, alone and fused with the ReLU and the
    max-pool: forward; and for BatchNorm2D alone (ReLU and MaxPool2D keep nothing for a backward in
    inference mode), backward through constant statistics (dx = gamma * inv_std * dy)."""
    rng = np.random.default_rng(12)
    shape = (3, 4, 8, 7)
    x = (rng.standard_normal(shape) + 0.3).astype(dtype)

    def run(fast):
        bn, relu, pool = BatchNorm2D(4).astype(dtype), ReLU(), MaxPool2D(2)
        bn.params["gamma"][:], bn.params["beta"][:] = rng_params
        bn.buffers["running_mean"][:], bn.buffers["running_var"][:] = rng_stats
        layers = {"bn": [bn], "bn-relu": [bn, relu], "bn-relu-pool": [bn, relu, pool]}[chain]
        steps = plan(layers)
        h, _ = run_steps(steps, x, train=False)
        kind = {"bn": BatchNorm2D, "bn-relu": BNReLU, "bn-relu-pool": BNReLUMaxPool}[chain]
        assert [type(st) for st in steps] == [kind]
        ran = ops.implementation(getattr(steps[0], "op", "batchnorm"), x, *bn.params.values(), *bn.buffers.values())
        assert ran.__name__.endswith("_numba") == fast
        if chain != "bn":
            return [h]
        assert made_by(bn.cache) == ("norm_numba" if fast else "norm")
        dy = np.random.default_rng(13).standard_normal(h.shape).astype(dtype)
        return [h, bn.backward(dy), bn.grads["gamma"], bn.grads["beta"]]

    pr = np.random.default_rng(14)
    rng_params = pr.uniform(0.5, 2, 4), pr.standard_normal(4)
    rng_stats = pr.standard_normal(4) * 0.2, pr.uniform(0.5, 2, 4)
    fast = run(True)
    with plain():
        ref = run(False)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(fast, ref):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1, np.abs(b).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_kernel_matches_plain(plain, dtype):
    rng = np.random.default_rng(9)
    shapes = {"w": (4, 3, 3, 3), "b": (4,)}
    start = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()} for _ in range(4)]

    def train(use_plain):
        params = {k: v.copy() for k, v in start.items()}
        g = {}
        opt = Adam([(params, g)], lr=1e-2, eps=1e-7)
        for step_grads in grads:
            g.update(step_grads)
            if use_plain:
                with plain():
                    opt.step()
            else:
                opt.step()
        return params, opt.m[0], opt.v[0]

    for fast, ref in zip(train(False), train(True)):
        for k in shapes:
            assert fast[k].dtype == dtype
            np.testing.assert_allclose(fast[k], ref[k], rtol=4 * np.finfo(dtype).eps, atol=0)


def test_empty_batches_take_the_plain_path_or_work():
    """An empty batch must not reach a kernel that reads x[0] (numba does not check bounds)."""
    x = np.zeros((0, 2, 4, 4), dtype=np.float32)
    assert Conv2D(2, 3, 3, padding=1).forward(x).shape == (0, 3, 4, 4)
    assert MaxPool2D(2).forward(x).shape == (0, 2, 2, 2)
    assert ReLU().forward(x).shape == x.shape
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        BatchNorm2D(2).forward(x)                      # plain path: mean of nothing is nan


def test_kernels_skip_cupy_like_and_odd_dtypes():
    """Only NumPy arrays of one dtype, float32 or float64, none of them empty, take the numba path."""
    f32, f64 = np.zeros(3, np.float32), np.zeros(2, np.float64)
    assert ops.backend(f32, np.ones(2, np.float32)) == ops.backend(f64) == "numba"
    assert ops.backend(f32, f64) == "reference"                     # mixed dtypes
    assert ops.backend(np.zeros(3, np.float16)) == "reference"
    assert ops.backend(np.zeros(3, np.int32)) == "reference"
    assert ops.backend([1.0, 2.0]) == "reference"
    assert ops.backend(np.zeros((0, 3), np.float32)) == "reference"  # empty: never reaches a kernel
    assert ops.implementation("relu", f32).__name__ == "tinyconv.ops.activations_numba"
    assert ops.implementation("bce", f32).__name__ == "tinyconv.ops.loss"   # no numba version


@pytest.mark.parametrize("cache_cols", [0, 1 << 20])          # conv columns rebuilt / kept from forward
@pytest.mark.parametrize("one_image_max_k", [0, 64])          # conv chunks of several images / one each
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("threads", [2, 3])
def test_threads_do_not_change_results(monkeypatch, threads, fuse, one_image_max_k, cache_cols):
    """The layers split their work into parts whose bounds do not depend on the thread count: one
    thread and several give bit-identical outputs and gradients (conv's chunked dw/db included)."""
    from tinyconv.kernels import threads as pool
    monkeypatch.setattr(pool, "MIN_PARALLEL_ELEMENTS", 0)        # split even these small arrays
    monkeypatch.setattr(conv_module, "CHUNK_ELEMENTS", 500)      # several chunks per thread
    monkeypatch.setattr(conv_module, "ONE_IMAGE_MAX_K", one_image_max_k)
    monkeypatch.setattr(conv_module, "CACHE_COLS_BYTES", cache_cols)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((9, 3, 11, 10)).astype(np.float32)

    def run():
        layers = [Conv2D(3, 5, 3, padding=1, rng=np.random.default_rng(1)), BatchNorm2D(5), ReLU(),
                  MaxPool2D(2)]
        params = layers[0].params
        opt = Adam([(params, layers[0].grads)], lr=1e-2)
        steps = plan(layers) if fuse else layers                  # BatchNorm2D -> ReLU -> max-pool fused
        out = []
        for step in steps:
            out.append(step.forward(x if not out else out[-1], True))
        dy = np.random.default_rng(11).standard_normal(out[-1].shape).astype(np.float32)
        for step in reversed(steps):
            dy = step.backward(dy)
            out.append(dy)
        opt.step()
        return out + [g.copy() for g in layers[0].grads.values()] + [p.copy() for p in params.values()]

    before = pool.get_num_threads()
    try:
        pool.set_num_threads(1)
        serial = run()
        pool.set_num_threads(threads)
        parallel = run()
    finally:
        pool.set_num_threads(before)
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_run_parts_propagates_errors_and_runs_every_part():
    from tinyconv.kernels import threads as pool
    before = pool.get_num_threads()
    pool.set_num_threads(2)
    try:
        seen = []
        pool.run_parts(seen.append, 5)
        assert sorted(seen) == [0, 1, 2, 3, 4]

        def fail(i):
            if i == 1:
                raise ValueError("part 1")
        with pytest.raises(ValueError, match="part 1"):
            pool.run_parts(fail, 2)
    finally:
        pool.set_num_threads(before)


def test_threads_do_not_change_results_with_threaded_blas_sizes():
    """GEMMs large enough for OpenBLAS to thread: the pool holds the BLAS to one thread even when
    it has one thread itself, so 1 and 2 threads still agree bit for bit."""
    from tinyconv.kernels import threads as pool
    rng = np.random.default_rng(12)
    x = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)
    before = pool.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            pool.set_num_threads(n)
            layer = Conv2D(16, 32, 3, padding=1, rng=np.random.default_rng(1))
            results.append(run_layer(layer, x, 13))
    finally:
        pool.set_num_threads(before)
    (y1, dx1, g1), (y2, dx2, g2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])


def test_a_worker_thread_gets_the_same_bits_as_the_main_thread():
    """Training from a thread other than the main one: its GEMMs run on one BLAS thread too. With
    OpenBLAS the global setting alone did not reach such a thread once the main thread had used
    the BLAS (measured: a 128x577 @ 577x192 product rounded differently), so the pool also sets
    OpenBLAS's per-thread count (kernels/threads.py)."""
    import threading
    rng = np.random.default_rng(22)
    layer = Conv2D(64, 128, 3, padding=1, rng=rng)          # K + 1 = 577: an odd inner dimension
    x = rng.random((2, 64, 16, 12), dtype=np.float32)
    np.ones((300, 300)) @ np.ones((300, 300))                # the main thread uses the BLAS
    want = run_layer(layer, x, 23)
    got = {}
    worker = threading.Thread(target=lambda: got.setdefault("r", run_layer(layer, x, 23)))
    worker.start()
    worker.join()
    for a, b in zip(want[:2], got["r"][:2]):
        np.testing.assert_array_equal(a, b)
    for k in want[2]:
        np.testing.assert_array_equal(want[2][k], got["r"][2][k])
