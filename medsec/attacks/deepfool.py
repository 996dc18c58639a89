"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016), batched and multi-class.

Each iteration linearises the classifier around the current point and steps to the nearest linearised
decision boundary among the `candidates` classes ranked highest on the clean image; the accumulated
perturbation is applied with (1 + overshoot). Samples stop as soon as they are misclassified.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from medsec.attacks.core import (
    Attack,
    AttackContext,
    AttackResult,
    _flat_norm,
    _view,
    check_eps,
    check_norm,
    check_positive_int,
    project,
)
from medsec.errors import MedsecError


class DeepFool(Attack):
    """Untargeted DeepFool for classifiers. norm: "l2" (the original) or "linf" (the paper's l_p variant
    with p = inf). eps: optional budget — the final point is projected into the ball and re-checked
    (None = unbounded, the minimal-perturbation attack). steps: at most this many linearisations.
    overshoot: 0.02 as in the paper. candidates: number of top clean classes considered (10 as in the
    authors' code; all classes when the model has fewer)."""

    name = "deepfool"

    def __init__(self, eps: float | None = None, steps: int = 50, overshoot: float = 0.02, norm: str = "l2",
                 candidates: int = 10, **kw: Any) -> None:
        super().__init__(**kw)
        if self.targeted:
            raise MedsecError("DeepFool is an untargeted attack; use PGD/APGD/CW with targeted=True")
        self.eps = check_eps(eps, allow_none=True)
        self.norm = check_norm(norm)
        self.steps = check_positive_int(steps, "steps")
        if not overshoot >= 0:
            raise MedsecError(f"overshoot must be >= 0, got {overshoot}")
        self.overshoot = float(overshoot)
        self.candidates = check_positive_int(candidates, "candidates", minimum=2)

    def _attack(self, ctx: AttackContext) -> AttackResult:
        if ctx.task != "classification":
            raise MedsecError("DeepFool is defined for classification; use PGD/APGD for multi-label or segmentation")
        if len(ctx.grad_models) != 1:
            raise MedsecError("DeepFool takes a single gradient model")
        gm = ctx.grad_models[0]
        x, y = ctx.x, ctx.y
        n, k = ctx.clean_outputs.shape
        nc = min(self.candidates, k)
        # candidate classes per sample: the top clean classes other than the label
        order = ctx.clean_outputs.masked_fill(torch.nn.functional.one_hot(y, k).bool(), -torch.inf).argsort(1, descending=True)
        cand = order[:, : nc - 1]
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        done = ctx.clean_success.clone()
        for _ in range(self.steps):
            act = (~done).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            xa = x_adv[act].detach().requires_grad_(True)
            with torch.enable_grad():
                out, _ = ctx.forward(gm, xa, False)
                ya = y[act]
                fooled = out.argmax(1) != ya if not ctx.separate_check else self._check(ctx, xa, ya)
                zy = out.gather(1, ya[:, None])[:, 0]
                (gy,) = torch.autograd.grad(zy.sum(), xa, retain_graph=True)
                best_d = torch.full((act.numel(),), torch.inf, device=x.device)
                best_r = torch.zeros_like(xa)
                for j in range(nc - 1):
                    cj = cand[act, j]
                    zj = out.gather(1, cj[:, None])[:, 0]
                    (gj,) = torch.autograd.grad(zj.sum(), xa, retain_graph=j < nc - 2)
                    w = gj - gy
                    f = (zj - zy).detach()
                    if self.norm == "l2":
                        wn = _flat_norm(w, "l2")
                        dist = f.abs() / (wn + 1e-8)
                        r = _view((f.abs() + 1e-4) / (wn ** 2 + 1e-8), w) * w
                    else:
                        wn = w.abs().flatten(1).sum(1)
                        dist = f.abs() / (wn + 1e-8)
                        r = _view((f.abs() + 1e-4) / (wn + 1e-8), w) * w.sign()
                    better = dist < best_d
                    best_d = torch.where(better, dist, best_d)
                    best_r = torch.where(_view(better, r), r, best_r)
            done[act] = fooled
            move = act[~fooled]
            if move.numel() == 0:
                break
            r_tot[move] += best_r[~fooled]
            x_adv[move] = (x[move] + (1 + self.overshoot) * r_tot[move]).clamp(0.0, 1.0)
        if self.eps is not None:
            x_adv = project(x_adv, x, self.eps, self.norm)
        succ = ctx.verify(x_adv)
        return AttackResult(x_adv, succ, {"size": _flat_norm(x_adv - x, self.norm)})

    @staticmethod
    def _check(ctx: AttackContext, xa: Tensor, ya: Tensor) -> Tensor:
        with torch.no_grad():
            out, _ = ctx.forward(ctx.model, xa.detach(), False)
        return out.argmax(1) != ya
