"""Classification and multi-label metrics: accuracy, balanced accuracy, (weighted) AUROC per finding.

Inputs are tensors or arrays; results are plain floats in [0, 1] (reports turn them into percent). Logits
are accepted wherever predictions are derived from them.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medsec.errors import MedsecError
from medsec.metrics._arrays import ArrayLike, to_numpy


def accuracy(logits_or_pred: ArrayLike, y: ArrayLike) -> float:
    """Fraction of correct predictions; accepts (N, K) logits or (N,) class predictions."""
    p, t = to_numpy(logits_or_pred), to_numpy(y)
    pred = p.argmax(1) if p.ndim == 2 else p
    if len(pred) != len(t):
        raise MedsecError(f"accuracy: {len(pred)} predictions but {len(t)} labels")
    return float((pred == t).mean()) if len(t) else float("nan")


def balanced_accuracy(logits_or_pred: ArrayLike, y: ArrayLike) -> float:
    """Average of per-class recalls (scikit-learn's balanced accuracy)."""
    p, t = to_numpy(logits_or_pred), to_numpy(y)
    pred = p.argmax(1) if p.ndim == 2 else p
    return float(balanced_accuracy_score(t, pred))


def per_class_auroc(scores: ArrayLike, y: ArrayLike) -> np.ndarray:
    """AUROC per finding for multi-label scores (N, K); NaN where a finding has one class only."""
    s, t = to_numpy(scores), to_numpy(y)
    out = np.full(s.shape[1], np.nan)
    for k in range(s.shape[1]):
        if 0 < t[:, k].sum() < len(t):
            out[k] = roc_auc_score(t[:, k], s[:, k])
    return out


def weighted_auroc(scores: ArrayLike, y: ArrayLike) -> float:
    """AUROC averaged over findings weighted by their prevalence (Li & Zhu's weighted AUROC)."""
    s, t = to_numpy(scores), to_numpy(y)
    per = per_class_auroc(s, t)
    w = t.sum(0).astype(float)
    ok = ~np.isnan(per)
    if not ok.any():
        return float("nan")
    return float(np.sum(per[ok] * w[ok]) / np.sum(w[ok]))


def auroc_with_spread(scores: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """(weighted AUROC, standard deviation of the per-finding AUROCs that are defined)."""
    per = per_class_auroc(scores, y)
    return weighted_auroc(scores, y), float(np.nanstd(per)) if (~np.isnan(per)).any() else float("nan")


def mean_auroc(scores: ArrayLike, y: ArrayLike) -> float:
    """Unweighted mean of the per-finding AUROCs that are defined."""
    per = per_class_auroc(scores, y)
    return float(np.nanmean(per)) if (~np.isnan(per)).any() else float("nan")


def multilabel_accuracy(logits: ArrayLike, y: ArrayLike, threshold: float = 0.0) -> float:
    """Fraction of (image, finding) decisions that are right, thresholding logits at `threshold`."""
    p, t = to_numpy(logits), to_numpy(y)
    return float(((p > threshold) == (t > 0.5)).mean())
