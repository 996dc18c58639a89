"""Metrics, in one place: classification, multi-label AUROC, Dice, detection and perturbation size.

Conventions: inputs are tensors or arrays; results are plain floats in [0, 1] (reports turn them into
percent). Logits are accepted wherever predictions are derived from them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score, roc_curve

from medsec.errors import MedsecError

ArrayLike = torch.Tensor | np.ndarray


def _np(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def accuracy(logits_or_pred: ArrayLike, y: ArrayLike) -> float:
    """Fraction of correct predictions; accepts (N, K) logits or (N,) class predictions."""
    p, t = _np(logits_or_pred), _np(y)
    pred = p.argmax(1) if p.ndim == 2 else p
    if len(pred) != len(t):
        raise MedsecError(f"accuracy: {len(pred)} predictions but {len(t)} labels")
    return float((pred == t).mean()) if len(t) else float("nan")


def balanced_accuracy(logits_or_pred: ArrayLike, y: ArrayLike) -> float:
    """Average of per-class recalls (scikit-learn's balanced accuracy)."""
    p, t = _np(logits_or_pred), _np(y)
    pred = p.argmax(1) if p.ndim == 2 else p
    return float(balanced_accuracy_score(t, pred))


def per_class_auroc(scores: ArrayLike, y: ArrayLike) -> np.ndarray:
    """AUROC per finding for multi-label scores (N, K); NaN where a finding has one class only."""
    s, t = _np(scores), _np(y)
    out = np.full(s.shape[1], np.nan)
    for k in range(s.shape[1]):
        if 0 < t[:, k].sum() < len(t):
            out[k] = roc_auc_score(t[:, k], s[:, k])
    return out


def weighted_auroc(scores: ArrayLike, y: ArrayLike) -> float:
    """AUROC averaged over findings weighted by their prevalence (Li & Zhu's weighted AUROC)."""
    s, t = _np(scores), _np(y)
    per = per_class_auroc(s, t)
    w = t.sum(0).astype(float)
    ok = ~np.isnan(per)
    if not ok.any():
        return float("nan")
    return float(np.sum(per[ok] * w[ok]) / np.sum(w[ok]))


def mean_auroc(scores: ArrayLike, y: ArrayLike) -> float:
    """Unweighted mean of the per-finding AUROCs that are defined."""
    per = per_class_auroc(scores, y)
    return float(np.nanmean(per)) if (~np.isnan(per)).any() else float("nan")


def multilabel_accuracy(logits: ArrayLike, y: ArrayLike, threshold: float = 0.0) -> float:
    """Fraction of (image, finding) decisions that are right, thresholding logits at `threshold`."""
    p, t = _np(logits), _np(y)
    return float(((p > threshold) == (t > 0.5)).mean())


def dice(pred_or_logits: ArrayLike, mask: ArrayLike, *, foreground: int = 1, empty: float = 1.0) -> np.ndarray:
    """Per-image Dice of the foreground class. Accepts (N, K, H, W) logits or (N, H, W) labels.

    An image where both prediction and mask are empty scores `empty` (1.0: nothing to find, nothing found).
    """
    p, m = _np(pred_or_logits), _np(mask)
    if p.ndim == 4:
        p = p.argmax(1)
    if p.shape != m.shape:
        raise MedsecError(f"dice: prediction shape {p.shape} does not match mask shape {m.shape}")
    a = (p == foreground).reshape(len(p), -1)
    b = (m == foreground).reshape(len(m), -1)
    inter = (a & b).sum(1).astype(float)
    denom = a.sum(1) + b.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), empty)
    return d


def mean_dice(pred_or_logits: ArrayLike, mask: ArrayLike) -> float:
    """Mean per-image foreground Dice."""
    return float(dice(pred_or_logits, mask).mean())


# --- detection: label 1 = adversarial (positive), score higher = more suspicious -----------------


def detection_auroc(scores_clean: ArrayLike, scores_adv: ArrayLike) -> float:
    """AUROC of telling adversarial (positive) from clean inputs by a suspicion score."""
    sc, sa = _np(scores_clean).ravel(), _np(scores_adv).ravel()
    y = np.r_[np.zeros(len(sc)), np.ones(len(sa))]
    return float(roc_auc_score(y, np.r_[sc, sa]))


def detection_roc(scores_clean: ArrayLike, scores_adv: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the detection ROC curve."""
    sc, sa = _np(scores_clean).ravel(), _np(scores_adv).ravel()
    y = np.r_[np.zeros(len(sc)), np.ones(len(sa))]
    fpr, tpr, _ = roc_curve(y, np.r_[sc, sa])
    return fpr, tpr


def detection_f1(flags_clean: ArrayLike, flags_adv: ArrayLike) -> float:
    """F1 of the 'adversarial' class given the detector's boolean decisions on clean and adversarial inputs."""
    fc, fa = _np(flags_clean).astype(bool).ravel(), _np(flags_adv).astype(bool).ravel()
    y = np.r_[np.zeros(len(fc)), np.ones(len(fa))]
    return float(f1_score(y, np.r_[fc, fa], zero_division=0.0))


def threshold_at_fpr(scores_clean: ArrayLike, fpr: float = 0.05) -> float:
    """The score threshold that flags a fraction `fpr` of clean inputs (flag when score > threshold)."""
    if not 0.0 <= fpr < 1.0:
        raise MedsecError(f"fpr must be in [0, 1), got {fpr}")
    return float(np.quantile(_np(scores_clean).ravel(), 1.0 - fpr))


def tpr_at_fpr(scores_clean: ArrayLike, scores_adv: ArrayLike, fpr: float = 0.05) -> float:
    """Fraction of adversarial inputs flagged at the threshold that flags `fpr` of clean ones."""
    thr = threshold_at_fpr(scores_clean, fpr)
    return float((_np(scores_adv).ravel() > thr).mean())


# --- perturbation size -----------------------------------------------------------------------------


def _ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win: int = 7) -> torch.Tensor:
    """Mean SSIM per image with a uniform window (Wang et al. constants), channels averaged."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    win = min(win, x.shape[-1], x.shape[-2])
    pool = torch.nn.functional.avg_pool2d
    mx, my = pool(x, win, 1), pool(y, win, 1)
    sxx = pool(x * x, win, 1) - mx * mx
    syy = pool(y * y, win, 1) - my * my
    sxy = pool(x * y, win, 1) - mx * my
    n = win * win
    cov_norm = n / (n - 1)  # sample covariance, as scikit-image
    sxx, syy, sxy = sxx * cov_norm, syy * cov_norm, sxy * cov_norm
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image size of x_adv - x: L_inf and L2 (in [0,1] pixel units), PSNR (dB) and SSIM."""
    if x.shape != x_adv.shape:
        raise MedsecError(f"perturbation_norms: shapes differ, {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    x, x_adv = x.detach().float(), x_adv.detach().float()
    d = (x_adv - x).flatten(1)
    mse = d.pow(2).mean(1)
    psnr = torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-20)), torch.full_like(mse, math.inf))
    return {"linf": d.abs().amax(1), "l2": d.norm(dim=1), "psnr": psnr,
            "ssim": _ssim_per_image(x.double(), x_adv.double()).float()}  # float64: variances cancel


def summarize_perturbation(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    """Mean of each perturbation measure over the batch (PSNR averaged over perturbed images only)."""
    n = perturbation_norms(x, x_adv)
    finite = n["psnr"][torch.isfinite(n["psnr"])]
    return {"linf": float(n["linf"].mean()), "l2": float(n["l2"].mean()),
            "psnr": float(finite.mean()) if len(finite) else math.inf, "ssim": float(n["ssim"].mean())}


# --- the metrics a task is judged by ---------------------------------------------------------------

PRIMARY_METRIC = {"classification": "accuracy", "multilabel": "weighted_auroc", "segmentation": "dice"}


def task_metrics(task: str, logits: ArrayLike, targets: ArrayLike) -> dict[str, float]:
    """Clean-performance metrics for a task; the key PRIMARY_METRIC[task] is the headline number."""
    if task == "classification":
        return {"accuracy": accuracy(logits, targets), "balanced_accuracy": balanced_accuracy(logits, targets)}
    if task == "multilabel":
        s = torch.sigmoid(torch.as_tensor(_np(logits)))
        return {"weighted_auroc": weighted_auroc(s, targets), "mean_auroc": mean_auroc(s, targets),
                "label_accuracy": multilabel_accuracy(logits, targets)}
    if task == "segmentation":
        return {"dice": mean_dice(logits, targets)}
    raise MedsecError(f"unknown task {task!r}")
