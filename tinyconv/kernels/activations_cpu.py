"""numba CPU kernels for ReLU: forward writes y and the mask in one pass; backward one multiply."""
import numba


@numba.njit(cache=True, nogil=True)
def relu_forward(x, y, mask):
    """Flat (contiguous) arrays: mask[i] = x[i] > 0; y[i] = x[i] if mask[i] else 0."""
    for i in range(x.size):
        v = x[i]
        m = v > 0
        mask[i] = m
        y[i] = v if m else 0


@numba.njit(cache=True, nogil=True)
def relu_backward(dy, mask, dx):
    """dx[i] = dy[i] where the input was > 0, else 0."""
    for i in range(dy.size):
        dx[i] = dy[i] if mask[i] else 0
