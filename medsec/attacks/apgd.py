"""Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum 0.75 and a step size that halves at
checkpoints when progress stalls, restarting from the best point.

Follows the authors' reference code (auto-attack, apgd-attack): initial step 2 * eps; checkpoints every
k iterations with k starting at int(0.22 * N) and shrinking by int(0.03 * N) down to int(0.06 * N) (at least 1); at a
checkpoint the step is halved (and the iterate reset to the best point) when fewer than rho = 0.75 of
the steps since the last checkpoint increased the loss, or when the step was not reduced at the last
checkpoint and the best loss has not improved since. Random start on the ball's surface (L_inf: scaled
uniform noise; L2: scaled Gaussian). Per-sample best over restarts; later restarts only attack the
samples not yet fooled (the authors' "cheap" mode).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from medsec.attacks.core import (
    Attack,
    AttackContext,
    AttackResult,
    Tracker,
    _flat_norm,
    _view,
    check_eps,
    check_norm,
    check_positive_int,
    normalise_grad,
    project,
)
from medsec.errors import MedsecError


class APGD(Attack):
    """APGD with any loss: "ce" (APGD-CE), "dlr" (APGD-DLR), or a Loss object (extra terms allowed)."""

    name = "apgd"

    def __init__(self, eps: float = 8 / 255, steps: int = 100, norm: str = "linf", restarts: int = 1,
                 loss: Any = "ce", rho: float = 0.75, momentum: float = 0.75, **kw: Any) -> None:
        super().__init__(loss=loss, **kw)
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        if not 0 < rho <= 1:
            raise MedsecError(f"rho must be in (0, 1], got {rho}")
        if not 0 < momentum <= 1:
            raise MedsecError(f"momentum (alpha in the paper) must be in (0, 1], got {momentum}")
        self.rho = float(rho)
        self.momentum = float(momentum)

    def _attack(self, ctx: AttackContext) -> AttackResult:
        if self.eps == 0:
            return AttackResult(ctx.x.clone(), ctx.clean_success.clone())
        tracker = Tracker(ctx.x, ctx.clean_success)
        for _ in range(self.restarts):
            idx = (~tracker.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            self._run_once(ctx, tracker, None if idx.numel() == ctx.x.shape[0] else idx)
        return tracker.result()

    def _start(self, x: Tensor, ctx: AttackContext) -> Tensor:
        assert self.eps is not None
        if self.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=ctx.gen, device=x.device, dtype=x.dtype) - 1
            d = self.eps * t / _view(_flat_norm(t, "linf").clamp_min(1e-12), t)
        else:
            t = torch.randn(x.shape, generator=ctx.gen, device=x.device, dtype=x.dtype)
            d = self.eps * t / _view(_flat_norm(t, "l2") + 1e-12, t)
        return (x + d).clamp(0.0, 1.0)

    def _run_once(self, ctx: AttackContext, tracker: Tracker, idx: Tensor | None) -> None:
        assert self.eps is not None
        eps, norm, n_iter = self.eps, self.norm, self.steps
        x = ctx.x if idx is None else ctx.x[idx]
        n = x.shape[0]
        k = max(int(0.22 * n_iter), 1)
        k_min = max(int(0.06 * n_iter), 1)
        k_decr = max(int(0.03 * n_iter), 1)

        x_adv = self._start(x, ctx)
        grads, loss, succ = ctx.loss_and_grad(x_adv, idx, 0, n_iter)
        grad = grads[0] if len(grads) == 1 else torch.stack(grads).sum(0)
        tracker.update(x_adv, loss, succ, idx)
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
        step = torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype)
        x_prev = x_adv.clone()
        loss_last_check = loss_best.clone()
        reduced_last_check = torch.ones(n, dtype=torch.bool, device=x.device)
        increases = torch.zeros(n, device=x.device)
        since_check = 0
        loss_prev = loss.clone()

        for i in range(n_iter):
            a = self.momentum if i > 0 else 1.0
            with torch.no_grad():
                z = project(x_adv + _view(step, x_adv) * normalise_grad(grad, norm), x, eps, norm)
                x_new = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), x, eps, norm)
                x_prev = x_adv
                x_adv = x_new
            if i == n_iter - 1:  # the last point needs no gradient
                loss, succ = ctx.evaluate(x_adv, idx, i + 1, n_iter)
                tracker.update(x_adv, loss, succ, idx)
                return
            grads, loss, succ = ctx.loss_and_grad(x_adv, idx, i + 1, n_iter)
            grad = grads[0] if len(grads) == 1 else torch.stack(grads).sum(0)
            tracker.update(x_adv, loss, succ, idx)
            increases += (loss > loss_prev).float()
            loss_prev = loss
            improved = loss > loss_best
            x_best[improved] = x_adv[improved]
            grad_best[improved] = grad[improved]
            loss_best = torch.where(improved, loss, loss_best)
            since_check += 1
            if since_check == k:
                osc = increases <= k * self.rho
                no_impr = (~reduced_last_check) & (loss_last_check >= loss_best)
                reduce = osc | no_impr
                reduced_last_check = reduce
                loss_last_check = loss_best.clone()
                if bool(reduce.any()):
                    step = torch.where(reduce, step / 2.0, step)
                    x_adv = torch.where(_view(reduce, x_adv), x_best, x_adv)
                    grad = torch.where(_view(reduce, grad), grad_best, grad)
                since_check = 0
                increases.zero_()
                k = max(k - k_decr, k_min)
