"""Window geometry, computed in one place: the convolutions and the poolings (every implementation).

    out = (size + 2*pad - k) // stride + 1          along each axis (floor mode)

A window over x (N, C, H, W) reads K = C*kh*kw values and there are P = out_h*out_w windows per
image: the column matrix of one image is (K, P).
"""
from typing import NamedTuple


def conv_out_size(size, k, stride, pad):
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    out = (size + 2 * pad - k) // stride + 1
    if out < 1:
        raise ValueError(f"window {k} with stride {stride} and padding {pad} does not fit an input of size {size}")
    return out


class Geometry(NamedTuple):
    """A kh x kw window with stride (sh, sw) and padding (ph, pw) over x (N, C, H, W)."""
    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    out_h: int
    out_w: int

    @property
    def K(self):
        return self.C * self.kh * self.kw

    @property
    def P(self):
        return self.out_h * self.out_w

    @property
    def window(self):
        """(kh, kw, sh, sw, ph, pw, out_h, out_w): the arguments every im2col-like kernel takes."""
        return self[4:]


def geometry(x_shape, kernel, stride, pad=(0, 0)):
    """The Geometry of a window ``kernel`` (kh, kw) with ``stride`` and ``pad`` over ``x_shape``."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    return Geometry(N, C, H, W, kh, kw, sh, sw, ph, pw,
                    conv_out_size(H, kh, sh, ph), conv_out_size(W, kw, sw, pw))
