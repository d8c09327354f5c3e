"""BatchNorm2D -> ReLU fusion (CUDA kernels and numba CPU kernels): the smallest mechanism that keeps the layer list.

``fuse_bn_relu(model)`` marks each BatchNorm2D that a ReLU directly follows (``bn.fuse_relu = True``)
and points the ReLU at it (``relu.fused_from = bn``). Nothing else changes: both layers stay in
``model.layers`` (state dicts, summaries and exports are untouched). At run time:
  - BatchNorm2D applies max(y, 0) itself only when it runs its CUDA or numba kernels, and says so in
    ``bn.relu_applied`` (reset at every forward); its backward then masks dy with y > 0.
  - ReLU checks ``fused_from.relu_applied``: True -> it passes x (and later dy) through unchanged;
    False (NumPy, float64, kernels off, any other path) -> it does its usual work.
So the pair computes max(BN(x), 0) exactly once on every path, whatever device or dtype.

The same for a MaxPool2D right after such a ReLU, when its windows do not overlap (stride >= kernel):
``bn.fuse_pool = pool``, ``pool.fused_from = bn``. The numba training path of BatchNorm2D then
pools too (``bn.pool_applied``), so the full-resolution BatchNorm+ReLU output and its gradient are
never materialised (kernels/norm_cpu.py), and the MaxPool2D passes x and dy through. Every other
path (CUDA, plain NumPy) leaves the pooling to the MaxPool2D.

The marks act only inside :func:`chain`, which ``Sequential.forward`` enters: a marked layer called
on its own (``model.layers[1].forward(x)``, as a walkthrough or a user probing activations does) is
the plain layer, whatever the last model forward did.
"""
import contextlib
import threading

_chain = threading.local()


@contextlib.contextmanager
def chain():
    """Inside: marked BatchNorm2D -> ReLU (-> MaxPool2D) runs run fused (per thread)."""
    before = getattr(_chain, "on", False)
    _chain.on = True
    try:
        yield
    finally:
        _chain.on = before


def active():
    """Whether the calling thread is inside :func:`chain`."""
    return getattr(_chain, "on", False)


def fuse_bn_relu(model):
    """Mark every BatchNorm2D -> ReLU pair of ``model.layers`` (and a non-overlapping MaxPool2D
    right after); returns the number of pairs. Marks from any earlier call are cleared first, so
    they describe this model even when its layers also sit in another one (a sub-model built from
    ``model.layers[:3]``, say): ``Sequential.forward`` calls this before each run (microseconds)."""
    from ..layers import BatchNorm2D, MaxPool2D, ReLU
    layers = list(model.layers)
    for layer in layers:
        if type(layer) is BatchNorm2D:
            layer.fuse_relu, layer.fuse_pool = False, None
        elif type(layer) in (ReLU, MaxPool2D):
            layer.fused_from = None
    count = 0
    for i, (bn, relu) in enumerate(zip(layers, layers[1:])):
        if type(bn) is BatchNorm2D and type(relu) is ReLU:
            bn.fuse_relu = True
            relu.fused_from = bn
            count += 1
            pool = layers[i + 2] if i + 2 < len(layers) else None
            if (type(pool) is MaxPool2D and pool.stride[0] >= pool.kernel_size[0]
                    and pool.stride[1] >= pool.kernel_size[1]):
                bn.fuse_pool = pool
                pool.fused_from = bn
    return count
