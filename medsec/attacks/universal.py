"""Universal adversarial perturbation: one tensor, within eps, that fools a classifier on most images.

Moosavi-Dezfooli et al. (CVPR 2017) build it from per-image DeepFool steps; medsec uses the stochastic
gradient form of Shafahi et al. (AAAI 2020, "Universal adversarial training"), which is faster and at
least as strong: for mini-batches of training images, delta <- clip(delta + alpha * sign(grad_delta
mean_i min(CE_i, clamp)), -eps, eps). The per-image loss is clamped (default 10) so images already fooled
stop dominating the step (their choice). The fooling rate is Moosavi-Dezfooli's: the fraction of images
whose predicted label changes, measured on images the perturbation was not fitted on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medsec.attacks.core import AttackResult, CompositeAttack, attack_generator, check_batch, guarded
from medsec.errors import MedsecError
from medsec.models.inference import batched


class UniversalPerturbation(CompositeAttack):
    """One L_inf perturbation of size <= eps (in [0, 1] pixel units) for a whole dataset.

    epochs: passes over the fitting images; alpha: step size (default eps / 10); batch_size: images per
    step; loss_clamp: cap of the per-image cross-entropy; seed: initialisation and batch order.
    Call `fit(model, x_train, y_train)` first; calling the attack unfitted fits on the batch given.
    """

    name = "uap"
    eps: float
    batch_size: int

    def __init__(self, eps: float = 0.03, epochs: int = 10, alpha: float | None = None, batch_size: int = 64,
                 loss_clamp: float = 10.0, seed: int | None = 0) -> None:
        if not (math.isfinite(eps) and 0 < eps <= 1):
            raise MedsecError(f"UniversalPerturbation: eps must be in (0, 1] (pixel units), got {eps!r}")
        if epochs < 1 or batch_size < 1:
            raise MedsecError("UniversalPerturbation: epochs and batch_size must be >= 1")
        super().__init__(seed=seed, train_mode="eval")
        self.eps, self.epochs, self.batch_size = float(eps), int(epochs), int(batch_size)
        self.alpha = float(alpha) if alpha is not None else self.eps / 10
        if not self.alpha > 0:
            raise MedsecError(f"UniversalPerturbation: alpha must be positive, got {alpha!r}")
        self.loss_clamp, self.seed = float(loss_clamp), seed
        self.delta: Tensor | None = None  # (C, H, W), |delta| <= eps once fitted

    def __repr__(self) -> str:
        return f"UniversalPerturbation(eps={self.eps:g}, epochs={self.epochs})"

    def fit(self, model: nn.Module, x: Tensor, y: Tensor) -> UniversalPerturbation:
        """Learn the perturbation on images x with labels y; returns self."""
        x = check_batch(x, y)
        y = y.to(x.device)
        n = x.shape[0]
        gen = attack_generator(self.seed, x.device)
        delta = ((torch.rand(x.shape[1:], generator=gen, device=x.device) * 2 - 1) * self.eps)
        with guarded([model], "eval"):
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=gen, device=x.device)
                for i in range(0, n, self.batch_size):
                    idx = perm[i:i + self.batch_size]
                    d = delta.clone().requires_grad_(True)
                    with torch.enable_grad():
                        logits = model((x[idx] + d).clamp(0.0, 1.0))
                        ce = nn.functional.cross_entropy(logits, y[idx], reduction="none")
                        loss = ce.clamp(max=self.loss_clamp).mean()
                        (g,) = torch.autograd.grad(loss, d)
                    delta = (delta + self.alpha * g.sign()).clamp(-self.eps, self.eps)
        self.delta = delta.detach()
        return self

    @property
    def perturbation(self) -> Tensor:
        """The fitted perturbation (C, H, W)."""
        if self.delta is None:
            raise MedsecError("UniversalPerturbation: fit it first (fit(model, x_train, y_train))")
        return self.delta

    def apply(self, x: Tensor) -> Tensor:
        """x + delta, clipped to [0, 1]."""
        x = check_batch(x)
        d = self.perturbation.to(x.device, x.dtype)
        if d.shape != x.shape[1:]:
            raise MedsecError(f"the perturbation has shape {tuple(d.shape)} but the images {tuple(x.shape[1:])}")
        return (x + d).clamp(0.0, 1.0)

    def _compose(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        """x plus the universal perturbation (fitted on (x, y) first if unfitted); success: misclassified."""
        if self.delta is None:
            self.fit(model, x, y)
        x_adv = self.apply(x)
        return AttackResult(x_adv, batched(model, x_adv).argmax(1) != y, {"perturbation": self.perturbation})

    def fooling_rate(self, model: nn.Module, x: Tensor) -> float:
        """Fraction of images x whose predicted class changes when the perturbation is added."""
        with guarded([model], "eval"):
            clean = batched(model, check_batch(x), 512).argmax(1)
            adv = batched(model, self.apply(x), 512).argmax(1)
        return float((clean != adv).float().mean())
