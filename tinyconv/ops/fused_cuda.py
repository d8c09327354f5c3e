"""The fused ops on CuPy float32 arrays: BatchNorm with the ReLU applied in its own kernel
(norm_cuda.py), then, for bn_relu_maxpool, the max-pool kernel (pool_cuda.py) on its output."""
from typing import NamedTuple

from .norm_cuda import backward, forward
from .pool_cuda import maxpool_backward, maxpool_forward, maxpool_saved_bytes


class BNReLUCudaSaved(NamedTuple):
    bn: object               # norm_cuda's saved state, with y (the ReLU's mask: y > 0)


class BNReLUMaxPoolCudaSaved(NamedTuple):
    bn: object
    pool: object


def bn_relu_forward(x, params, buffers, train, momentum, eps):
    y, bn = forward(x, params, buffers, train, momentum, eps, relu=True)
    return y, (BNReLUCudaSaved(bn) if train else None)


def bn_relu_backward(saved, dy, params, grads, accumulate=False):
    return backward(saved.bn, dy, params, grads, accumulate)


def bn_relu_maxpool_forward(x, params, buffers, train, momentum, eps, kernel, stride):
    r, bn = forward(x, params, buffers, train, momentum, eps, relu=True)
    y, pool = maxpool_forward(r, kernel, stride, train)
    return y, (BNReLUMaxPoolCudaSaved(bn, pool) if train else None)


def bn_relu_maxpool_backward(saved, dy, params, grads, accumulate=False):
    return backward(saved.bn, maxpool_backward(saved.pool, dy), params, grads, accumulate)


def bn_relu_saved_bytes(x_shape, itemsize):
    """y, the size of x (the ReLU's mask), by reference to the output; mean and inv_std."""
    N, C, H, W = x_shape
    return N * C * H * W * itemsize + 2 * C * itemsize


def bn_relu_maxpool_saved_bytes(x_shape, kernel, stride, itemsize):
    return bn_relu_saved_bytes(x_shape, itemsize) + maxpool_saved_bytes(x_shape, kernel, stride, itemsize)
