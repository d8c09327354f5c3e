"""Sigmoid + BCE on CuPy float32 logits (cuda/loss.cu): one pass gives every loss term and the
gradient dz, one CuPy mean gives the loss (a 0-d device array: nothing is read back)."""
import numpy as np

from .common_gpu import f32, i32, i64, launch


def bce_with_logits(z, t, pos_weight=None):
    """-> (loss as a 0-d array, dz) for logits z (N, K) and 0/1 targets t (N, K)."""
    import cupy
    z = cupy.ascontiguousarray(z)
    t = cupy.ascontiguousarray(t, dtype=np.float32)
    K = z.shape[-1] if z.ndim else 1
    w = z if pos_weight is None else cupy.ascontiguousarray(cupy.asarray(pos_weight, dtype=np.float32))
    loss = cupy.empty_like(z)
    dz = cupy.empty_like(z)
    launch("loss", "bce_forward_backward", z.size, z, t, w, i32(pos_weight is not None),
           i64(z.size), i32(K), f32(z.size), loss, dz)
    return loss.mean(), dz
