"""Metrics, a leaf every layer may import: classification, segmentation (the one Dice), detection,
perturbation size, and the defended-system score (handled / rejected / quality).

Conventions: inputs are tensors or arrays; results are plain floats in [0, 1] (reports turn them into
percent) unless a function says otherwise. Nothing here imports another medsec layer.
"""

from medsec.metrics.classification import (
    accuracy,
    auroc_with_spread,
    balanced_accuracy,
    mean_auroc,
    multilabel_accuracy,
    per_class_auroc,
    weighted_auroc,
)
from medsec.metrics.detection import (
    detection_auroc,
    detection_f1,
    detection_roc,
    roc_points,
    threshold_at_fpr,
    tpr_at_fpr,
)
from medsec.metrics.perturbation import perturbation_norms, summarize_perturbation
from medsec.metrics.segmentation import dice, dice_per_sample, mean_dice, seg_prediction
from medsec.metrics.system import correct_predictions, handled, percent, quality
from medsec.metrics.tasks import PRIMARY_METRIC, TASKS, task_metrics, task_of_outputs

__all__ = [
    "PRIMARY_METRIC", "TASKS", "accuracy", "auroc_with_spread", "balanced_accuracy", "correct_predictions",
    "detection_auroc", "detection_f1", "detection_roc", "dice", "dice_per_sample", "handled", "mean_auroc",
    "mean_dice", "multilabel_accuracy", "per_class_auroc", "percent", "perturbation_norms", "quality",
    "roc_points", "seg_prediction", "summarize_perturbation", "task_metrics", "task_of_outputs", "threshold_at_fpr",
    "tpr_at_fpr", "weighted_auroc",
]
