"""Adversarially trained ensemble (Paul et al., ISBI 2020), with ResNet-20 members as Levy et al. used.

N members with different initialisation seeds (optionally different architectures), each trained on clean
images plus FGSM images crafted against itself during training (loss = CE(x) + adv_weight * CE(FGSM(x))).
Paul et al.'s FGSM eps for training was not published: default adv_eps = 0.01 in [0, 1] pixel units.
The combined prediction averages member probabilities; ``predict`` returns log of the averaged
probabilities (log-softmax-like logits, so argmax and cross-entropy behave as for one network).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from medsec.config import TrainConfig
from medsec.data.base import MedicalDataset
from medsec.defences.base import Defence, register_defence
from medsec.defences.nets import build_network, network_spec
from medsec.errors import MedsecError


def fgsm_training_loss(eps: float | tuple[float, float], weight: float = 1.0,
                       pseudo_labels: bool = False) -> Any:
    """extra_loss for medsec.models.training.train_model: weight * CE(model(FGSM(x)), target).

    eps: a fixed eps, or (low, high) to draw eps ~ U(low, high) per batch. pseudo_labels: attack and score
    against the model's own predictions instead of the labels (Li, Pan & Zhu's SSAT on unlabeled data).
    The FGSM images are crafted with the model in eval mode (batch-norm statistics untouched).
    """
    from medsec.attacks.engine import FGSM  # the attack engine, for adversarial training

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(eps, tuple):
            e = float(torch.empty(()).uniform_(eps[0], eps[1]))
        else:
            e = float(eps)
        target = y
        if pseudo_labels:
            with torch.no_grad():
                target = model(x).argmax(1)
        x_adv = FGSM(eps=e, train_mode="eval", seed=None)(model, x, target)
        return weight * nn.functional.cross_entropy(model(x_adv.detach()), target)

    return loss


@register_defence
class Ensemble(Defence):
    """Members averaged in probability space. Exposes ``members`` (nn.ModuleList of networks, each images
    -> logits) and ``classifier`` (the ensemble itself: images -> log averaged probabilities)."""

    kind: ClassVar[str] = "ensemble"
    EXPOSES: ClassVar[tuple[str, ...]] = ("members", "classifier")

    def __init__(self, members: Sequence[nn.Module], adv_eps: float = 0.01, adv_weight: float = 1.0) -> None:
        super().__init__()
        if len(members) < 1:
            raise MedsecError("an ensemble needs at least one member")
        if adv_eps < 0 or adv_weight < 0:
            raise MedsecError(f"adv_eps and adv_weight must be >= 0, got {adv_eps}, {adv_weight}")
        self.members = nn.ModuleList(members)
        self.adv_eps, self.adv_weight = float(adv_eps), float(adv_weight)

    @classmethod
    def build(cls, member_specs: Sequence[dict[str, Any]], adv_eps: float = 0.01,
              adv_weight: float = 1.0) -> Ensemble:
        """An untrained ensemble from network specs (see medsec.defences.nets), one per member."""
        return cls([build_network(s) for s in member_specs], adv_eps, adv_weight)

    @property
    def classifier(self) -> Ensemble:
        """The ensemble as one network (images -> log averaged probabilities)."""
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted("predict")
        logp = torch.stack([nn.functional.log_softmax(m(x), 1) for m in self.members])
        return torch.logsumexp(logp, 0) - math.log(len(self.members))

    def fit(self, data: MedicalDataset, train: TrainConfig | None = None, seed: int = 0,  # type: ignore[override]
            device: str | torch.device = "cpu", **kwargs: Any) -> Ensemble:
        """Train each member (seed + i) with FGSM adversarial training on data.train."""
        from medsec.models.training import train_model

        if data.info.task != "classification":
            raise MedsecError(f"the ensemble defence is built for classification, not {data.info.task!r}")
        extra = fgsm_training_loss(self.adv_eps, self.adv_weight) if self.adv_eps > 0 and self.adv_weight > 0 else None
        self.train_results = [
            train_model(m, data, train or TrainConfig(), seed=seed + i, device=device,
                        description=f"ensemble member {i + 1}/{len(self.members)}", extra_loss=extra)
            for i, m in enumerate(self.members)]
        self.fitted = True
        self.eval()
        return self

    def spec(self) -> dict[str, Any]:
        return {"members": [network_spec(m) for m in self.members], "adv_eps": self.adv_eps,
                "adv_weight": self.adv_weight}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Ensemble:
        return cls.build(spec["members"], spec["adv_eps"], spec["adv_weight"])
