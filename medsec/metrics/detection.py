"""Detection metrics: label 1 = adversarial (positive), score higher = more suspicious."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score, roc_curve

from medsec.errors import MedsecError
from medsec.metrics._arrays import ArrayLike, to_numpy


def _labelled(clean: ArrayLike, adv: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    sc, sa = to_numpy(clean).ravel(), to_numpy(adv).ravel()
    return np.r_[np.zeros(len(sc)), np.ones(len(sa))], np.r_[sc, sa]


def detection_auroc(scores_clean: ArrayLike, scores_adv: ArrayLike) -> float:
    """AUROC of telling adversarial (positive) from clean inputs by a suspicion score."""
    y, s = _labelled(scores_clean, scores_adv)
    return float(roc_auc_score(y, s))


def detection_roc(scores_clean: ArrayLike, scores_adv: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the detection ROC curve."""
    y, s = _labelled(scores_clean, scores_adv)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def roc_points(scores_clean: ArrayLike, scores_adv: ArrayLike, max_points: int = 200
               ) -> tuple[list[float], list[float]]:
    """The detection ROC thinned to at most `max_points` points, rounded to 4 digits (for result files)."""
    fpr, tpr = detection_roc(scores_clean, scores_adv)
    if len(fpr) > max_points:
        idx = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return [round(float(v), 4) for v in fpr], [round(float(v), 4) for v in tpr]


def detection_f1(flags_clean: ArrayLike, flags_adv: ArrayLike) -> float:
    """F1 of the 'adversarial' class given the detector's boolean decisions on clean and adversarial inputs."""
    fc, fa = to_numpy(flags_clean).astype(bool).ravel(), to_numpy(flags_adv).astype(bool).ravel()
    y = np.r_[np.zeros(len(fc)), np.ones(len(fa))]
    return float(f1_score(y, np.r_[fc, fa], zero_division=0.0))


def threshold_at_fpr(scores_clean: ArrayLike, fpr: float = 0.05) -> float:
    """The score threshold that flags a fraction `fpr` of clean inputs (flag when score > threshold)."""
    if not 0.0 <= fpr < 1.0:
        raise MedsecError(f"fpr must be in [0, 1), got {fpr}")
    return float(np.quantile(to_numpy(scores_clean).ravel(), 1.0 - fpr))


def tpr_at_fpr(scores_clean: ArrayLike, scores_adv: ArrayLike, fpr: float = 0.05) -> float:
    """Fraction of adversarial inputs flagged at the threshold that flags `fpr` of clean ones."""
    thr = threshold_at_fpr(scores_clean, fpr)
    return float((to_numpy(scores_adv).ravel() > thr).mean())
