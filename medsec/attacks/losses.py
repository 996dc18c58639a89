"""Composable attack losses: per-sample (N,) values the attacker ASCENDS.

Every loss reads a :class:`LossInput` (outputs, labels or targets, task, features, x_adv, step) and knows
how to flip itself for targeted attacks, so the same object drives untargeted and targeted runs.
Losses add and scale: ``CrossEntropy() + 0.5 * ExtraTerm(fn)``, and a weight can follow a schedule
``Weighted(term, lambda step, steps: ...)``. A user term receives ``(outputs, features, x_adv, y)`` —
this is how defence-aware (adaptive) attacks are written without copying an attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medsec.errors import MedsecError

Schedule = Callable[[int, int], float]
ExtraFn = Callable[[Tensor, "Tensor | None", Tensor, Tensor], Tensor]


@dataclass
class LossInput:
    """One evaluation of the model as a loss sees it."""

    outputs: Tensor  # (N, K) logits or (N, K, H, W)
    y: Tensor  # labels (untargeted) or targets (targeted)
    targeted: bool
    task: str  # classification | multilabel | segmentation
    features: Tensor | None = None  # (N, D) when some loss asked for features
    x_adv: Tensor | None = None
    finding_mask: Tensor | None = None  # multilabel: (N, K) bool, the attacked findings
    step: int = 0
    steps: int = 1


class Loss:
    """Base: `loss(inp) -> (N,)`. Set `needs_features = True` to receive the model's features."""

    needs_features: bool = False

    def __call__(self, inp: LossInput) -> Tensor:
        raise NotImplementedError

    def __add__(self, other: Loss) -> Loss:
        if not isinstance(other, Loss):
            return NotImplemented
        return Sum([self, other])

    def __mul__(self, w: float | Schedule) -> Loss:
        return Weighted(self, w)

    __rmul__ = __mul__


class Sum(Loss):
    """The sum of several losses."""

    def __init__(self, terms: list[Loss]) -> None:
        flat: list[Loss] = []
        for t in terms:
            if isinstance(t, Sum):
                flat.extend(t.terms)
            else:
                flat.append(t)
        self.terms: list[Loss] = flat
        self.needs_features = any(t.needs_features for t in flat)

    def __call__(self, inp: LossInput) -> Tensor:
        total = self.terms[0](inp)
        for t in self.terms[1:]:
            total = total + t(inp)
        return total

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


class Weighted(Loss):
    """`weight * loss`, where weight is a number or a schedule `weight(step, steps) -> float`."""

    def __init__(self, loss: Loss, weight: float | Schedule) -> None:
        if not callable(weight):
            w = float(weight)
            if not math.isfinite(w):
                raise MedsecError(f"loss weight must be finite, got {weight!r}")
        self.loss = loss
        self.weight = weight
        self.needs_features = loss.needs_features

    def __call__(self, inp: LossInput) -> Tensor:
        w = self.weight(inp.step, inp.steps) if callable(self.weight) else self.weight
        return float(w) * self.loss(inp)

    def __repr__(self) -> str:
        return f"{self.weight!r}*{self.loss!r}"


class Selective(Loss):
    """``goal + weight(t) * extra``, the extra term counted only for samples whose goal term is already > 0
    (a margin: misclassified, target reached, finding flipped). First fool the model, then spend the
    budget on the extra objective (e.g. evading a detector) without losing the first; a sample pushed back
    across the boundary gets the goal's gradient alone again. The loss-form of Bryniarski et al.'s
    selective attack (2022); use it where one term's gradient would otherwise drown the other's."""

    def __init__(self, goal: Loss, extra: Loss, weight: float | Schedule = 1.0) -> None:
        self.goal = goal
        self.extra = Weighted(extra, weight)
        self.needs_features = goal.needs_features or extra.needs_features

    def __call__(self, inp: LossInput) -> Tensor:
        g = self.goal(inp)
        return g + self.extra(inp) * (g.detach() > 0).to(g.dtype)

    def __repr__(self) -> str:
        return f"Selective({self.goal!r}, then {self.extra!r})"


class ExtraTerm(Loss):
    """A user-supplied term `fn(outputs, features, x_adv, y) -> (N,)`, ascended like the rest.

    With needs_features=True (default) the engine runs the model's `forward_features(x)` once per step
    and passes its features — no second forward pass. Example (Levy et al. eq. 2, MGM evasion):
    ``ExtraTerm(lambda out, f, x, y: -((f - mu) ** 2).sum(1))`` combined as ``"ce" + lam * term``.
    """

    def __init__(self, fn: ExtraFn, needs_features: bool = True, name: str = "extra") -> None:
        if not callable(fn):
            raise MedsecError(f"ExtraTerm needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.needs_features = needs_features
        self.name = name

    def __call__(self, inp: LossInput) -> Tensor:
        assert inp.x_adv is not None
        v = self.fn(inp.outputs, inp.features, inp.x_adv, inp.y)
        if not isinstance(v, Tensor) or v.shape != (inp.outputs.shape[0],):
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise MedsecError(f"extra loss term {self.name!r} must return a per-sample (N,) tensor, got {got}")
        return v

    def __repr__(self) -> str:
        return f"ExtraTerm({self.name})"


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------

def _pixels_as_rows(outputs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K, H, W), (N, H, W) -> (N*H*W, K), (N*H*W,)."""
    k = outputs.shape[1]
    return outputs.permute(0, 2, 3, 1).reshape(-1, k), y.reshape(-1)


def _binary_to_two_class(outputs: Tensor) -> Tensor:
    """A single sigmoid logit channel as two-class logits (0, z): softmax of it equals sigmoid(z)."""
    return torch.cat([torch.zeros_like(outputs), outputs], 1) if outputs.shape[1] == 1 else outputs


def _masked_mean(v: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return v.mean(1)
    m = mask.to(v.dtype)
    return (v * m).sum(1) / m.sum(1).clamp_min(1)


def _other_max(z: Tensor, y: Tensor) -> Tensor:
    """max_{j != y} z_j for each row."""
    return z.masked_fill(F.one_hot(y, z.shape[1]).bool(), -math.inf).amax(1)


# ----------------------------------------------------------------------------------------------------------
# built-in losses
# ----------------------------------------------------------------------------------------------------------

class CrossEntropy(Loss):
    """CE (classification), BCE on the attacked findings (multi-label), mean pixel CE (segmentation).
    Untargeted: ascend CE to the labels; targeted: descend CE to the targets."""

    def __call__(self, inp: LossInput) -> Tensor:
        z, y = inp.outputs, inp.y
        if inp.task == "classification":
            v = F.cross_entropy(z, y, reduction="none")
        elif inp.task == "multilabel":
            # BCE written as softplus(-s), s the signed logit: same value, but its gradient sigmoid(-s)
            # stays representable for saturated logits, where sigmoid(z) - y rounds to 0 in fp32.
            s = (2 * y.to(z.dtype) - 1) * z
            v = _masked_mean(F.softplus(-s), inp.finding_mask)
        else:
            z2 = _binary_to_two_class(z)
            v = F.cross_entropy(z2, y, reduction="none").flatten(1).mean(1)
        return -v if inp.targeted else v

    def __repr__(self) -> str:
        return "CrossEntropy()"


BCE = CrossEntropy  # the multi-label reading of the same loss


class Margin(Loss):
    """Carlini & Wagner's logit margin, capped at kappa (confidence).

    Classification: untargeted max_{j!=y} z_j - z_y; targeted z_t - max_{j!=t} z_j. Multi-label: the
    signed logit of each attacked finding (pushed across 0). Segmentation: mean pixel margin.
    """

    def __init__(self, kappa: float = math.inf) -> None:
        if not kappa >= 0:
            raise MedsecError(f"kappa must be >= 0, got {kappa}")
        self.kappa = float(kappa)

    def __call__(self, inp: LossInput) -> Tensor:
        z, y = inp.outputs, inp.y
        if inp.task == "multilabel":
            s = (2 * y.to(z.dtype) - 1) * z  # > 0: prediction agrees with y
            m = s if inp.targeted else -s
            return _masked_mean(m.clamp(max=self.kappa), inp.finding_mask)
        seg = inp.task == "segmentation"
        if seg:
            n = z.shape[0]
            z, y = _pixels_as_rows(_binary_to_two_class(z), y)
        zy = z.gather(1, y[:, None])[:, 0]
        other = _other_max(z, y)
        m = zy - other if inp.targeted else other - zy
        m = m.clamp(max=self.kappa)
        return m.view(n, -1).mean(1) if seg else m

    def __repr__(self) -> str:
        return f"Margin(kappa={self.kappa})"


class DLR(Loss):
    """Difference of Logits Ratio (Croce & Hein 2020): scale-invariant margin; needs >= 3 classes
    (targeted: >= 4). Classification only."""

    def __call__(self, inp: LossInput) -> Tensor:
        if inp.task != "classification":
            raise MedsecError("the DLR loss is defined for classification only; use 'ce' or 'margin'")
        z, y = inp.outputs, inp.y
        k = z.shape[1]
        zs, _ = z.sort(1)
        zy = z.gather(1, y[:, None])[:, 0]
        if inp.targeted:
            if k < 4:
                raise MedsecError(f"targeted DLR needs at least 4 classes, the model has {k}")
            # -(z_y_true - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2); with y = target we use the top non-target
            other = _other_max(z, y)
            return -(other - zy) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)
        if k < 3:
            raise MedsecError(f"the DLR loss needs at least 3 classes, the model has {k}; use 'ce' or 'margin'")
        top_is_y = zs[:, -1] == zy
        other = torch.where(top_is_y, zs[:, -2], zs[:, -1])
        return -(zy - other) / (zs[:, -1] - zs[:, -3] + 1e-12)

    def __repr__(self) -> str:
        return "DLR()"


class Dice(Loss):
    """Soft Dice for segmentation over the foreground classes: untargeted ascends 1 - Dice(pred, y)
    (destroy the mask); targeted ascends Dice(pred, target) (e.g. an empty target erases a lesion)."""

    def __call__(self, inp: LossInput) -> Tensor:
        if inp.task != "segmentation":
            raise MedsecError("the Dice loss is defined for segmentation only")
        z, y = inp.outputs, inp.y
        p = torch.softmax(_binary_to_two_class(z), 1)
        k = p.shape[1]
        oh = F.one_hot(y, k).permute(0, 3, 1, 2).to(p.dtype)
        p, oh = p[:, 1:].flatten(2), oh[:, 1:].flatten(2)
        inter = (p * oh).sum(2)
        tot = p.sum(2) + oh.sum(2)
        d = ((2 * inter + 1.0) / (tot + 1.0)).mean(1)  # smoothed: empty target and empty prediction -> 1
        return d if inp.targeted else 1.0 - d

    def __repr__(self) -> str:
        return "Dice()"


LOSSES: dict[str, Callable[[], Loss]] = {
    "ce": CrossEntropy,
    "bce": CrossEntropy,
    "margin": Margin,
    "cw": Margin,
    "dlr": DLR,
    "dice": Dice,
    "dicece": lambda: Dice() + CrossEntropy(),
}


def resolve_loss(loss: str | Loss) -> Loss:
    """A Loss from a name (ce, bce, margin, cw, dlr, dice, dicece) or a Loss object."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    raise MedsecError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)} or a Loss object")
