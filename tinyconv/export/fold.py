"""BatchNorm folding: a trained Sequential -> a short list of inference ops.

At inference BatchNorm is a per-channel affine map with constants, so it merges into the
convolution before it (o indexes output channels):

    s[o]  = gamma[o] / sqrt(running_var[o] + eps)
    w'[o] = w[o] * s[o]                         (C_out, C_in, kh, kw)
    b'[o] = (b[o] - running_mean[o]) * s[o] + beta[o]

Dropout is the identity at inference and disappears. The ops are plain dicts so that every
exporter (ONNX, Core ML) and the NumPy reference below walk the same list:

    {"op": "conv", "w", "b", "stride", "pad", "name"}   NCHW, weights KCRS, symmetric padding
    {"op": "relu"}   {"op": "maxpool", "kernel", "stride"} (floor mode)
    {"op": "gap"}    (N, C, H, W) -> (N, C)        {"op": "flatten"}
    {"op": "dense", "w" (in, out), "b" (out,), "name"}
The fold is computed in float64 and stored as float32, so it adds no more than float32 rounding.
"""
import numpy as np

from ..backend import to_cpu
from ..layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU


def fold_model(model):
    """Sequential -> list of op dicts (see the module docstring). Raises ValueError on a layer it cannot export."""
    ops = []
    for layer in model.layers:
        p = {k: to_cpu(v) for k, v in layer.params.items()}
        if isinstance(layer, Conv2D):
            b = p.get("b", np.zeros(layer.out_channels, np.float32))
            ops.append({"op": "conv", "w": p["w"].astype(np.float64), "b": b.astype(np.float64),
                        "stride": tuple(layer.stride), "pad": tuple(layer.padding), "name": layer.name})
        elif isinstance(layer, BatchNorm2D):
            if not ops or ops[-1]["op"] != "conv" or ops[-1].get("folded"):
                raise ValueError(f"{layer.name}: BatchNorm2D can only be exported right after a Conv2D")
            conv = ops[-1]
            s = p["gamma"].astype(np.float64) / np.sqrt(
                to_cpu(layer.buffers["running_var"]).astype(np.float64) + layer.eps)
            conv["w"] = conv["w"] * s[:, None, None, None]
            conv["b"] = (conv["b"] - to_cpu(layer.buffers["running_mean"]).astype(np.float64)) * s \
                + p["beta"].astype(np.float64)
            conv["folded"] = layer.name
        elif isinstance(layer, ReLU):
            ops.append({"op": "relu"})
        elif isinstance(layer, MaxPool2D):
            ops.append({"op": "maxpool", "kernel": tuple(layer.kernel_size), "stride": tuple(layer.stride)})
        elif isinstance(layer, GlobalAvgPool2D):
            ops.append({"op": "gap"})
        elif isinstance(layer, Flatten):
            ops.append({"op": "flatten"})
        elif isinstance(layer, Dropout):
            continue  # the identity at inference
        elif isinstance(layer, Dense):
            b = p.get("b", np.zeros(layer.out_features, np.float32))
            ops.append({"op": "dense", "w": p["w"].astype(np.float64), "b": b.astype(np.float64),
                        "name": layer.name})
        else:
            raise ValueError(f"{layer.name}: cannot export a {type(layer).__name__} layer")
    for op in ops:
        for k in ("w", "b"):
            if k in op:
                op[k] = np.ascontiguousarray(op[k], dtype=np.float32)
    if not ops or ops[-1]["op"] != "dense":
        raise ValueError("the exporters expect the model to end in a Dense layer (the logits)")
    return ops


def run_folded(ops, x):
    """NumPy reference for the folded ops: x (N, C, H, W) float -> logits (N, K).

    Written with naive loops over kernel offsets, independently of tinyconv's layers, so a test
    can hold fold_model's output against the unfolded model.
    """
    x = np.asarray(x, dtype=np.float64)
    for op in ops:
        kind = op["op"]
        if kind == "conv":
            w, b = op["w"].astype(np.float64), op["b"].astype(np.float64)
            (sh, sw), (ph, pw) = op["stride"], op["pad"]
            C_out, _, kh, kw = w.shape
            xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            out_h = (xpad.shape[2] - kh) // sh + 1
            out_w = (xpad.shape[3] - kw) // sw + 1
            y = np.zeros((x.shape[0], C_out, out_h, out_w)) + b[:, None, None]
            for i in range(kh):
                for j in range(kw):
                    patch = xpad[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
                    y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])  # y[n,o] += sum_c x[n,c] w[o,c,i,j]
            x = y
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "maxpool":
            (kh, kw), (sh, sw) = op["kernel"], op["stride"]
            out_h, out_w = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
            y = np.full(x.shape[:2] + (out_h, out_w), -np.inf)
            for i in range(kh):
                for j in range(kw):
                    y = np.maximum(y, x[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw])
            x = y
        elif kind == "gap":
            x = x.mean(axis=(2, 3))
        elif kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif kind == "dense":
            x = x @ op["w"].astype(np.float64) + op["b"].astype(np.float64)
    return x
