"""Embedded denoiser (Xue et al., MICCAI 2019): a denoising auto-encoder inside the classifier.

The classifier sees the auto-encoder's reconstruction D(E(x)) through the victim's backbone and reuses the
encoder representation E(x) (pooled, concatenated with the backbone features before the linear head), as in
Levy et al.'s Fig. 3. Training (Xue et al. did not publish weights or noise; chosen here, configurable):

    loss = CE(f(x), y) + CE(f(x'), y) + rec_weight * L1(D(E(x')), x)
           + feature_weight * mean((phi(x') - phi(x))^2),                 x' = clip(x + sigma * N(0, 1))

with sigma ~ U(0, noise_std) per image and phi the features the head classifies. The last term is Xue et al.'s
"high-level feature invariance to general noises" (their abstract): the classifier's representation of a noised
image is pulled towards that of the clean one. Defaults noise_std = 0.1, rec_weight = 1.0, feature_weight = 1.0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from medsec.data.base import Task
from medsec.defences.base import TrainedNetworkDefence, register_defence
from medsec.defences.nets import register_factory
from medsec.errors import MedsecError
from medsec.models.networks import Classifier, Normalize, build_model


class DenoisingAutoEncoder(nn.Module):
    """images -> images: a small convolutional encoder (two stride-2 stages) and decoder, sigmoid output."""

    def __init__(self, in_channels: int, width: int, normalize: Normalize) -> None:
        super().__init__()
        c = width
        self.normalize = normalize
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * c, c, 2, 2), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, c, 2, 2), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, in_channels, 3, 1, 1))
        self.code_dim = 2 * c

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder representation E(x) (N, 2c, H/4, W/4)."""
        return self.encoder(self.normalize(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructed images in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class DenoisingClassifier(nn.Module):
    """Classifier protocol (features / forward_features / head) around an embedded denoising auto-encoder."""

    def __init__(self, inner: Classifier, autoencoder: DenoisingAutoEncoder, num_outputs: int) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.normalize = inner.normalize
        self.backbone = inner.backbone
        self.feature_dim = int(inner.feature_dim) + autoencoder.code_dim
        self.head = nn.Linear(self.feature_dim, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """cat(backbone(denoised x), pooled encoder representation)."""
        return self.features_and_reconstruction(x)[0]

    def features_and_reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, the auto-encoder's reconstruction D(E(x))) from one pass."""
        z = self.autoencoder.encode(x)
        rec = self.autoencoder.decode(z)
        fb = self.backbone(self.normalize(rec))
        return torch.cat([fb, torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1)], 1), rec

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_denoising_classifier(arch: str, task: Task, in_channels: int, num_outputs: int, width: float = 1.0,
                               depth: float = 1.0, mean: Sequence[float] | None = None,
                               std: Sequence[float] | None = None, ae_width: int = 16) -> nn.Module:
    """The victim architecture `arch` (as build_model) with an embedded denoising auto-encoder."""
    if task != "classification":
        raise MedsecError(f"the denoiser defence is built for classification, not {task!r}")
    inner = build_model(arch, in_channels=in_channels, num_outputs=num_outputs, task=task, width=width,
                        depth=depth, mean=mean, std=std)
    if not isinstance(inner, Classifier):
        raise MedsecError(f"{arch} is not a classifier")
    ae = DenoisingAutoEncoder(in_channels, ae_width, Normalize(mean or [0.5] * in_channels,
                                                                std or [0.25] * in_channels))
    return DenoisingClassifier(inner, ae, num_outputs)


register_factory("denoiser", build_denoising_classifier)


@register_defence
class Denoiser(TrainedNetworkDefence):
    """Xue et al.'s embedded denoiser. ``Denoiser.build(arch=..., task=..., in_channels=..., ...)`` then
    ``fit(data, train_cfg)``. Exposes ``classifier`` (the whole DenoisingClassifier), ``denoiser`` (the
    auto-encoder, images -> reconstructed images) and ``feature_extractor``."""

    kind: ClassVar[str] = "denoiser"
    factory: ClassVar[str] = "denoiser"
    EXPOSES: ClassVar[tuple[str, ...]] = ("classifier", "denoiser", "feature_extractor")

    def __init__(self, classifier: nn.Module, noise_std: float = 0.1, rec_weight: float = 1.0,
                 feature_weight: float = 1.0) -> None:
        super().__init__(classifier)
        if not isinstance(classifier, DenoisingClassifier):
            raise MedsecError(f"Denoiser needs a DenoisingClassifier, got {type(classifier).__name__}")
        if noise_std < 0 or rec_weight < 0 or feature_weight < 0:
            raise MedsecError(f"noise_std, rec_weight and feature_weight must be >= 0, got {noise_std}, "
                              f"{rec_weight}, {feature_weight}")
        self.noise_std, self.rec_weight, self.feature_weight = float(noise_std), float(rec_weight), float(feature_weight)

    @classmethod
    def build(cls, noise_std: float = 0.1, rec_weight: float = 1.0, feature_weight: float = 1.0,  # type: ignore[override]
              **args: Any) -> Denoiser:
        """An untrained denoiser defence; `args` go to build_denoising_classifier."""
        from medsec.defences.nets import build_network

        return cls(build_network({"factory": "denoiser", "args": args}), noise_std, rec_weight, feature_weight)

    @property
    def denoiser(self) -> DenoisingAutoEncoder:
        """The embedded denoising auto-encoder."""
        return self.classifier.autoencoder  # type: ignore[return-value]

    @property
    def feature_extractor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """images -> (N, D) features the head classifies."""
        return self.classifier.features  # type: ignore[return-value]

    def _extra_loss(self) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
        noise_std, w, wf = self.noise_std, self.rec_weight, self.feature_weight

        def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            sigma = torch.rand(x.shape[0], 1, 1, 1, device=x.device) * noise_std
            xn = (x + sigma * torch.randn_like(x)).clamp(0, 1)
            fn, rec = model.features_and_reconstruction(xn)  # type: ignore[operator]
            out = nn.functional.cross_entropy(model.head(fn), y) + w * nn.functional.l1_loss(rec, x)  # type: ignore[operator]
            if wf > 0:
                out = out + wf * nn.functional.mse_loss(fn, model.features(x))  # type: ignore[operator]
            return out

        return loss

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "noise_std": self.noise_std, "rec_weight": self.rec_weight,
                "feature_weight": self.feature_weight}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Denoiser:
        from medsec.defences.nets import build_network

        # checkpoints written before the feature-invariance term was added trained without it
        return cls(build_network(spec["classifier"]), spec["noise_std"], spec["rec_weight"],
                   spec.get("feature_weight", 0.0))
