"""Carlini & Wagner's L2 attack (S&P 2017): minimise ||delta||_2^2 + c * f(x + delta) in tanh space with
Adam, and binary-search c per sample. f is the capped logit margin (Margin(kappa)), so the attack works for
any task the margin loss covers; extra loss terms are added to the margin.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medsec.attacks.core import (
    Attack,
    AttackContext,
    AttackResult,
    _flat_norm,
    check_eps,
    check_positive_int,
    project,
)
from medsec.attacks.losses import Margin
from medsec.errors import MedsecError


class CW(Attack):
    """C&W L2. eps: optional L2 budget — only successes within it count, and samples without one get
    their smallest successful point (else their last iterate) projected into the ball and re-checked
    (None = unbounded, the minimal-norm attack). c: initial
    trade-off constant (per sample; x10 until the first success, then bisection, binary_search_steps
    rounds). kappa: confidence. steps / lr: Adam iterations and learning rate per round. abort_early:
    stop a round when the total objective has not fallen by 0.01% over steps // 10 iterations (the
    authors' rule)."""

    name = "cw"
    norm = "l2"

    def __init__(self, eps: float | None = None, c: float = 1.0, kappa: float = 0.0, steps: int = 100,
                 lr: float = 0.01, binary_search_steps: int = 5, abort_early: bool = True, **kw: Any) -> None:
        if "loss" in kw:
            raise MedsecError("CW sets its own margin loss; add terms with extra=...")
        super().__init__(loss=Margin(kappa), **kw)
        self.eps = check_eps(eps, allow_none=True)
        c = float(c)
        if not (c > 0 and math.isfinite(c)):
            raise MedsecError(f"c must be a positive number, got {c}")
        if not lr > 0:
            raise MedsecError(f"lr must be > 0, got {lr}")
        self.c, self.kappa, self.lr = c, float(kappa), float(lr)
        self.steps = check_positive_int(steps, "steps")
        self.binary_search_steps = check_positive_int(binary_search_steps, "binary_search_steps")
        self.abort_early = bool(abort_early)

    def _attack(self, ctx: AttackContext) -> AttackResult:
        x, n = ctx.x, ctx.x.shape[0]
        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        limit = math.inf if self.eps is None else self.eps
        best_l2 = torch.where(ctx.clean_success, torch.zeros(n, device=x.device), torch.full((n,), math.inf, device=x.device))
        best_x = x.clone()
        c = torch.full((n,), self.c, device=x.device)
        lo = torch.zeros(n, device=x.device)
        hi = torch.full((n,), math.inf, device=x.device)
        last = x.clone()
        any_l2 = torch.full((n,), math.inf, device=x.device)  # smallest successful point at any norm
        any_x = x.clone()
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            prev = math.inf
            for t in range(self.steps):
                x_adv = 0.5 * (torch.tanh(w.detach()) + 1)
                grads, margin, succ = ctx.loss_and_grad(x_adv, None, t, self.steps)
                g_loss = grads[0] if len(grads) == 1 else torch.stack(grads).sum(0)
                l2sq = (x_adv - x).flatten(1).pow(2).sum(1)
                l2 = l2sq.sqrt()
                found |= succ  # the search on c follows success at any norm (minimal-norm C&W)
                ok = succ & (l2 <= limit)
                better = ok & (l2 < best_l2)
                if bool(better.any()):
                    best_l2 = torch.where(better, l2, best_l2)
                    best_x[better] = x_adv[better]
                closer = succ & (l2 < any_l2)
                if bool(closer.any()):
                    any_l2 = torch.where(closer, l2, any_l2)
                    any_x[closer] = x_adv[closer]
                # d/dx of ||x - x0||^2 - c * margin, chained through x = (tanh(w) + 1) / 2
                gx = 2 * (x_adv - x) - c.view(-1, 1, 1, 1) * g_loss
                opt.zero_grad()
                w.grad = gx * 0.5 * (1 - torch.tanh(w.detach()) ** 2)
                opt.step()
                if self.abort_early and t % max(self.steps // 10, 1) == 0:
                    cost = float((l2sq - c * margin).sum())
                    if cost > prev * 0.9999:
                        break
                    prev = cost
            last = 0.5 * (torch.tanh(w.detach()) + 1)
            # binary search on c, per sample
            hi = torch.where(found, torch.minimum(hi, c), hi)
            lo = torch.where(found, lo, torch.maximum(lo, c))
            c = torch.where(hi < math.inf, (lo + hi) / 2, c * 10)
        success = best_l2 < math.inf
        if self.eps is not None and not bool(success.all()):
            rows = (~success).nonzero().squeeze(1)
            # fall back to the smallest successful point found outside the ball (else the last iterate),
            # projected into the ball: it often still fools the model
            src = torch.where((any_l2 < math.inf).view(-1, 1, 1, 1), any_x, last)
            cand = project(src[rows], x[rows], self.eps, "l2")
            _, s = ctx.evaluate(cand, rows, self.steps, self.steps, exact=True)
            best_x[rows] = cand
            success[rows] = s
        return AttackResult(best_x, success, {"l2": _flat_norm(best_x - x, "l2")})
