"""What the survey attacks (one-pixel, patch, universal perturbation, poisoning) share: input checks,
running a model without changing it, and a per-call random generator.

These attacks follow DESIGN.md's call shape ``attack(model, x, y) -> x_adv`` (images in [0, 1]); the
ones that learn something first (a patch, a universal perturbation) also have ``fit(model, x, y)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from medsec.attacks.core import check_images, guarded
from medsec.errors import MedsecError


def check_batch(x: object, y: object | None = None, name: str = "x") -> Tensor:
    """Float (N, C, H, W) images in [0, 1] (and, if given, one class label per image); MedsecError otherwise."""
    check_images(x, name)
    assert isinstance(x, Tensor)
    if y is not None:
        if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point():
            raise MedsecError("labels y must be an integer tensor (N,) of class indices (survey attacks "
                              "attack classifiers)")
        if y.shape[0] != x.shape[0]:
            raise MedsecError(f"labels y hold {y.shape[0]} rows for {x.shape[0]} images")
    return x


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode with its parameters frozen; its mode, requires_grad flags and .grad
    are restored afterwards (the attack engine's guard, in eval mode)."""
    with guarded([model], train_mode="eval"):
        yield model


def generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with `seed` (nondeterministic when None); the global RNG is left alone."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


@torch.no_grad()
def batched_logits(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Model logits for many images, in chunks."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
