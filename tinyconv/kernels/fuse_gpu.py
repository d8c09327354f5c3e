"""BatchNorm2D -> ReLU fusion (CUDA kernels and numba CPU kernels): the smallest mechanism that keeps the layer list.

``fuse_bn_relu(model)`` marks each BatchNorm2D that a ReLU directly follows (``bn.fuse_relu = True``)
and points the ReLU at it (``relu.fused_from = bn``). Nothing else changes: both layers stay in
``model.layers`` (state dicts, summaries and exports are untouched). At run time:
  - BatchNorm2D applies max(y, 0) itself only when it runs its CUDA or numba kernels, and says so in
    ``bn.relu_applied`` (reset at every forward); its backward then masks dy with y > 0.
  - ReLU checks ``fused_from.relu_applied``: True -> it passes x (and later dy) through unchanged;
    False (NumPy, float64, kernels off, any other path) -> it does its usual work.
So the pair computes max(BN(x), 0) exactly once on every path, whatever device or dtype.
"""


def fuse_bn_relu(model):
    """Mark every BatchNorm2D -> ReLU pair of ``model.layers``; returns the number of pairs."""
    from ..layers import BatchNorm2D, ReLU
    count = 0
    for bn, relu in zip(model.layers, model.layers[1:]):
        if type(bn) is BatchNorm2D and type(relu) is ReLU:
            bn.fuse_relu = True
            relu.fused_from = bn
            count += 1
    return count
