"""Decision thresholds: an image is predicted positive for an attribute when its probability is
strictly above that attribute's threshold (so 0.5 agrees with the training loop's ``logits > 0``).

``choose_thresholds`` looks at the validation split only; the caller applies the result unchanged
to every split, test included, so test numbers stay an honest estimate.
"""
import numpy as np

DEFAULT = 0.5
MODES = ("0.5", "validation")
CRITERION = "F1"     # what the validation thresholds maximise, per attribute


def predict(prob, thresholds):
    """(N, K) 0/1 predictions: prob > threshold, column by column."""
    return (np.asarray(prob) > np.asarray(thresholds, dtype=np.float64)[None, :]).astype(np.uint8)


def best_f1_threshold(y_true, prob):
    """The threshold that maximises F1 of one attribute on (validation) labels and probabilities.

    Every distinct way to cut the sorted probabilities is tried; the threshold returned lies midway
    between the last probability called positive and the next lower one, so it does not hug a
    validation value. Ties in F1 go to the cut closest to 0.5. With no positive label at all, F1 is
    0 everywhere and the threshold stays 0.5.
    """
    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(prob, dtype=np.float64)
    if y.sum() == 0 or len(p) == 0:
        return DEFAULT
    values = np.unique(p)[::-1]                      # distinct probabilities, high to low
    # Candidate cuts: "positive iff p > t" for t just below each distinct value, or t = 1 (none).
    bottom = 0.0 if values[-1] > 0 else -1.0         # below the smallest: "all positive" stays reachable
    lower = np.append(values[1:], bottom)            # the next lower value of each
    cuts = np.append((values + lower) / 2, 1.0)
    # Positives predicted and true positives for each cut, from counts per distinct value.
    order = np.searchsorted(-values, -p)             # index of each p in ``values``
    n_at = np.bincount(order, minlength=len(values))
    tp_at = np.bincount(order, weights=y, minlength=len(values))
    predicted = np.append(np.cumsum(n_at), 0)
    tp = np.append(np.cumsum(tp_at), 0)
    f1 = 2 * tp / (predicted + y.sum())              # 2 tp / (2 tp + fp + fn)
    best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12))
    return float(cuts[best[np.argmin(np.abs(cuts[best] - DEFAULT))]])


def choose_thresholds(val_labels, val_prob):
    """(K,) per-attribute thresholds maximising F1 on the validation split."""
    y, p = np.asarray(val_labels), np.asarray(val_prob)
    return np.array([best_f1_threshold(y[:, k], p[:, k]) for k in range(y.shape[1])])
