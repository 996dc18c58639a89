"""The one Dice: the same rule for attack success, the adversary's choice of samples and the report.

A hard mask comes from (N, K, H, W) logits by argmax, or by logit > 0 for a one-channel (sigmoid) model
(:func:`seg_prediction`). The per-image Dice averages the foreground classes (1..K-1, class 1 for a
one-channel model) present in the prediction or the mask; an image where both are empty scores 1.0
(nothing to find, nothing found).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from medsec.errors import MedsecError
from medsec.metrics._arrays import ArrayLike


def seg_prediction(outputs: Tensor) -> Tensor:
    """Hard mask from (N, K, H, W) logits: argmax, or logit > 0 for a single-channel (sigmoid) model."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).long()
    # argmax over the class channel, one comparison per class: torch's argmax(1) over a channel-first tensor
    # is a strided reduction about 100x slower on CPU, and attacks take this mask at every step
    best, pred = outputs[:, 0], torch.zeros_like(outputs[:, 0], dtype=torch.long)
    for c in range(1, outputs.shape[1]):
        above = outputs[:, c] > best
        pred = torch.where(above, c, pred)
        best = torch.where(above, outputs[:, c], best)
    return pred


def dice_per_sample(pred: Tensor, target: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-sample hard Dice of label masks (N, H, W) over the foreground classes (mean over the classes present
    in either mask); 1.0 when both masks are empty. `dtype`: the precision of the ratios (attacks compare in
    float32, reports average in float64)."""
    if pred.shape != target.shape:
        raise MedsecError(f"dice: prediction shape {tuple(pred.shape)} does not match mask shape "
                          f"{tuple(target.shape)}")
    scores = []
    present = []
    for c in range(1, max(num_classes, 2)):
        p = (pred == c).flatten(1).to(dtype)
        t = (target == c).flatten(1).to(dtype)
        inter = (p * t).sum(1)
        tot = p.sum(1) + t.sum(1)
        scores.append(torch.where(tot > 0, 2 * inter / tot.clamp_min(1e-12), torch.ones_like(tot)))
        present.append(tot > 0)
    s = torch.stack(scores, 1)
    pr = torch.stack(present, 1).to(dtype)
    return torch.where(pr.sum(1) > 0, (s * pr).sum(1) / pr.sum(1).clamp_min(1), torch.ones_like(s[:, 0]))


def dice(outputs_or_labels: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """Per-image Dice (float64 array) of (N, K, H, W) logits or (N, H, W) label masks against masks."""
    o = torch.as_tensor(outputs_or_labels).detach().cpu()
    m = torch.as_tensor(mask).detach().cpu()
    if o.ndim == 4:
        k = int(o.shape[1])
        o = seg_prediction(o)
    else:
        k = int(max(int(o.max()) if o.numel() else 1, int(m.max()) if m.numel() else 1)) + 1
    return dice_per_sample(o, m, k, torch.float64).numpy()


def mean_dice(outputs_or_labels: ArrayLike, mask: ArrayLike) -> float:
    """Mean per-image Dice."""
    return float(dice(outputs_or_labels, mask).mean())
