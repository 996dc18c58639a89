"""The defended-system score: whether the system handled an input, and how well, in one place.

Used alike by attack success on a defended system, by ``BestOf``'s choice of samples and by the studies'
tables (Levy et al.'s accuracy for detectors):

- a CLEAN input is handled when the detector (if any) accepts it and the prediction is correct;
- an ADVERSARIAL input is handled when the detector rejects it, or accepts it and the prediction is still
  correct;
- segmentation: the Dice itself (no detector of the study rejects masks).

The functions take the system's outputs and the detector's verdicts (computed by the caller, who knows the
defence and the batch size), so this module stays a leaf that every layer may import.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from medsec.metrics._arrays import ArrayLike, to_numpy
from medsec.metrics.segmentation import dice_per_sample, seg_prediction


def correct_predictions(outputs: Tensor, y: Tensor, task: str, finding: Tensor | None = None,
                        dice_threshold: float = 0.5) -> Tensor:
    """(N,) bool: the prediction is right. Multi-label: the decision on `finding` (per image; default the top
    output) matches y. Segmentation: per-image Dice > dice_threshold."""
    if task == "classification":
        return outputs.argmax(1) == y
    if task == "multilabel":
        if finding is None:
            finding = outputs.argmax(1)
        rows = torch.arange(outputs.shape[0], device=outputs.device)
        return (outputs[rows, finding] > 0) == (y[rows, finding] > 0.5)
    d = dice_per_sample(seg_prediction(outputs), y, outputs.shape[1])
    return d > dice_threshold


def handled(outputs: Tensor, y: Tensor, task: str, *, adversarial: bool, rejected: Tensor | None = None,
            finding: Tensor | None = None) -> Tensor:
    """(N,) float64 in [0, 1]: 1 where the system handles the input (see the module docstring), the Dice for
    segmentation. rejected: the detector's (N,) verdicts; None = no detector."""
    if task == "segmentation":
        return dice_per_sample(seg_prediction(outputs), y, outputs.shape[1], torch.float64).cpu()
    ok = correct_predictions(outputs, y, task, finding).cpu()
    if rejected is None:
        return ok.double()
    rej = rejected.bool().cpu()
    return ((rej | ok) if adversarial else (~rej & ok)).double()


def quality(outputs: Tensor, y: Tensor, task: str, rejected: Tensor, finding: Tensor | None = None) -> Tensor:
    """(N,) how well the defended system still does on adversarial inputs (LOWER = better for the attacker):
    handled (rejected, or still correct) as 0/1 times 2, plus a tie-break in (0, 1) by the true-class margin
    (classification) or the finding's margin (multi-label); for segmentation max(rejected, Dice). A value
    below 1 means the attack succeeded (fooled and let through)."""
    rej = rejected.float()
    if task == "segmentation":
        return torch.maximum(rej, dice_per_sample(seg_prediction(outputs), y, outputs.shape[1]))
    ok = correct_predictions(outputs, y, task, finding).float()
    if task == "classification":
        zy = outputs.gather(1, y[:, None])[:, 0]
        other = outputs.masked_fill(torch.nn.functional.one_hot(y, outputs.shape[1]).bool(), -math.inf).amax(1)
        tie = torch.sigmoid(zy - other)
    else:
        f = outputs.argmax(1) if finding is None else finding
        rows = torch.arange(outputs.shape[0], device=outputs.device)
        sgn = 2 * y[rows, f].float() - 1
        tie = torch.sigmoid(sgn * outputs[rows, f])
    return torch.maximum(rej, ok) * 2.0 + tie


def percent(values: ArrayLike) -> float:
    """The mean of per-input scores in percent, rounded to 2 decimals (the tables' number)."""
    return round(100.0 * float(np.mean(to_numpy(values))), 2)
