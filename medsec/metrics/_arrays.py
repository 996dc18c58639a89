"""Tensor/array conversion shared by the metric modules."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def to_numpy(a: ArrayLike) -> np.ndarray:
    """A CPU numpy view of a tensor or array."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
