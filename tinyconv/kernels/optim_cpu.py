"""numba CPU kernel for Adam: one pass over (p, g, m, v) instead of NumPy's eight with temporaries.

Same operations in the same order as ``tinyconv.optim.Adam.step``'s plain-xp lines, in the
arrays' dtype (the scalars are passed already cast to it):
    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g*g);  p -= (lr/bc1) * m / (sqrt(v/bc2) + eps)
"""
import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def adam_update(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, bc2, eps, step):
    """Flat contiguous arrays, updated in place; step = lr / bc1."""
    for i in range(p.size):
        gi = g[i]
        mi = m[i] * b1 + one_minus_b1 * gi
        vi = v[i] * b2 + one_minus_b2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (np.sqrt(vi / bc2) + eps)
