"""Test-only user defences for `medsec audit`: one that masks its gradients, one that breaks the protocol."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class QuantisedInput(nn.Module):
    """Rounds pixels to 8 levels before the victim: piecewise-constant, so every input gradient is zero
    (shattered gradients). Deliberately gradient-masked: the audit must flag it and BPDA must break it."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def fit(self, data: Any) -> QuantisedInput:
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        xq = torch.floor(x * 8).clamp(max=7) / 7  # floor: zero gradient almost everywhere
        return self.classifier(xq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)


class NoPredict(nn.Module):
    """Does not follow the protocol: no predict()."""

    def fit(self, data: Any) -> NoPredict:
        return self
