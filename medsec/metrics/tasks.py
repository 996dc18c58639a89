"""The metrics a task is judged by, and the task of a model's outputs."""

from __future__ import annotations

import torch

from medsec.errors import MedsecError
from medsec.metrics._arrays import ArrayLike, to_numpy
from medsec.metrics.classification import (
    accuracy,
    balanced_accuracy,
    mean_auroc,
    multilabel_accuracy,
    weighted_auroc,
)
from medsec.metrics.segmentation import mean_dice

PRIMARY_METRIC = {"classification": "accuracy", "multilabel": "weighted_auroc", "segmentation": "dice"}
TASKS = tuple(PRIMARY_METRIC)


def task_of_outputs(outputs: torch.Tensor, y: torch.Tensor) -> str:
    """classification | multilabel | segmentation, from a model's output shape and the labels' shape."""
    if outputs.ndim == 4:
        return "segmentation"
    return "multilabel" if y.ndim == 2 else "classification"


def task_metrics(task: str, logits: ArrayLike, targets: ArrayLike) -> dict[str, float]:
    """Clean-performance metrics for a task; the key PRIMARY_METRIC[task] is the headline number."""
    if task == "classification":
        return {"accuracy": accuracy(logits, targets), "balanced_accuracy": balanced_accuracy(logits, targets)}
    if task == "multilabel":
        s = torch.sigmoid(torch.as_tensor(to_numpy(logits)))
        return {"weighted_auroc": weighted_auroc(s, targets), "mean_auroc": mean_auroc(s, targets),
                "label_accuracy": multilabel_accuracy(logits, targets)}
    if task == "segmentation":
        return {"dice": mean_dice(logits, targets)}
    raise MedsecError(f"unknown task {task!r}")
