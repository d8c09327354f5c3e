"""Model builders. ``seed_cnn`` is the project's default model (see README, "The model").

A model records its arguments in ``model.config``; checkpoints and exports store that dict and
``build_model`` rebuilds the model from it. A stored config is untrusted input (a file may come
from anyone), so ``validate_config`` checks every key first, and ``check_state_fits`` compares a
loaded state dict with the shapes the config implies, before any weight is allocated.
"""
import math

import numpy as np

from .backend import DEFAULT_DTYPE
from .init import INITIALIZERS
from .layers import BatchNorm2D, Conv2D, Dense, Dropout, GlobalAvgPool2D, MaxPool2D, ReLU
from .sequential import Sequential

SEED_CHANNELS = (32, 64, 128, 128, 192)

# The bounds of a seed_cnn config. Width 8 is ~30M parameters (64x the default, ~118 MB in float32),
# far past the study's widths (<= 2) yet still buildable anywhere; the bound also keeps a stored width
# from asking for terabytes. 32 pixels is the least five 2x2 poolings leave a pixel of; 1024 is the
# limit of prepare, predict and the training loop (CelebA is 218x178). 40 outputs: CelebA has 40
# attributes, and a run picks distinct ones.
MAX_WIDTH = 8.0
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 32, 1024
MAX_CHANNELS_IN = 4                 # grey, RGB or RGBA
MAX_OUTPUTS = 40


def seed_channels(width):
    """The five blocks' channel counts at ``width`` (at least 1 each)."""
    return [max(1, int(round(c * width))) for c in SEED_CHANNELS]


def seed_cnn(num_outputs=3, input_shape=(3, 218, 178), width=1.0, dropout=0.3, init="he_normal",
             seed=0, dtype=DEFAULT_DTYPE):
    """Five blocks of Conv 3x3 (padding 1) -> BatchNorm -> ReLU -> MaxPool 2x2, then global
    average pooling -> Dropout(0.3) -> Dense(192 -> num_outputs) logits.

    With width 1.0 and 3 outputs: 463,875 trainable parameters, 1.013 GFLOP forward per 218x178
    image. ``width`` multiplies every block's channel count (the study's question of network size).
    ``init`` names the conv initialiser (He normal by default, right for ReLU); the head uses
    Glorot uniform. ``seed`` fixes the weights and the dropout masks.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    rng = np.random.default_rng(seed)
    layers, c_in = [], input_shape[0]
    for c_out in seed_channels(width):
        layers += [Conv2D(c_in, c_out, 3, padding=1, init=init, rng=rng, dtype=dtype),
                   BatchNorm2D(c_out, dtype=dtype), ReLU(), MaxPool2D(2)]
        c_in = c_out
    layers += [GlobalAvgPool2D(), Dropout(dropout, seed=int(rng.integers(2**63))),
               Dense(c_in, num_outputs, rng=rng, dtype=dtype)]
    model = Sequential(layers, name="seed_cnn", input_shape=input_shape)
    model.config = {"architecture": "seed", "num_outputs": num_outputs, "input_shape": list(input_shape),
                    "width": width, "dropout": dropout, "init": init, "seed": seed}
    return model


def seed_cnn_shapes(num_outputs, input_shape, width, **_):
    """{state_dict name: shape} of ``seed_cnn(...)``, worked out from the arguments alone. The names
    are Sequential's: "conv2d", "conv2d_1", ..., "batchnorm2d", ..., "dense"."""
    shapes, c_in = {}, input_shape[0]
    for i, c_out in enumerate(seed_channels(width)):
        conv, bn = ("conv2d", "batchnorm2d") if i == 0 else (f"conv2d_{i}", f"batchnorm2d_{i}")
        shapes[f"{conv}.w"], shapes[f"{conv}.b"] = (c_out, c_in, 3, 3), (c_out,)
        for k in ("gamma", "beta", "running_mean", "running_var"):
            shapes[f"{bn}.{k}"] = (c_out,)
        c_in = c_out
    shapes["dense.w"], shapes["dense.b"] = (c_in, num_outputs), (num_outputs,)
    return shapes


MODELS = {"seed": seed_cnn}
STATE_SHAPES = {"seed": seed_cnn_shapes}


def validate_config(config):
    """A checked copy of a ``model.config`` dict (``architecture`` filled in, ``input_shape`` a tuple);
    ValueError naming the first key that is unknown, missing, of the wrong type or out of range."""
    if not isinstance(config, dict):
        raise ValueError(f"model config: expected a dict, got {type(config).__name__}")
    config = dict(config)
    arch = config.setdefault("architecture", "seed")
    if arch not in MODELS:
        raise ValueError(f"model config: unknown architecture {arch!r}; known: {', '.join(MODELS)}")
    keys = ("architecture", "num_outputs", "input_shape", "width", "dropout", "init", "seed")
    for key in config:
        if key not in keys:
            raise ValueError(f"model config: unknown key {key!r} (known: {', '.join(keys)})")
    for key in keys:
        if key not in config:
            raise ValueError(f"model config: no {key!r}")

    def bad(key, expected):
        return ValueError(f"model config: {key} must be {expected}, got {config[key]!r}")

    if not _is_int(config["num_outputs"]) or not 1 <= config["num_outputs"] <= MAX_OUTPUTS:
        raise bad("num_outputs", f"an integer in [1, {MAX_OUTPUTS}]")
    shape = config["input_shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(map(_is_int, shape))
            or not 1 <= shape[0] <= MAX_CHANNELS_IN
            or not all(MIN_INPUT_SIDE <= s <= MAX_INPUT_SIDE for s in shape[1:])):
        raise bad("input_shape", f"[C, H, W] with C in [1, {MAX_CHANNELS_IN}] and H, W in "
                                 f"[{MIN_INPUT_SIDE}, {MAX_INPUT_SIDE}]")
    config["input_shape"] = tuple(int(s) for s in shape)
    if not _is_real(config["width"]) or not 0 < config["width"] <= MAX_WIDTH:
        raise bad("width", f"a number in (0, {MAX_WIDTH:g}]")
    if not _is_real(config["dropout"]) or not 0 <= config["dropout"] < 1:
        raise bad("dropout", "a number in [0, 1)")
    if config["init"] not in INITIALIZERS:
        raise bad("init", f"one of {', '.join(INITIALIZERS)}")
    if config["seed"] is not None and (not _is_int(config["seed"]) or config["seed"] < 0):
        raise bad("seed", "a non-negative integer or None")
    return config


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def build_model(config, dtype=DEFAULT_DTYPE):
    """Rebuild a model from its ``model.config`` dict (as stored in checkpoints and exports);
    the config is validated first (ValueError naming the bad key)."""
    config = validate_config(config)
    arch = config.pop("architecture")
    return MODELS[arch](dtype=dtype, **config)


def check_state_fits(config, state):
    """ValueError unless ``state`` holds exactly the params and buffers of ``build_model(config)``.

    ``state`` maps names to arrays, or to anything with ``.shape`` and ``.dtype`` (the ArrayInfo of
    ``load_checkpoint(path, shapes_only=True)``). The expected shapes come from the config alone:
    nothing is built or allocated. Names, shapes and a floating dtype are checked; real arrays are
    also checked for NaN and infinity (and BatchNorm's running variances for negative values), which
    would otherwise come out as NaN probabilities. The message lists the first few problems.
    """
    config = validate_config(config)
    if not isinstance(state, dict):
        raise ValueError(f"the model's weights are a {type(state).__name__}, not a dict of arrays")
    expected = STATE_SHAPES[config["architecture"]](**config)
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    for name, shape in expected.items():
        if name not in state:
            continue
        x = state[name]
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            problems.append(f"{name} is a {type(x).__name__}, not an array")
        elif tuple(x.shape) != shape:
            problems.append(f"{name} has shape {tuple(x.shape)}, the model expects {shape}")
        elif x.dtype.kind != "f":
            problems.append(f"{name} has dtype {x.dtype}, the model expects floats")
        elif isinstance(x, np.ndarray) and not np.isfinite(x).all():
            problems.append(f"{name} holds NaN or infinity")
        elif isinstance(x, np.ndarray) and name.endswith(".running_var") and (x < 0).any():
            problems.append(f"{name} holds negative variances")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"the weights do not fit the recorded model: {'; '.join(problems[:5])}{more}")
