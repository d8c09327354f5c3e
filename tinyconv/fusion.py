"""The fusion plan: a model's layer list as the list of steps its forward runs.

    BatchNorm2D -> ReLU -> MaxPool2D (non-overlapping)   one step: ops.bn_relu_maxpool
    BatchNorm2D -> ReLU                                   one step: ops.bn_relu
    any other layer                                       itself

``Sequential.forward`` runs ``plan(model.layers)`` forward and its backward walks the same steps in
reverse. A fused step is a named op whose reference implementation is the composition of the
unfused reference ops (tinyconv/ops/fused.py): it computes the same function on every backend,
and the numba and CUDA versions do it in fewer passes. The plan depends on the layer list only,
never on the device or the dtype; the layers stay in ``model.layers`` unchanged (state dicts,
summaries, checkpoints and exports do not see it), and a layer called on its own is the plain layer.
"""
from . import ops
from .layers import BatchNorm2D, MaxPool2D, ReLU


class BNReLU:
    """BatchNorm2D then ReLU, as one step. Holds the op's saved state of its last forward."""
    op = "bn_relu"

    def __init__(self, bn, relu):
        self.bn, self.layers = bn, (bn, relu)
        self.saved = None

    @property
    def name(self):
        return "+".join(layer.name or type(layer).__name__ for layer in self.layers)

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def forward(self, x, train=True):
        for layer in self.layers:       # what they kept from a call on their own is stale now
            layer.clear_cache()
        bn = self.bn
        y, self.saved = ops.bn_relu_forward(x, bn.params, bn.buffers, train, bn.momentum, bn.eps)
        return y

    def backward(self, dy, accumulate=False):
        return ops.bn_relu_backward(self._saved(), dy, self.bn.params, self.bn.grads, accumulate)

    def saved_bytes(self, x_shape, dtype, device):
        return ops.bn_relu_saved_bytes(x_shape, dtype, device)

    def _saved(self):
        if self.saved is None:
            raise RuntimeError(f"{self.name}.backward called without a forward(train=True) before it")
        return self.saved


class BNReLUMaxPool(BNReLU):
    """BatchNorm2D, ReLU, then a MaxPool2D with non-overlapping windows, as one step."""
    op = "bn_relu_maxpool"

    def __init__(self, bn, relu, pool):
        super().__init__(bn, relu)
        self.pool, self.layers = pool, (bn, relu, pool)

    def forward(self, x, train=True):
        for layer in self.layers:
            layer.clear_cache()
        bn, pool = self.bn, self.pool
        y, self.saved = ops.bn_relu_maxpool_forward(x, bn.params, bn.buffers, train, bn.momentum, bn.eps,
                                                    pool.kernel_size, pool.stride)
        return y

    def backward(self, dy, accumulate=False):
        return ops.bn_relu_maxpool_backward(self._saved(), dy, self.bn.params, self.bn.grads, accumulate)

    def saved_bytes(self, x_shape, dtype, device):
        return ops.bn_relu_maxpool_saved_bytes(x_shape, self.pool.kernel_size, self.pool.stride, dtype, device)


def _non_overlapping(pool):
    return (type(pool) is MaxPool2D and pool.stride[0] >= pool.kernel_size[0]
            and pool.stride[1] >= pool.kernel_size[1])


def plan(layers):
    """The steps that run ``layers``: each BatchNorm2D -> ReLU (-> non-overlapping MaxPool2D) as one
    fused step, every other layer as itself."""
    layers, steps, i = list(layers), [], 0
    while i < len(layers):
        here = layers[i:i + 3]
        if len(here) >= 2 and type(here[0]) is BatchNorm2D and type(here[1]) is ReLU:
            if len(here) == 3 and _non_overlapping(here[2]):
                steps.append(BNReLUMaxPool(*here))
                i += 3
            else:
                steps.append(BNReLU(*here[:2]))
                i += 2
        else:
            steps.append(layers[i])
            i += 1
    return steps
