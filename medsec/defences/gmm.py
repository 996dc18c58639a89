"""GMM defence (Li, Pan & Zhu, ISBI 2021): SSAT-trained classifier plus per-class Gaussian detector.

SSAT, as the authors' notebook does it: each step crafts FGSM images on an unlabeled batch with
eps ~ U(0.001, 0.003) against the model's own predictions, and minimises
CE(clean labeled batch) + 3 * CE(adversarial unlabeled batch, pseudo-labels). Here the unlabeled batch is
the labeled batch with its labels ignored (the synthetic data has no separate unlabeled pool), and training
fine-tunes a copy of the victim with the foundation's trainer (Adam, early stopping; the notebook used SGD
lr 0.001 momentum 0.9 for 10 epochs from ImageNet weights).

Detector: one Gaussian per class on the last hidden layer, fitted on clean training features grouped by
their true label (regulariser as MGM's). The paper's detection code is not published; ``covariance="tied"``
shares one within-class covariance between the classes (class means stay separate, as in Lee et al.'s 2018
Mahalanobis detector): with a few hundred images per class against 128+ feature dimensions, per-class
covariances overfit their training images and the detector rejected about 30 % of clean held-out OCT
images at its 5 %-of-training threshold (tied + Ledoit-Wolf: see docs/defences.md). An input predicted as class c scores
    score(x) = t_c - log N(f(x); mu_c, Sigma_c),
where t_c is the ``fpr`` quantile of the class-c clean log-likelihoods (per-class calibration, so every
class keeps about 95% of its clean data); the global threshold is then fixed at fit time to reject ``fpr``
of all clean calibration images (it is close to 0). The calibration images are the clean validation split
by default (``calibrate_on="val"``: the detector then rejects about ``fpr`` of clean images it has not seen)
or the training images (``"train"``). Adversarial risk: see
medsec.defences.base.adversarial_risk.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medsec.config import TrainConfig
from medsec.data.base import MedicalDataset
from medsec.defences.base import ClassifierDetector, register_defence
from medsec.defences.ensemble import fgsm_training_loss
from medsec.defences.gaussian import Gaussian
from medsec.defences.nets import attach_spec, build_network, network_spec, spec_from_meta
from medsec.errors import MedsecError
from medsec.models.inference import batched, module_device
from medsec.models.victims import Victim


@register_defence
class GMM(ClassifierDetector):
    """SSAT classifier + class-conditional Gaussian detector.

    Exposes ``classifier``, ``feature_extractor``, ``gaussians`` (nn.ModuleList of per-class ``Gaussian``;
    ``gaussians[c].log_prob(features)`` is differentiable), ``class_offsets`` (t_c), ``score``,
    ``threshold``, and ``class_score(x, c)`` (the score as if x were predicted as class c — what a two-stage
    attack minimises for its chosen fooling class).
    """

    kind: ClassVar[str] = "gmm"
    EXPOSES: ClassVar[tuple[str, ...]] = ("classifier", "feature_extractor", "gaussians", "class_offsets",
                                          "class_score", "score", "threshold")
    class_offsets: torch.Tensor

    def __init__(self, classifier: nn.Module, num_classes: int, fpr: float = 0.05, reg: float = 1e-3,
                 shrinkage: str = "ledoit-wolf", covariance: str = "tied", ssat_epochs: int = 5,
                 ssat_weight: float = 3.0, ssat_eps: tuple[float, float] = (0.001, 0.003),
                 ssat_lr: float = 1e-4, batch_size: int = 256, calibrate_on: str = "val") -> None:
        super().__init__(fpr)
        if calibrate_on not in ("val", "train"):
            raise MedsecError(f"GMM calibrate_on must be 'val' or 'train', got {calibrate_on!r}")
        self.calibrate_on = calibrate_on
        if not callable(getattr(classifier, "forward_features", None)):
            raise MedsecError(f"GMM needs a classifier with forward_features(x), got {type(classifier).__name__}")
        self.classifier = classifier
        self.num_classes = int(num_classes)
        self.reg, self.shrinkage = float(reg), str(shrinkage)
        if covariance not in ("per-class", "tied"):
            raise MedsecError(f"GMM covariance must be 'per-class' or 'tied', got {covariance!r}")
        self.covariance = covariance
        self.ssat_epochs, self.ssat_weight = int(ssat_epochs), float(ssat_weight)
        self.ssat_eps = (float(ssat_eps[0]), float(ssat_eps[1]))
        self.ssat_lr, self.batch_size = float(ssat_lr), int(batch_size)
        self.gaussians = nn.ModuleList(Gaussian() for _ in range(self.num_classes))
        self.register_buffer("class_offsets", torch.zeros(self.num_classes))

    @classmethod
    def from_victim(cls, victim: Victim, **kwargs: Any) -> GMM:
        """A GMM defence starting from a copy of a foundation victim (the victim itself is not modified)."""
        net = copy.deepcopy(victim.model)
        attach_spec(net, spec_from_meta(victim.meta))
        return cls(net, victim.data.info.num_outputs, **kwargs)

    def class_log_likelihoods(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, K) log N(f; mu_c, Sigma_c) for every class c."""
        return torch.stack([g(feats) for g in self.gaussians], 1)

    def _score_parts(self, logits: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        ll = self.class_log_likelihoods(feats).gather(1, pred.unsqueeze(1)).squeeze(1)
        return self.class_offsets[pred] - ll

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        logits, feats = self.classifier.forward_features(x)
        return self._score_parts(logits, feats)

    def class_score(self, x: torch.Tensor, c: torch.Tensor | int) -> torch.Tensor:
        """The detector's score for x if it were predicted as class c (per-sample c allowed)."""
        self._check_fitted("class_score")
        feats = self.classifier.features(x)
        cc = torch.as_tensor(c, device=feats.device).expand(feats.shape[0]).long()
        ll = self.class_log_likelihoods(feats).gather(1, cc.unsqueeze(1)).squeeze(1)
        return self.class_offsets[cc] - ll

    def fit(self, data: MedicalDataset, train: TrainConfig | None = None, seed: int = 0,  # type: ignore[override]
            device: str | torch.device = "cpu", ssat: bool = True, **kwargs: Any) -> GMM:
        """SSAT fine-tuning of the classifier (if ssat and ssat_epochs > 0), then fit the Gaussians."""
        from medsec.models.training import train_model

        if data.info.task != "classification":
            raise MedsecError(f"the GMM defence is built for classification, not {data.info.task!r}")
        if ssat and self.ssat_epochs > 0:
            cfg = (train or TrainConfig()).model_copy(update={"epochs": self.ssat_epochs, "lr": self.ssat_lr})
            self.train_result = train_model(
                self.classifier, data, cfg, seed=seed, device=device, description="GMM: SSAT",
                extra_loss=fgsm_training_loss(self.ssat_eps, self.ssat_weight, pseudo_labels=True))
        self.eval()
        train_set = self._features(data.train.images(), data.train.target_tensor())
        if self.calibrate_on == "val":
            if len(data.val) == 0:
                raise MedsecError("GMM calibrate_on='val' needs clean validation images; the dataset has none")
            calib = self._features(data.val.images(), data.val.target_tensor())
        else:
            calib = None
        self.fit_features(*train_set, calibration=calib)
        return self

    def _features(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, labels, logits) of clean images, from one forward pass per batch."""
        both = batched(lambda xb: torch.cat(self.classifier.forward_features(xb), 1), x, self.batch_size,
                       module_device(self), cpu=True)  # logits, then features, side by side
        return both[:, self.num_classes:], y, both[:, :self.num_classes]

    def fit_features(self, feats: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                     calibration: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> GMM:
        """Fit per-class Gaussians on clean training features (by true label); the offsets t_c and the threshold
        on `calibration` (features, labels, logits of clean held-out images: the detector then rejects about
        ``fpr`` of clean images it has not seen, as its operator would set it) or, when None, on the training
        features themselves (features of the images the classifier was trained on sit closer to their class
        means than unseen ones: on the quick oct and rsna victims the training threshold rejected 14-17 % of
        clean test images instead of 5 %)."""
        dev = module_device(self)

        def on_cpu(f: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return f.detach().float().cpu(), lab.cpu().long()

        feats, labels = on_cpu(feats, labels)
        offsets = torch.zeros(self.num_classes)
        groups = [feats[labels == c] for c in range(self.num_classes)]
        for c, fc in enumerate(groups):
            if len(fc) < 2:
                raise MedsecError(f"GMM: class {c} has {len(fc)} clean training images; need at least 2")
        c_feats, c_labels, c_logits = ((feats, labels, logits) if calibration is None else
                                       (*on_cpu(calibration[0], calibration[1]), calibration[2]))
        c_groups = [c_feats[c_labels == c] for c in range(self.num_classes)]
        for c, fc in enumerate(c_groups):
            if len(fc) < 1:
                raise MedsecError(f"GMM: class {c} has no clean calibration image; calibrate on 'train' or add "
                                  "validation images of that class")
        shared = None
        if self.covariance == "tied":  # one within-class covariance from all classes' centred features
            shared = Gaussian().fit(torch.cat([fc - fc.mean(0) for fc in groups]), self.reg, shrinkage=self.shrinkage)
        for c, fc in enumerate(groups):
            g = self.gaussians[c]
            if shared is None:
                g.fit(fc, self.reg, shrinkage=self.shrinkage)  # type: ignore[operator]
            else:
                g.mean, g.cholesky, g.lam = fc.mean(0).double(), shared.cholesky.clone(), shared.lam.clone()
            offsets[c] = float(np.quantile(self.gaussians[c].log_prob(c_groups[c]).numpy(), self.fpr))  # type: ignore[operator]
        self.class_offsets = offsets
        with torch.no_grad():
            self.to("cpu")
            scores = self._score_parts(c_logits.detach(), c_feats)
            self.to(dev)
        self._set_threshold(scores)
        self.fitted = True
        return self

    def spec(self) -> dict[str, Any]:
        return {"classifier": network_spec(self.classifier), "num_classes": self.num_classes, "fpr": self.fpr,
                "reg": self.reg, "shrinkage": self.shrinkage, "covariance": self.covariance, "ssat_epochs": self.ssat_epochs, "ssat_weight": self.ssat_weight,
                "ssat_eps": list(self.ssat_eps), "ssat_lr": self.ssat_lr, "batch_size": self.batch_size,
                "calibrate_on": self.calibrate_on}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> GMM:
        spec = dict(spec)
        net = build_network(spec.pop("classifier"))
        spec["ssat_eps"] = tuple(spec["ssat_eps"])
        return cls(net, **spec)
