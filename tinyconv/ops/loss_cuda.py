"""Sigmoid + BCE on CuPy float32 logits (kernels/cuda/loss.cu): one pass gives every loss term and the
gradient dz, one CuPy mean gives the loss (a 0-d device array: nothing is read back). The gradient
is the saved state: backward returns it."""
from typing import NamedTuple

import numpy as np

from ..kernels.common_gpu import f32, i32, i64, launch


class BCECudaSaved(NamedTuple):
    dz: object


def bce_forward(z, t, pos_weight=None):
    """-> (loss as a 0-d array, BCECudaSaved(dz)) for logits z (N, K) and 0/1 targets t (N, K)."""
    import cupy
    z = cupy.ascontiguousarray(z)
    t = cupy.ascontiguousarray(t, dtype=np.float32)
    K = z.shape[-1] if z.ndim else 1
    w = z if pos_weight is None else cupy.ascontiguousarray(cupy.asarray(pos_weight, dtype=np.float32))
    loss = cupy.empty_like(z)
    dz = cupy.empty_like(z)
    launch("loss", "bce_forward_backward", z.size, z, t, w, i32(pos_weight is not None),
           i64(z.size), i32(K), f32(z.size), loss, dz)
    return loss.mean(), BCECudaSaved(dz)


def bce_backward(saved):
    return saved.dz
