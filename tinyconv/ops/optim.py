"""Adam (Kingma & Ba 2015), the reference, plain xp: one update of lists of arrays, in place.

    m = b1*m + (1-b1)*g      v = b2*v + (1-b2)*g^2
    m_hat = m / (1 - b1^t)   v_hat = v / (1 - b2^t)
    p -= lr * m_hat / (sqrt(v_hat) + eps)
The numba (optim_numba.py) and CUDA (optim_cuda.py) versions take the same lists and do the same
arithmetic, elementwise, in one pass per array.
"""
from ..backend import get_array_module


def adam_update(params, grads, ms, vs, lr, beta1, beta2, eps, t):
    """Step ``t`` (1, 2, ...) of Adam on each (p, g, m, v) of the four lists; p, m, v in place."""
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    for p, g, m, v in zip(params, grads, ms, vs):
        xp = get_array_module(p)
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        denom = xp.sqrt(v / bc2)
        denom += eps
        p -= (lr / bc1) * m / denom
