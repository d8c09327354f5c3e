"""Metrics computed from labels and predictions alone (NumPy, no model): accuracy, the multi-label
classification report, how many attributes each image gets right, majority-class baselines.

Arrays: ``y_true`` and ``y_pred`` are (N, K) in {0, 1}, one column per attribute.
"""
import warnings

import numpy as np

AVERAGES = ("micro avg", "macro avg", "weighted avg", "samples avg")


class UndefinedMetricWarning(UserWarning):
    """A precision, recall or F1 divided by zero and was set to 0 (scikit-learn's default, "warn")."""


def _divide(num, den, what):
    """num / den elementwise, with 0 where den is 0 (and one warning), as scikit-learn's zero_division="warn"."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    zero = den == 0
    if zero.any():
        warnings.warn(f"{what} is ill-defined (division by zero) and set to 0.0", UndefinedMetricWarning,
                      stacklevel=3)
    return np.where(zero, 0.0, num / np.where(zero, 1.0, den))


def _prf(tp, fp, fn):
    """Precision, recall and F1 from counts; F1 = 2 tp / (2 tp + fp + fn), so it is 0 (not 0/0) when
    precision and recall are both 0 but something was predicted or present."""
    precision = _divide(tp, tp + fp, "precision")
    recall = _divide(tp, tp + fn, "recall")
    f1 = _divide(2 * tp, 2 * tp + fp + fn, "F1")
    return precision, recall, f1


def classification_report(y_true, y_pred, names):
    """The multi-label report with scikit-learn's definitions (``classification_report(...,
    output_dict=True)``): {name: {"precision", "recall", "f1-score", "support"}} per attribute, then
    "micro avg" (from the summed counts), "macro avg" (plain mean over attributes), "weighted avg"
    (mean weighted by support) and "samples avg" (each image's own precision / recall / F1 over its
    attributes, averaged over images). Every average's support is the total number of positive labels.
    """
    y_true, y_pred = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != len(names):
        raise ValueError(f"expected two (N, {len(names)}) arrays, got {y_true.shape} and {y_pred.shape}")
    tp = (y_true & y_pred).sum(axis=0)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    support = y_true.sum(axis=0)
    p, r, f = _prf(tp, fp, fn)
    report = {name: {"precision": float(p[k]), "recall": float(r[k]), "f1-score": float(f[k]),
                     "support": int(support[k])} for k, name in enumerate(names)}
    total = int(support.sum())

    mp, mr, mf = _prf(tp.sum(), fp.sum(), fn.sum())
    report["micro avg"] = _row(mp, mr, mf, total)
    report["macro avg"] = _row(p.mean(), r.mean(), f.mean(), total)
    if total == 0:   # no positive label anywhere: scikit-learn's weighted average is then 0
        report["weighted avg"] = _row(0.0, 0.0, 0.0, 0)
    else:
        w = support / total
        report["weighted avg"] = _row((p * w).sum(), (r * w).sum(), (f * w).sum(), total)
    # per image: counts over its K attributes
    s_tp = (y_true & y_pred).sum(axis=1)
    s_fp = (~y_true & y_pred).sum(axis=1)
    s_fn = (y_true & ~y_pred).sum(axis=1)
    sp, sr, sf = _prf(s_tp, s_fp, s_fn)
    report["samples avg"] = _row(sp.mean(), sr.mean(), sf.mean(), total)
    return report


def _row(p, r, f, support):
    return {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": int(support)}


def accuracy(y_true, y_pred):
    """Per-attribute accuracy, (K,) floats."""
    return (np.asarray(y_true, dtype=bool) == np.asarray(y_pred, dtype=bool)).mean(axis=0)


def correct_counts(y_true, y_pred):
    """(N,) how many of its K attributes each image has right."""
    return (np.asarray(y_true, dtype=bool) == np.asarray(y_pred, dtype=bool)).sum(axis=1)


def correct_shares(y_true, y_pred):
    """{j: share of images with exactly j attributes right} for j = K, K-1, ..., 0."""
    counts = correct_counts(y_true, y_pred)
    K = np.asarray(y_true).shape[1]
    n = max(len(counts), 1)
    return {j: float((counts == j).sum() / n) for j in range(K, -1, -1)}


def majority_classes(train_labels):
    """(K,) the more frequent label (0 or 1) of each attribute on the training split (ties: 0)."""
    y = np.asarray(train_labels, dtype=np.float64)
    return (y.mean(axis=0) > 0.5).astype(np.uint8)


def majority_accuracy(labels, majority):
    """(K,) accuracy of always answering ``majority`` (from the training split) on ``labels``."""
    return (np.asarray(labels, dtype=np.uint8) == np.asarray(majority, dtype=np.uint8)[None, :]).mean(axis=0)


def bce_loss(y_true, prob, eps=1e-7):
    """Mean binary cross-entropy over all N*K entries, from probabilities (clipped to [eps, 1 - eps])."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
