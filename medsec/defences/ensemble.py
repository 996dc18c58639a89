"""Multi-initialisation ensemble with adversarial images in its training set (Paul et al., ISBI 2020).

What the sources say (Paul, Schabath, Gillies, Hall & Goldgof, "Mitigating adversarial attacks on medical
image understanding systems", ISBI 2020, abstract; their patent US 11,763,450 of the same title):

- several CNNs are trained "with a training set of images, wherein the images include original images and
  images modified by an adversarial attack": adversarial images are made beforehand and *added to the
  training set* (static augmentation), not crafted against each network while it trains;
- "multi-initialization": the members are the same network trained from different initialisations;
- the ensemble's output combines the members' probability outputs; here they are averaged.

Levy et al. (2022) replaced Paul et al.'s CNNs with ResNet-20 members; medsec does the same (the members
default to the dataset's victim architecture, ResNet-20 for ct-slices).

Where the sources are silent (the stored copies of the paper and patent give the abstract and claims,
not the FGSM eps nor the number of adversarial images), medsec chooses, and every choice is configurable
(``defences.ensemble`` in the experiment config):

- ``adversarial_training="static"`` (default): FGSM images of *every* training image (one each, so the
  training set doubles: originals + adversarial copies, same labels), crafted once, before any member
  trains, against the crafting model in eval mode with the true labels.
- the crafting model is the dataset's plain victim (``adv_source="victim"``, passed as ``crafter``): the
  undefended CNN trained on the original images, which is what Paul et al.'s FGSM attack hit. Without a
  crafter (``adv_source="plain"``), a plain network of the members' architecture is first trained on the
  original images (seed ``seed + 1000``) and crafts them.
- ``adv_eps = 0.02`` in [0, 1] pixel units: the eps of the row's original FGSM attack in medsec's
  reproduction of Levy et al. (Paul et al. trained on the attack they evaluated).
- members differ only in their initialisation: member i is initialised from seed ``seed + i``; all members
  see the same training set in the same order with the same augmentation draws (training seed ``seed``).
- training budget: the members take as many optimiser steps as ``train`` gives a network on the original
  images. The augmented set is twice as long, so they run ``ceil(train.epochs / 2)`` epochs over it (with
  the trainer's early stopping on clean validation accuracy); on-the-fly training runs ``train.epochs`` epochs
  over the original images, each step paying for its FGSM images.

``adversarial_training="on_the_fly"`` is the alternative (and medsec's earlier default): each member's
every training step adds ``adv_weight * CE(member(FGSM_member(x)), y)``, FGSM crafted per batch against the
member itself as it trains (Goodfellow et al.'s adversarial training). It is a stronger and costlier
defence than the one Levy et al. broke.

``predict`` returns the log of the averaged member probabilities (log-softmax-like logits, so argmax and
cross-entropy behave as for one network).
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
from medsec.models.inference import module_device

ADVERSARIAL_TRAINING = ("static", "on_the_fly")
ADV_SOURCES = ("victim", "plain")
CRAFTER_SEED_OFFSET = 1000  # seed of the plain crafting network when no victim is given: seed + 1000


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


def craft_adversarial_training_set(crafter: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Paul et al.'s augmented training set: the originals followed by one FGSM copy of each (eps in [0, 1]
    pixel units, crafted against `crafter` in eval mode with the true labels), labels repeated."""
    from medsec.attacks.engine import FGSM  # the attack engine, for adversarial training

    dev = module_device(crafter)
    x_adv = torch.cat([FGSM(eps=eps, train_mode="eval", seed=None)(crafter, x[i:i + batch_size].to(dev),
                                                                  y[i:i + batch_size].to(dev)).detach().cpu()
                       for i in range(0, len(x), batch_size)])
    return torch.cat([x, x_adv]), torch.cat([y, y])


@register_defence
class Ensemble(Defence):
    """Members averaged in probability space. Exposes ``members`` (nn.ModuleList of networks, each images
    -> logits) and ``classifier`` (the ensemble itself: images -> log averaged probabilities).

    crafter: the plain model whose FGSM images are added to the training set (static adversarial training);
    it is used by ``fit`` only, is not part of the defence and is not saved."""

    kind: ClassVar[str] = "ensemble"
    EXPOSES: ClassVar[tuple[str, ...]] = ("members", "classifier")

    def __init__(self, members: Sequence[nn.Module], adv_eps: float = 0.02, adv_weight: float = 1.0,
                 adversarial_training: str = "static", adv_source: str = "victim",
                 crafter: nn.Module | None = None) -> None:
        super().__init__()
        if len(members) < 1:
            raise MedsecError("an ensemble needs at least one member")
        if not 0 <= adv_eps <= 1 or adv_weight < 0:
            raise MedsecError(f"adv_eps must lie in [0, 1] and adv_weight be >= 0, got {adv_eps}, {adv_weight}")
        if adversarial_training not in ADVERSARIAL_TRAINING:
            raise MedsecError(f"adversarial_training must be one of {', '.join(ADVERSARIAL_TRAINING)}, "
                              f"got {adversarial_training!r}")
        if adv_source not in ADV_SOURCES:
            raise MedsecError(f"adv_source must be one of {', '.join(ADV_SOURCES)}, got {adv_source!r}")
        self.members = nn.ModuleList(members)
        self.adv_eps, self.adv_weight = float(adv_eps), float(adv_weight)
        self.adversarial_training, self.adv_source = adversarial_training, adv_source
        self._crafter = [crafter] if crafter is not None else []  # a list: not a registered submodule

    @classmethod
    def build(cls, member_specs: Sequence[dict[str, Any]], adv_eps: float = 0.02, adv_weight: float = 1.0,
              adversarial_training: str = "static", adv_source: str = "victim",
              crafter: nn.Module | None = None) -> Ensemble:
        """An untrained ensemble from network specs (see medsec.defences.nets), one per member."""
        return cls([build_network(s) for s in member_specs], adv_eps, adv_weight, adversarial_training,
                   adv_source, crafter)

    @property
    def classifier(self) -> Ensemble:
        """The ensemble as one network (images -> log averaged probabilities)."""
        return self

    @property
    def crafter(self) -> nn.Module | None:
        """The model that crafts the static adversarial training images (None: a plain one is trained)."""
        return self._crafter[0] if self._crafter else None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted("predict")
        logp = torch.stack([nn.functional.log_softmax(m(x), 1) for m in self.members])
        return torch.logsumexp(logp, 0) - math.log(len(self.members))

    def initialise_members(self, seed: int) -> None:
        """Member i gets the initial weights its architecture draws from seed + i (multi-initialisation)."""
        for i, m in enumerate(self.members):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                fresh = build_network(network_spec(m))
            m.load_state_dict(fresh.state_dict())

    def _plain_crafter(self, data: MedicalDataset, train: TrainConfig, seed: int,
                       device: str | torch.device) -> nn.Module:
        from medsec.models.training import seed_everything, train_model

        seed_everything(seed + CRAFTER_SEED_OFFSET)
        net = build_network(network_spec(self.members[0]))
        train_model(net, data, train, seed=seed + CRAFTER_SEED_OFFSET, device=device,
                    description="ensemble: plain network that crafts the adversarial training images")
        return net.eval()

    def fit(self, data: MedicalDataset, train: TrainConfig | None = None, seed: int = 0,  # type: ignore[override]
            device: str | torch.device = "cpu", **kwargs: Any) -> Ensemble:
        """Initialise member i from seed + i and train every member on the same training set with the same
        training seed: static (originals + FGSM copies crafted beforehand) or on-the-fly FGSM training."""
        from medsec.models.training import train_model

        if data.info.task != "classification":
            raise MedsecError(f"the ensemble defence is built for classification, not {data.info.task!r}")
        train = train or TrainConfig()
        adversarial = self.adv_eps > 0
        train_set, extra = None, None
        if adversarial and self.adversarial_training == "static":
            crafter = self.crafter
            if crafter is None or self.adv_source == "plain":
                crafter = self._plain_crafter(data, train, seed, device)
            was_training = crafter.training
            train_set = craft_adversarial_training_set(crafter.eval(), data.train.images(),
                                                       data.train.target_tensor(), self.adv_eps)
            crafter.train(was_training)
        elif adversarial and self.adv_weight > 0:
            extra = fgsm_training_loss(self.adv_eps, self.adv_weight)
        member_train = train
        if train_set is not None:  # the same optimiser steps as `train` on the original images
            epochs = max(1, math.ceil(train.epochs * len(data.train) / len(train_set[0])))
            member_train = train.model_copy(update={"epochs": epochs})
        self.initialise_members(seed)
        self.train_results = [
            train_model(m, data, member_train, seed=seed, device=device, train_set=train_set, extra_loss=extra,
                        description=f"ensemble member {i + 1}/{len(self.members)}")
            for i, m in enumerate(self.members)]
        self.fitted = True
        self.eval()
        return self

    def spec(self) -> dict[str, Any]:
        return {"members": [network_spec(m) for m in self.members], "adv_eps": self.adv_eps,
                "adv_weight": self.adv_weight, "adversarial_training": self.adversarial_training,
                "adv_source": self.adv_source}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Ensemble:
        return cls.build(spec["members"], spec["adv_eps"], spec["adv_weight"],
                         spec.get("adversarial_training", "on_the_fly"), spec.get("adv_source", "victim"))
