"""The fused ops a model's plan may use (tinyconv/fusion.py), the reference: the composition of the
reference ops, nothing more.

    bn_relu          = relu(batchnorm(x))
    bn_relu_maxpool  = maxpool(relu(batchnorm(x)))

The fast versions compute the same in fewer passes: fused_numba.py normalises, rectifies and pools
each window in one pass (the full-size BatchNorm output is never written); fused_cuda.py applies the
ReLU inside the BatchNorm kernel. Both are held to the unfused ops by tests/test_kernels_*.py.
"""
from typing import NamedTuple

from .activations import relu_backward, relu_forward, relu_saved_bytes
from .norm import batchnorm_backward, batchnorm_forward, batchnorm_saved_bytes
from .pool import maxpool_backward, maxpool_forward, maxpool_saved_bytes

SYNCS = True     # composes the reference BatchNorm, which takes part in synchronised BatchNorm


class BNReLUSaved(NamedTuple):
    bn: object
    relu: object


class BNReLUMaxPoolSaved(NamedTuple):
    bn: object
    relu: object
    pool: object


def bn_relu_forward(x, params, buffers, train, momentum, eps):
    z, bn = batchnorm_forward(x, params, buffers, train, momentum, eps)
    y, relu = relu_forward(z, train)
    return y, (BNReLUSaved(bn, relu) if train else None)


def bn_relu_backward(saved, dy, params, grads, accumulate=False):
    return batchnorm_backward(saved.bn, relu_backward(saved.relu, dy), params, grads, accumulate)


def bn_relu_maxpool_forward(x, params, buffers, train, momentum, eps, kernel, stride):
    z, bn = batchnorm_forward(x, params, buffers, train, momentum, eps)
    r, relu = relu_forward(z, train)
    y, pool = maxpool_forward(r, kernel, stride, train)
    return y, (BNReLUMaxPoolSaved(bn, relu, pool) if train else None)


def bn_relu_maxpool_backward(saved, dy, params, grads, accumulate=False):
    dr = maxpool_backward(saved.pool, dy)
    return batchnorm_backward(saved.bn, relu_backward(saved.relu, dr), params, grads, accumulate)


def bn_relu_saved_bytes(x_shape, itemsize):
    return batchnorm_saved_bytes(x_shape, itemsize) + relu_saved_bytes(x_shape, itemsize)


def bn_relu_maxpool_saved_bytes(x_shape, kernel, stride, itemsize):
    return bn_relu_saved_bytes(x_shape, itemsize) + maxpool_saved_bytes(x_shape, kernel, stride, itemsize)
