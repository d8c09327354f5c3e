"""Weight initialisers, seeded by a NumPy Generator (weights are drawn on the CPU, then moved).

Drawing on the CPU with NumPy keeps a seed's weights identical on every device, so a GPU
run starts from exactly the CPU run's weights.

fan_in / fan_out: for a conv weight (C_out, C_in, kh, kw) fan_in = C_in*kh*kw and
fan_out = C_out*kh*kw; for a dense weight (in, out) they are in and out.
"""
import numpy as np


def fans(shape):
    if len(shape) == 2:          # Dense: (in_features, out_features)
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


def he_normal(shape, rng):
    """He et al. 2015: N(0, 2/fan_in), keeps the activation variance through ReLUs."""
    fan_in, _ = fans(shape)
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def he_uniform(shape, rng):
    fan_in, _ = fans(shape)
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape)


def glorot_uniform(shape, rng):
    """Glorot & Bengio 2010 (Keras' default): U(-a, a), a = sqrt(6/(fan_in+fan_out))."""
    fan_in, fan_out = fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def glorot_normal(shape, rng):
    fan_in, fan_out = fans(shape)
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def lecun_normal(shape, rng):
    fan_in, _ = fans(shape)
    return rng.normal(0.0, np.sqrt(1.0 / fan_in), size=shape)


INITIALIZERS = {
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "lecun_normal": lecun_normal,
}


def initialize(name, shape, rng=None, dtype=np.float32):
    """Draw a weight array of ``shape`` with the named initialiser."""
    if name not in INITIALIZERS:
        raise ValueError(f"unknown initialiser {name!r}; choose one of {', '.join(INITIALIZERS)}")
    rng = rng if rng is not None else np.random.default_rng()
    return INITIALIZERS[name](tuple(shape), rng).astype(dtype)
