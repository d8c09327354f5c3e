"""Adam on NumPy float32/float64 arrays: one numba pass over (p, g, m, v) per array instead of the
reference's (optim.py) eight NumPy passes with temporaries. The same operations in the same order,
in the arrays' dtype (the scalars are cast to it first), so the result is the reference's. The
threads take equal slices of every array (elementwise: the same result for any thread count).
"""
import numba
import numpy as np

from ..kernels.threads import parts_for, run_parts, split


@numba.njit(cache=True, nogil=True)
def adam_pass(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, bc2, eps, step):
    """Flat contiguous arrays, updated in place; step = lr / bc1:
    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g*g);  p -= (lr/bc1) * m / (sqrt(v/bc2) + eps)"""
    for i in range(p.size):
        gi = g[i]
        mi = m[i] * b1 + one_minus_b1 * gi
        vi = v[i] * b2 + one_minus_b2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (np.sqrt(vi / bc2) + eps)


def adam_update(params, grads, ms, vs, lr, beta1, beta2, eps, t):
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    work, strided = [], []
    for arrays in zip(params, grads, ms, vs):
        flat = [np.ascontiguousarray(a, dtype=arrays[0].dtype).reshape(-1) for a in arrays]
        strided += [(a, f) for a, f in zip(arrays, flat) if not (a.flags.c_contiguous and a.dtype == f.dtype)]
        d = arrays[0].dtype.type
        work.append(flat + [(d(beta1), d(1 - beta1), d(beta2), d(1 - beta2), d(bc2), d(eps), d(lr / bc1))])
    size = sum(w[0].size for w in work)
    parts = parts_for(size, size)

    def part(i):
        for p, g, m, v, scalars in work:
            a, b = split(p.size, parts, i)
            adam_pass(p[a:b], g[a:b], m[a:b], v[a:b], *scalars)
    run_parts(part, parts)
    for a, f in strided:                        # an array that was not contiguous: updated in a copy
        a[...] = f.reshape(a.shape)
