"""Running a checkpoint over a split, and the ``predictions_<split>.csv`` files.

CSV columns: ``filename``, then ``<attr>_true`` (0/1) and ``<attr>_prob`` for each attribute.
Probabilities are the model's float32 values written with every digit (``repr`` of the float64
holding them), so a reader recomputes exactly the numbers in the reports.
"""
import csv

import numpy as np

from ..backend import to_cpu
from ..checkpoint import CheckpointError, load_checkpoint
from ..models import build_model, check_state_fits

SPLITS = ("train", "validation", "test")


def load_model(checkpoint, device="cpu"):
    """The model in a checkpoint, on ``device``, ready for inference. CheckpointError, naming the
    file, when the recorded config or the weights are unusable; the config and every weight's shape
    are checked before the model is built, so a bad file never allocates a model it cannot fill."""
    state = load_checkpoint(checkpoint)
    meta = state.get("meta")
    if not isinstance(meta, dict) or "model" not in meta or "model" not in state:
        raise CheckpointError(f"checkpoint {checkpoint}: needs a 'meta' section with the model config and a "
                              "'model' section with the weights (not written by the training loop?)")
    try:
        check_state_fits(meta["model"], state["model"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: {exc}") from None
    model = build_model(meta["model"])
    model.load_state_dict(state["model"])
    model.to(device)
    return model


def predict_split(model, ds, split, batch_size, device="cpu", bar=None):
    """float32 (N, K) probabilities for the split, in the split's order; ``bar`` advances per batch."""
    N, K = ds.split_size(split), len(ds.attributes)
    prob = np.empty((N, K), dtype=np.float32)
    for batch in ds.batches(split, batch_size, shuffle=False, device=device):
        prob[batch.index] = to_cpu(model.predict_proba(batch.x))
        if bar is not None:
            bar.update(1)
    model.clear_cache()
    return prob


def write_predictions(path, filenames, attributes, labels, prob):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename"] + [f"{a}_{kind}" for a in attributes for kind in ("true", "prob")])
        for name, y, p in zip(filenames, labels, prob):
            row = [name]
            for k in range(len(attributes)):
                row += [int(y[k]), repr(float(p[k]))]
            w.writerow(row)


def read_predictions(path):
    """(filenames, attributes, labels uint8 (N, K), probabilities float64 (N, K)) from a CSV."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    attributes = [h[:-len("_true")] for h in header[1::2]]
    filenames = [r[0] for r in body]
    labels = np.array([[int(v) for v in r[1::2]] for r in body], dtype=np.uint8).reshape(-1, len(attributes))
    prob = np.array([[float(v) for v in r[2::2]] for r in body], dtype=np.float64).reshape(-1, len(attributes))
    return filenames, attributes, labels, prob
