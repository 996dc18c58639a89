"""An example user defence for `medsec audit examples/my_defence.py:FeatureZScoreDetector`.

It follows medsec's defence protocol (medsec/defences/base.py): an nn.Module built from the victim
(`from_victim`), fitted on clean training data (`fit(data)`), with `predict(x) -> logits`, a differentiable
suspicion score `score(x)` (higher = more suspicious), `detect(x)` against a threshold fixed at fit time
(5% of clean training images rejected), and `exposed()` naming the parts an adaptive attacker may use.

The idea (a common one): adversarial images push the victim's hidden features away from the clean ones, so
flag inputs whose features have an unusual per-dimension z-score. The audit shows why that is not enough:
an attacker who adds the score to the loss walks straight past it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FeatureZScoreDetector(nn.Module):
    """Reject inputs whose mean squared feature z-score is unusually high."""

    is_detector = True

    def __init__(self, classifier: nn.Module, fpr: float = 0.05) -> None:
        super().__init__()
        self.classifier = classifier
        self.fpr = fpr
        self.register_buffer("mu", torch.zeros(0))
        self.register_buffer("sd", torch.ones(0))
        self.register_buffer("threshold", torch.tensor(float("nan")))

    @classmethod
    def from_victim(cls, victim: Any) -> FeatureZScoreDetector:
        """Wrap the victim's classifier (it must have features(x), as medsec's classifiers do)."""
        return cls(victim.model)

    def exposed(self) -> dict[str, Any]:
        return {"classifier": self.classifier, "score": self.score, "threshold": self.threshold}

    @torch.no_grad()
    def fit(self, data: Any) -> FeatureZScoreDetector:
        """Feature statistics and the 5%-FPR threshold from clean training images only."""
        self.eval()
        x = data.train.images()
        f = torch.cat([self.classifier.features(x[i:i + 256]) for i in range(0, len(x), 256)])
        self.mu, self.sd = f.mean(0), f.std(0).clamp_min(1e-6)
        scores = ((f - self.mu) / self.sd).pow(2).mean(1)
        self.threshold = torch.quantile(scores, 1 - self.fpr)
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.classifier.features(x) - self.mu) / self.sd).pow(2).mean(1)

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.score(x) > self.threshold

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)
