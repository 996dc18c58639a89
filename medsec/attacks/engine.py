"""The one iterative gradient engine behind FGSM, BIM, PGD, MIM and the L_inf C&W-margin attack.

Per step: gradients of the attack loss (one per gradient model) -> optional `grad_transform` (e.g. the
mean of per-member signs, Levy et al. eq. 3) -> optional momentum (MIM) -> step direction (sign for L_inf,
unit L2 for L2, or raw) -> step of size alpha(t) -> projection onto the ball and [0, 1]. Every evaluated
point is offered to a per-sample tracker (success first, then loss), across steps and restarts, so the
returned point is the best one seen, never merely the last. With early_stop, samples leave the batch as
soon as their goal is reached (the goal is only to succeed), which saves their compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from medsec.attacks.core import (
    Attack,
    AttackContext,
    AttackResult,
    Tracker,
    check_eps,
    check_norm,
    check_positive_int,
    normalise_grad,
    project,
    random_start,
)
from medsec.attacks.losses import Loss, Margin
from medsec.errors import MedsecError

GradTransform = Callable[[Sequence[Tensor]], Tensor]
StepSchedule = Callable[[int, int], float]


def mean_of_signs(grads: Sequence[Tensor]) -> Tensor:
    """Levy et al. eq. 3: the mean over ensemble members of sign(grad_i). Use with direction="raw"."""
    return torch.stack([g.sign() for g in grads]).mean(0)


def _schedule(name: str | StepSchedule) -> StepSchedule:
    if callable(name):
        return name
    if name == "constant":
        return lambda t, n: 1.0
    if name == "cosine":
        return lambda t, n: 0.5 * (1 + math.cos(math.pi * t / max(n, 1)))
    if name == "linear":
        return lambda t, n: 1.0 - t / max(n, 1)
    raise MedsecError(f"step_schedule must be 'constant', 'cosine', 'linear' or a callable, got {name!r}")


class GradientAttack(Attack):
    """Iterative gradient attack (the engine). FGSM, BIM, PGD and MIM are presets of it.

    eps: ball radius in [0, 1] pixel units (L_inf) or pixel-L2 units. alpha: step size (None: the
    preset's rule). steps: iterations. norm: "linf" or "l2". restarts: independent runs, per-sample best
    kept; restarts after the first always start at random points. random_start: first run starts at a
    uniform random point of the ball. momentum: MIM decay mu (0 = none; the gradient is L1-normalised
    per sample before accumulation, as Dong et al.). step_schedule: multiplier of alpha over steps.
    direction: "auto" (sign / unit L2) or "raw" (use the transformed gradient as it is, e.g. mean of
    signs). grad_transform: combine per-member gradients into one (default: their sum).
    early_stop: drop samples from the batch once their goal is reached.
    """

    name = "gradient"

    def __init__(self, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10, norm: str = "linf",
                 restarts: int = 1, random_start: bool = True, momentum: float = 0.0,
                 step_schedule: str | StepSchedule = "constant", direction: str = "auto",
                 grad_transform: GradTransform | None = None, early_stop: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        self.alpha = self._default_alpha() if alpha is None else check_eps(alpha, "alpha")
        assert self.alpha is not None and self.eps is not None
        if self.steps == 1 and not random_start and self.alpha > self.eps * (1 + 1e-9):
            raise MedsecError(
                f"alpha ({self.alpha:.6g}) > eps ({self.eps:.6g}) for a single-step attack: the step would be "
                f"cut back by the projection; use alpha <= eps"
            )
        self.random_start = bool(random_start)
        if not (0.0 <= momentum and math.isfinite(momentum)):
            raise MedsecError(f"momentum must be a finite number >= 0, got {momentum}")
        self.momentum = float(momentum)
        self.schedule = _schedule(step_schedule)
        if direction not in ("auto", "raw"):
            raise MedsecError(f"direction must be 'auto' or 'raw', got {direction!r}")
        self.direction = direction
        self.grad_transform = grad_transform
        self.early_stop = bool(early_stop)

    def _default_alpha(self) -> float:
        """Madry et al.'s rule: 2.5 * eps / steps."""
        assert self.eps is not None
        return 2.5 * self.eps / self.steps

    # ------------------------------------------------------------------------------------------------------
    def _attack(self, ctx: AttackContext) -> AttackResult:
        assert self.eps is not None and self.alpha is not None
        x, n = ctx.x, ctx.x.shape[0]
        if self.eps == 0:
            return AttackResult(x.clone(), ctx.clean_success.clone())
        # the clean check only pays off when succeeded samples are skipped
        tracker = Tracker(x, ctx.clean_success if self.early_stop else None)
        for r in range(self.restarts):
            if self.early_stop:
                idx: Tensor | None = (~tracker.success).nonzero().squeeze(1)
                assert idx is not None
                if idx.numel() == 0:
                    break
                if idx.numel() == n:
                    idx = None
            else:
                idx = None
            self._run_once(ctx, tracker, idx, random=self.random_start or r > 0, last=r == self.restarts - 1)
        return tracker.result()

    def _run_once(self, ctx: AttackContext, tracker: Tracker, idx: Tensor | None, random: bool,
                  last: bool = True) -> None:
        """One run from a (random) start over rows `idx` (None = all rows). The last run hands its final
        iterate to the tracker unevaluated (saving a forward pass); earlier runs evaluate it so that
        restarts compare."""
        assert self.eps is not None and self.alpha is not None
        eps, norm, steps = self.eps, self.norm, self.steps
        x0 = ctx.x if idx is None else ctx.x[idx]
        x_adv = random_start(x0, eps, norm, ctx.gen) if random else x0.clone()
        mom = torch.zeros_like(x0) if self.momentum > 0 else None
        # L_inf: the ball-and-box projection is one clamp between precomputed bounds
        lo = (x0 - eps).clamp_(min=0.0) if norm == "linf" else None
        hi = (x0 + eps).clamp_(max=1.0) if norm == "linf" else None
        for t in range(steps):
            grads, loss, succ = ctx.loss_and_grad(x_adv, idx, t, steps)
            tracker.update(x_adv, loss, succ, idx)
            g = self.grad_transform(grads) if self.grad_transform is not None else _sum(grads)
            if self.early_stop:
                keep = ~succ
                if not bool(keep.all()):
                    if not bool(keep.any()):
                        return
                    rows = keep.nonzero().squeeze(1)
                    full = torch.arange(ctx.x.shape[0], device=x0.device) if idx is None else idx
                    idx = full[rows]
                    x0, x_adv, g = x0[rows], x_adv[rows], g[rows]
                    if mom is not None:
                        mom = mom[rows]
                    if lo is not None and hi is not None:
                        lo, hi = lo[rows], hi[rows]
            if mom is not None:
                g = g / g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (g.ndim - 1)))
                mom = self.momentum * mom + g
                g = mom
            d = g if self.direction == "raw" else normalise_grad(g, norm)
            a = self.alpha * self.schedule(t, steps)
            if lo is not None and hi is not None:
                x_adv = torch.clamp(torch.add(x_adv.detach(), d, alpha=a), lo, hi)
            else:
                x_adv = project(x_adv.detach() + a * d, x0, eps, norm)
        if last:
            tracker.take_last(x_adv, idx)
        else:
            loss, succ = ctx.evaluate(x_adv, idx, steps, steps)
            tracker.update(x_adv, loss, succ, idx)


def _sum(grads: Sequence[Tensor]) -> Tensor:
    g = grads[0]
    for h in grads[1:]:
        g = g + h
    return g


class FGSM(GradientAttack):
    """Fast Gradient Sign Method (Goodfellow et al.): one step of size eps (alpha = eps), no random start.
    With norm="l2" it is the fast gradient (L2) method."""

    name = "fgsm"

    def __init__(self, eps: float = 8 / 255, norm: str = "linf", alpha: float | None = None, **kw: Any) -> None:
        kw.setdefault("random_start", False)
        super().__init__(eps=eps, alpha=alpha, steps=1, norm=norm, **kw)

    def _default_alpha(self) -> float:
        assert self.eps is not None
        return self.eps


class BIM(GradientAttack):
    """Basic Iterative Method (Kurakin et al.): PGD without random start; alpha default eps / steps."""

    name = "bim"

    def __init__(self, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10, norm: str = "linf",
                 **kw: Any) -> None:
        kw.setdefault("random_start", False)
        super().__init__(eps=eps, alpha=alpha, steps=steps, norm=norm, **kw)

    def _default_alpha(self) -> float:
        assert self.eps is not None
        return self.eps / self.steps


class PGD(GradientAttack):
    """Projected Gradient Descent (Madry et al.): random start, alpha default 2.5 * eps / steps,
    per-sample best over restarts."""

    name = "pgd"


class MIM(GradientAttack):
    """Momentum Iterative Method (Dong et al.): BIM with momentum mu = 1.0, alpha default eps / steps."""

    name = "mim"

    def __init__(self, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10, norm: str = "linf",
                 momentum: float = 1.0, **kw: Any) -> None:
        kw.setdefault("random_start", False)
        super().__init__(eps=eps, alpha=alpha, steps=steps, norm=norm, momentum=momentum, **kw)

    def _default_alpha(self) -> float:
        assert self.eps is not None
        return self.eps / self.steps


class CWLinf(GradientAttack):
    """The L_inf C&W attack (Carlini & Wagner's margin loss, optimised by PGD within the ball), as used
    e.g. by Madry et al. and RobustBench. kappa caps the margin (confidence)."""

    name = "cw-linf"

    def __init__(self, eps: float = 8 / 255, alpha: float | None = None, steps: int = 30, kappa: float = math.inf,
                 norm: str = "linf", **kw: Any) -> None:
        loss: Loss = Margin(kappa)
        if "loss" in kw:
            raise MedsecError("CWLinf sets its own margin loss; add terms with extra=...")
        super().__init__(eps=eps, alpha=alpha, steps=steps, norm=norm, loss=loss, **kw)
