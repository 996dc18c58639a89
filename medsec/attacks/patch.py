"""The adversarial patch (Brown et al., 2017): one universal patch, trained on training images, that
fools a classifier wherever it is pasted.

Training follows Brown et al.'s expectation over transformations with the transformation restricted to
the location: each step pastes the patch at an independent uniformly random position in every image of a
training batch and takes an Adam step on the patch (untargeted: raise the loss of the true class;
targeted: lower that of `target_class`). Brown et al. also rotate and rescale a round patch; medsec uses
a square, unrotated patch so the mask is exact (choice; the size is what the survey sweeps). Pixels
inside the mask are replaced by the patch; pixels outside are untouched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medsec.attacks.core import AttackResult, CompositeAttack, attack_generator, check_batch, guarded
from medsec.errors import MedsecError
from medsec.models.inference import batched


def patch_side(size: float, h: int, w: int) -> int:
    """The patch side in pixels: `size` < 1 is a fraction of the image area (Brown et al.'s 'patch size'),
    `size` >= 1 a side length in pixels. A patch that does not fit in the image is a MedsecError."""
    if not size > 0 or not math.isfinite(size):
        raise MedsecError(f"patch size must be a positive number, got {size!r}")
    side = max(1, round(math.sqrt(size * h * w))) if size < 1 else int(round(size))
    if side > min(h, w):
        raise MedsecError(f"patch size {size!r} gives a {side}x{side} px patch, larger than the {h}x{w} image")
    return side


class AdversarialPatch(CompositeAttack):
    """A universal square patch pasted at random positions.

    size: fraction of the image area (< 1) or side in pixels (>= 1). target_class: None = untargeted.
    steps: Adam steps when fitting; lr: Adam learning rate on the patch (pixel units); batch_size: training
    images per step. seed: patch initialisation, training order and placements.
    Call `fit(model, x_train, y_train)` first; calling the attack unfitted fits the patch on the batch given.
    """

    name = "patch"
    batch_size: int

    def __init__(self, size: float = 0.05, target_class: int | None = None, steps: int = 300, lr: float = 0.05,
                 batch_size: int = 64, seed: int | None = 0) -> None:
        if not size > 0:
            raise MedsecError(f"AdversarialPatch: size must be positive, got {size!r}")
        if steps < 1 or batch_size < 1 or not lr > 0:
            raise MedsecError("AdversarialPatch: steps and batch_size must be >= 1 and lr > 0")
        super().__init__(targeted=target_class is not None, seed=seed, train_mode="eval")
        self.size, self.target_class, self.steps, self.lr = float(size), target_class, int(steps), float(lr)
        self.batch_size, self.seed = int(batch_size), seed
        self.patch: Tensor | None = None  # (C, s, s) in [0, 1] once fitted

    def __repr__(self) -> str:
        return f"AdversarialPatch(size={self.size:g}, target_class={self.target_class}, steps={self.steps})"

    # -- placing ---------------------------------------------------------------------------------------------
    @staticmethod
    def random_positions(n: int, side: int, h: int, w: int, gen: torch.Generator, device: torch.device | str = "cpu"
                         ) -> Tensor:
        """(n, 2) top-left corners, uniform over the positions where the whole patch fits."""
        r = torch.randint(0, h - side + 1, (n,), generator=gen, device=device)
        c = torch.randint(0, w - side + 1, (n,), generator=gen, device=device)
        return torch.stack([r, c], 1)

    @staticmethod
    def paste(x: Tensor, patch: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """(x with `patch` pasted at each image's top-left corner pos (N, 2), bool mask (N, 1, H, W)).

        Differentiable in `patch`; pixels outside the mask are exactly those of x.
        """
        n, c, h, w = x.shape
        side = patch.shape[-1]
        if patch.shape != (c, side, side) or side > min(h, w):
            raise MedsecError(f"patch of shape {tuple(patch.shape)} does not fit images of shape {(c, h, w)}")
        rr = torch.arange(h, device=x.device).view(1, h, 1)
        cc = torch.arange(w, device=x.device).view(1, 1, w)
        r0, c0 = pos[:, 0].view(n, 1, 1), pos[:, 1].view(n, 1, 1)
        mask = ((rr >= r0) & (rr < r0 + side) & (cc >= c0) & (cc < c0 + side)).unsqueeze(1)  # (N, 1, H, W)
        # the patch's pixel for every image position (gathered, so gradients reach the patch)
        ridx = (rr - r0).clamp(0, side - 1).expand(n, h, w)
        cidx = (cc - c0).clamp(0, side - 1).expand(n, h, w)
        canvas = patch[:, ridx, cidx].permute(1, 0, 2, 3)  # (N, C, H, W)
        out = torch.where(mask, canvas.to(x.dtype), x)
        return out, mask

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(self, model: nn.Module, x: Tensor, y: Tensor) -> AdversarialPatch:
        """Train the patch on images x (N, C, H, W) with labels y; returns self."""
        x = check_batch(x, y)
        y = y.to(x.device)
        _, c, h, w = x.shape
        side = patch_side(self.size, h, w)
        gen = attack_generator(self.seed, x.device)
        patch = torch.rand(c, side, side, generator=gen, device=x.device).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr)
        n = x.shape[0]
        with guarded([model], "eval"):
            for _ in range(self.steps):
                idx = torch.randint(0, n, (min(self.batch_size, n),), generator=gen, device=x.device)
                pos = self.random_positions(len(idx), side, h, w, gen, x.device)
                xp, _ = self.paste(x[idx], patch, pos)
                with torch.enable_grad():
                    logits = model(xp)
                    if self.target_class is None:
                        loss = -nn.functional.cross_entropy(logits, y[idx])
                    else:
                        tgt = torch.full_like(y[idx], int(self.target_class))
                        loss = nn.functional.cross_entropy(logits, tgt)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                with torch.no_grad():
                    patch.clamp_(0.0, 1.0)
        self.patch = patch.detach()
        return self

    # -- the attack ------------------------------------------------------------------------------------------
    def apply(self, x: Tensor, positions: Tensor | None = None, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """(x with the fitted patch at random (or given) positions, mask of the patched pixels)."""
        if self.patch is None:
            raise MedsecError("AdversarialPatch: fit the patch first (fit(model, x_train, y_train))")
        x = check_batch(x)
        side = self.patch.shape[-1]
        _, _, h, w = x.shape
        patch_side(side, h, w)
        if positions is None:
            gen = attack_generator(self.seed if seed is None else seed, x.device)
            positions = self.random_positions(x.shape[0], side, h, w, gen, x.device)
        return self.paste(x, self.patch.to(x.device), positions.to(x.device))

    def _compose(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        """x with the patch pasted at random positions (fits the patch on (x, y) first if unfitted);
        success: the prediction leaves y (untargeted) or reaches the target class."""
        if self.patch is None:
            self.fit(model, x, y)
        x_adv = self.apply(x)[0]
        pred = batched(model, x_adv).argmax(1)
        ok = pred != y if self.target_class is None else pred == int(self.target_class)
        return AttackResult(x_adv, ok, {"patch": self.patch})
