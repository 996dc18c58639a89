"""The audit's gradient-masking checks, in the spirit of AutoAttack's: zero, non-finite or exploding input
gradients, randomised outputs, black-box/transfer/BPDA attacks beating the white-box ones, and an unbounded
attack that must break almost everything. Each check returns what it measured and the findings it implies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

TRANSFER_MARGIN = 5.0  # points by which a black-box/transfer/BPDA attack must beat white-box to flag masking
ZERO_FRACTION = 0.5  # more than this share of images with zero input gradients: shattered gradients
EXPLODING_FRACTION = 0.1  # more than this share with exploding gradients (L1 per pixel > 1e4)
RANDOM_TOLERANCE = 1e-4  # predictions of the same inputs differing by more: randomised outputs
UNBOUNDED_EPS = 0.5


def gradient_check(model: nn.Module, x: Tensor, y: Tensor, task: str) -> dict[str, float]:
    """Fractions of samples whose input gradient of the task loss through `model` is zero, non-finite, or
    exploding (L1 norm per pixel > 1e4), and the median gradient norm."""
    xa = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            z = model(xa)
            if task == "multilabel":
                loss = nn.functional.binary_cross_entropy_with_logits(z, y.float(), reduction="sum")
            else:
                loss = nn.functional.cross_entropy(z, y, reduction="sum")
            if not loss.requires_grad:
                g = torch.zeros_like(x)
            else:
                (g,) = torch.autograd.grad(loss, xa, allow_unused=True)
                g = torch.zeros_like(x) if g is None else g
    except RuntimeError:
        g = torch.zeros_like(x)
    per = g.flatten(1).abs().sum(1)
    finite = torch.isfinite(per)
    pix = x[0].numel()
    return {"zero": float(((per == 0) & finite).float().mean()), "non_finite": float((~finite).float().mean()),
            "exploding": float((finite & (per / pix > 1e4)).float().mean()),
            "median_norm": float(per[finite].median()) if bool(finite.any()) else float("nan")}


def gradient_findings(g: Mapping[str, float]) -> list[str]:
    """What the gradient check says about masking."""
    out = []
    if g["zero"] > ZERO_FRACTION:
        out.append(f"zero input gradients for {100 * g['zero']:.0f}% of the images (shattered/obfuscated "
                   "gradients: use BPDA)")
    if g["non_finite"] > 0:
        out.append(f"non-finite input gradients for {100 * g['non_finite']:.0f}% of the images")
    if g["exploding"] > EXPLODING_FRACTION:
        out.append(f"exploding input gradients for {100 * g['exploding']:.0f}% of the images")
    return out


@torch.no_grad()
def randomness_check(model: nn.Module, x: Tensor) -> float:
    """Largest absolute difference between two predictions of the same inputs (0 for a deterministic model)."""
    return float((model(x).float() - model(x).float()).abs().max())


def randomness_findings(diff: float) -> list[str]:
    """What the randomness check says about masking."""
    if diff > RANDOM_TOLERANCE:
        return [f"randomised outputs: two predictions of the same inputs differ by up to {diff:.3g} "
                "(attack the expectation: EOT)"]
    return []


def ordering_findings(stages: Mapping[str, float], white: Sequence[str]) -> list[str]:
    """A black-box, transfer or BPDA stage beating every white-box stage means misleading gradients."""
    best_white = min((stages[s] for s in white), default=float("inf"))
    return [f"'{s}' ({stages[s]:.1f}%) beats every white-box attack ({best_white:.1f}%): the white-box gradients "
            "are misleading" for s in stages if s not in white and stages[s] < best_white - TRANSFER_MARGIN]


def unbounded_findings(handled_rate: float, clean: float) -> list[str]:
    """With eps = 0.5 a sound gradient attack must break almost everything."""
    if handled_rate > 10 and handled_rate > clean * 0.2:
        return [f"an attack with eps = {UNBOUNDED_EPS} still leaves {handled_rate:.1f}% handled: the gradients do "
                "not lead anywhere"]
    return []
