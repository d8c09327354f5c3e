"""The micro-batch planner asks the ops what they keep for backward (no branches on layer classes)."""
import numpy as np

from tinyconv import Conv2D, Layer, Sequential, ops, seed_cnn
from tinyconv.fusion import BNReLUMaxPool
from tinyconv.ops.geometry import geometry
from tinyconv.training import training_bytes_per_sample


def test_the_estimate_adds_what_each_step_of_the_plan_states():
    model = seed_cnn(input_shape=(3, 54, 44))
    shape, total, largest = (3, 54, 44), 3 * 54 * 44 * 4, 0
    for step in model.plan():
        out = step.output_shape(shape)
        kept = step.saved_bytes((1,) + shape, np.float32, "cpu")
        total += int(np.prod(out)) * 4 + kept
        largest = max(largest, kept + int(np.prod(out)) * 4)
        shape = out
    assert training_bytes_per_sample(model, (3, 54, 44)) == int(total + 2 * largest)


def test_each_implementation_states_its_own_bytes(monkeypatch):
    """The fused block keeps x by reference and a 1-byte argmax in numba; the reference composition
    keeps xhat, the ReLU's mask and the argmax."""
    step = seed_cnn(input_shape=(3, 54, 44)).plan()[1]
    assert isinstance(step, BNReLUMaxPool)
    x_shape = (1, 32, 54, 44)
    values, pooled = 32 * 54 * 44, 32 * 27 * 22
    monkeypatch.setattr(ops, "NUMBA", False)
    assert step.saved_bytes(x_shape, np.float32, "cpu") == (values + 32) * 4 + values + pooled
    if ops.HAVE_NUMBA:
        monkeypatch.setattr(ops, "NUMBA", True)
        assert step.saved_bytes(x_shape, np.float32, "cpu") == 4 * 32 * 4 + pooled


def test_a_layer_of_ones_own_counts_what_it_says():
    class Keeps(Layer):
        def forward(self, x, train=True):
            return x

        def saved_bytes(self, x_shape, dtype, device):
            return 1000

    a = Sequential([Conv2D(3, 4, 3, padding=1)])
    b = Sequential([Conv2D(3, 4, 3, padding=1), Keeps()])
    extra = training_bytes_per_sample(b, (3, 8, 8)) - training_bytes_per_sample(a, (3, 8, 8))
    assert extra == 4 * 8 * 8 * 4 + 1000       # its output and what it keeps


def test_the_cuda_conv_is_charged_no_column_matrix(monkeypatch):
    """On the GPU with the CUDA kernels a conv keeps x by reference only (its chunk buffers live
    inside one call), so the plan charges it 0 bytes of its own; with the kernels off the reference
    runs and its whole-batch column matrix is charged."""
    monkeypatch.setattr(Sequential, "device", property(lambda self: "gpu"))
    model = seed_cnn(input_shape=(3, 54, 44))
    convs, shape = [], (3, 54, 44)
    for step in model.plan():
        if isinstance(step, Conv2D):
            convs.append((step, (1,) + shape))
        shape = step.output_shape(shape)
    assert len(convs) == 5
    monkeypatch.setattr(ops, "CUDA", True)
    assert [conv.saved_bytes(x_shape, np.float32, "gpu") for conv, x_shape in convs] == [0] * 5
    with_kernels = training_bytes_per_sample(model, (3, 54, 44))
    monkeypatch.setattr(ops, "CUDA", False)
    for conv, x_shape in convs:
        g = geometry(x_shape, conv.kernel_size, conv.stride, conv.padding)
        assert conv.saved_bytes(x_shape, np.float32, "gpu") == g.K * g.P * 4
    assert training_bytes_per_sample(model, (3, 54, 44)) > with_kernels


def _plan(monkeypatch, free, device="cpu", **cfg):
    """plan_micro_batch with ``free`` bytes available (the estimate, not the measurement, decides)."""
    import tinyconv.training as training
    monkeypatch.setattr(training, "available_bytes", lambda device: free)
    monkeypatch.setattr(training, "measured_bytes_per_sample", lambda model, shape: None)
    model = seed_cnn(input_shape=(3, 54, 44))
    per = training_bytes_per_sample(model, (3, 54, 44))
    c = training.TrainConfig(**{"batch_size": 32, "max_batch_size": 1024, "progress": False, **cfg})
    return per, lambda **kw: training.plan_micro_batch(c, model, (3, 54, 44), **kw)


def test_the_plan_covers_the_batches_every_growing_schedule_reaches_and_each_ranks_share(monkeypatch):
    per = per_sample_cpu()
    for schedule in ("batch-increase", "noise-adaptive"):          # both grow to max_batch_size
        per, plan = _plan(monkeypatch, free=int(300 * per / 0.6) + 1, schedule=schedule)
        assert plan() == 256                                       # 1024 images do not fit, 300 do
        assert plan(ranks=4) is None                               # a quarter of 1024 fits
    per, plan = _plan(monkeypatch, free=int(300 * per / 0.6) + 1, schedule="constant")
    assert plan() is None                                          # constant stays at 32


def test_the_plan_keeps_the_largest_ops_workspace_free(monkeypatch):
    from tinyconv.ops import conv_cuda
    monkeypatch.setattr(ops, "CUDA", True)
    assert ops.workspace_bytes("gpu", np.float32) == 2 * conv_cuda.CHUNK_ELEMENTS * 4   # 2 GiB
    assert ops.workspace_bytes("cpu", np.float32) == 0
    monkeypatch.setattr(ops, "CUDA", False)
    assert ops.workspace_bytes("gpu", np.float32) == 0                                 # the reference
    per, plan = _plan(monkeypatch, free=int((1024 * per_sample_cpu() + 2 * conv_cuda.CHUNK_ELEMENTS * 4) / 0.6),
                      schedule="batch-increase")
    assert plan() is None
    monkeypatch.setattr(ops, "workspace_bytes", lambda device, dtype: 2 * conv_cuda.CHUNK_ELEMENTS * 4)
    per, plan = _plan(monkeypatch, free=int((1024 * per + conv_cuda.CHUNK_ELEMENTS * 4) / 0.6),
                      schedule="batch-increase")
    assert plan() == 512                                           # fits without the workspace, not with it


def per_sample_cpu():
    return training_bytes_per_sample(seed_cnn(input_shape=(3, 54, 44)), (3, 54, 44))
