"""Model builders. ``seed_cnn`` is the project's default model (see README, "The model")."""
import numpy as np

from .backend import DEFAULT_DTYPE
from .layers import BatchNorm2D, Conv2D, Dense, Dropout, GlobalAvgPool2D, MaxPool2D, ReLU
from .sequential import Sequential

SEED_CHANNELS = (32, 64, 128, 128, 192)


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
    channels = [max(1, int(round(c * width))) for c in SEED_CHANNELS]
    layers, c_in = [], input_shape[0]
    for c_out in channels:
        layers += [Conv2D(c_in, c_out, 3, padding=1, init=init, rng=rng, dtype=dtype),
                   BatchNorm2D(c_out, dtype=dtype), ReLU(), MaxPool2D(2)]
        c_in = c_out
    layers += [GlobalAvgPool2D(), Dropout(dropout, seed=int(rng.integers(2**63))),
               Dense(c_in, num_outputs, rng=rng, dtype=dtype)]
    model = Sequential(layers, name="seed_cnn", input_shape=input_shape)
    model.config = {"architecture": "seed", "num_outputs": num_outputs, "input_shape": list(input_shape),
                    "width": width, "dropout": dropout, "init": init, "seed": seed}
    return model


MODELS = {"seed": seed_cnn}


def build_model(config, dtype=DEFAULT_DTYPE):
    """Rebuild a model from its ``model.config`` dict (as stored in checkpoints and exports)."""
    config = dict(config)
    arch = config.pop("architecture", "seed")
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(MODELS)}")
    config["input_shape"] = tuple(config["input_shape"])
    return MODELS[arch](dtype=dtype, **config)
