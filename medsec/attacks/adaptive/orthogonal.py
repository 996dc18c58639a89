"""Orthogonal and Selective PGD (Bryniarski, Hingun, Pachuca, Wang & Carlini, ICLR 2022): evading a detector
and fooling the classifier without letting one objective's gradient undo the other's.

Per image and per step (L_inf sign steps, projected onto the eps ball and [0, 1]):
- while the image is not yet misclassified: step on the classifier loss's gradient with its component along
  the detector loss's gradient removed (``projection="orthogonal"``; Selective PGD steps on it unchanged);
- once it is misclassified: step on the detector loss's gradient with its component along the classifier
  loss's gradient removed (selective: unchanged);
- keep, per image, the misclassified iterate with the lowest detector score (the reference's selection);
  an image never misclassified keeps its iterate with the lowest detector score, because Table 2's detection
  AUROC counts every attacked image.

The detector loss is a :class:`~medsec.attacks.losses.Loss` the attacker ascends: the defence's exact
differentiable score descended (:func:`~medsec.attacks.adaptive.strategies.detector_term`), or Levy et al.'s
L2 stand-in (:func:`~medsec.attacks.adaptive.strategies.feature_distance_term`, ``class_mean_term``). The
classifier loss is the attack's ``loss`` (default CE; multi-label: BCE on the attacked finding).

Choices where the paper and its reference code (v-wangg/OrthogonalPGD, attack.py) leave room, all arguments:
- ``margin`` (0.05 logits, the reference's): an image counts as misclassified for the phase switch only when
  a wrong class leads the true one by this margin (targeted: the target leads by it; multi-label: the
  attacked finding's signed logit is past 0 by it), so a step on the detector loss does not immediately
  cross back; the kept iterate is judged without the margin;
- ``evade_unfooled`` (0.25): in the last quarter of the steps an image never misclassified so far goes back to
  its least suspicious iterate and steps on the detector loss (classifier component removed), so that images
  the classifier still gets right leave with a lower detector score instead of one that merely drifted. 0 gives
  the reference's algorithm;
- the first run starts at the clean image (the reference's) or at ``run(..., start=)`` (a warm start, e.g. the
  best sample other attacks found: a misclassified start goes straight to lowering the detector's score),
  later restarts at a random point of the ball;
- ``alpha`` defaults to eps / 8, the reference's ratio (1/255 at eps 8/255).
The detector's threshold is never read or changed here: success reported by ``run`` is the attack's goal
plus any ``success=`` condition (e.g. ``accepted_by(defence)``), measured on the model given at call time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsec.attacks.adaptive.strategies import quality
from medsec.attacks.core import (
    Attack,
    AttackContext,
    AttackResult,
    Goal,
    Tracker,
    check_eps,
    check_positive_int,
    random_start,
)
from medsec.attacks.engine import StepSchedule, _schedule
from medsec.attacks.losses import Loss
from medsec.errors import MedsecError

ScoreFn = Callable[[Tensor], Tensor]
PROJECTIONS = ("orthogonal", "selective")


def remove_component(g: Tensor, along: Tensor) -> Tensor:
    """g minus its projection on `along`, per sample: g - (<g, a> / <a, a>) a (dot products in float64;
    where `along` is zero, g is returned unchanged)."""
    gf, af = g.flatten(1).double(), along.flatten(1).double()
    aa = (af * af).sum(1)
    coef = torch.where(aa > 0, (gf * af).sum(1) / aa.clamp_min(1e-300), torch.zeros_like(aa))
    return g - coef.to(g.dtype).view(-1, *([1] * (g.ndim - 1))) * along


def fooled_with_margin(outputs: Tensor, y: Tensor, goal: Goal, margin: float) -> Tensor:
    """(N,) bool: the task goal (without extra conditions) holds with `margin` logits to spare.
    Classification: a wrong class leads the true one by margin (targeted: the target leads every other class
    by margin); multi-label: every attacked finding's logit is past 0 by margin in the wanted direction;
    segmentation: the plain Dice goal (no margin)."""
    if goal.task == "classification":
        z = outputs.float()
        zy = z.gather(1, y[:, None])[:, 0]
        other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
        return zy - other > margin if goal.targeted else other - zy > margin
    if goal.task == "multilabel":
        assert goal.finding_mask is not None
        s = (2 * y.to(outputs.dtype) - 1) * outputs  # > 0: the decision agrees with y
        hit = s > margin if goal.targeted else s < -margin
        return (hit | ~goal.finding_mask).all(1)
    return Goal(goal.task, goal.targeted, None, goal.dice_threshold)._task_goal(outputs, y, None)


class OrthogonalPGD(Attack):
    """Orthogonal PGD (``projection="orthogonal"``) or Selective PGD (``"selective"``), Bryniarski et al. 2022.

    detector: the detector loss (a Loss, ascended; e.g. ``detector_term(defence, spread)``).
    eps, alpha (default eps / 8), steps, restarts: L_inf budget, step size, iterations, runs (best kept).
    margin, evade_unfooled: see the module docstring. score: a per-image suspicion ``score(x) -> (N,)``
    used to pick the kept iterate (default: minus the detector loss, which needs no extra pass; pass the
    detector's own score when the detector loss is a stand-in such as the L2 distance).
    Other keywords as :class:`~medsec.attacks.core.Attack` (loss = the classifier loss, targeted, findings,
    success, grad_model (one model), seed, batch_size, ...).
    """

    name = "orthogonal-pgd"
    norm = "linf"

    def __init__(self, detector: Loss, eps: float = 8 / 255, alpha: float | None = None, steps: int = 100,
                 restarts: int = 1, projection: str = "orthogonal", margin: float = 0.05,
                 evade_unfooled: float = 0.25, score: ScoreFn | None = None,
                 step_schedule: str | StepSchedule = "constant", **kw: Any) -> None:
        if "extra" in kw:
            raise MedsecError("OrthogonalPGD keeps the classifier loss and the detector loss apart: pass the "
                              "detector's term as detector=, not extra=")
        super().__init__(**kw)
        if not isinstance(detector, Loss):
            raise MedsecError(f"detector must be a medsec.attacks.Loss (e.g. detector_term(defence)), got "
                              f"{type(detector).__name__}")
        if projection not in PROJECTIONS:
            raise MedsecError(f"projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        self.detector = detector
        self.eps = check_eps(eps)
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        assert self.eps is not None
        self.alpha = self.eps / 8 if alpha is None else check_eps(alpha, "alpha")
        self.projection = projection
        if not margin >= 0:
            raise MedsecError(f"margin must be >= 0 (logits), got {margin}")
        self.margin = float(margin)
        if not 0.0 <= evade_unfooled <= 1.0:
            raise MedsecError(f"evade_unfooled must be a fraction of the steps in [0, 1], got {evade_unfooled}")
        self.evade_unfooled = float(evade_unfooled)
        if score is not None and not callable(score):
            raise MedsecError(f"score must be a callable images -> (N,) suspicion, got {type(score).__name__}")
        self.score = score
        self.schedule = _schedule(step_schedule)

    _start: Tensor | None = None
    _offset: int = 0

    def run(self, model: nn.Module, x: Tensor, y: Tensor, verify: bool = True, start: Tensor | None = None
            ) -> AttackResult:
        """As :meth:`Attack.run`; ``start`` (x's shape): where the first run begins instead of x (projected
        onto x's eps ball and [0, 1]), e.g. the best sample of other attacks, which is also a kept candidate."""
        if start is not None:
            if not isinstance(start, Tensor) or start.shape != getattr(x, "shape", None):
                raise MedsecError(f"start must be a tensor of x's shape {tuple(getattr(x, 'shape', ()))}, got "
                                  f"{tuple(start.shape) if isinstance(start, Tensor) else type(start).__name__}")
            start = start.detach()
        self._start, self._offset = start, 0
        try:
            return super().run(model, x, y, verify)
        finally:
            self._start = None

    # ------------------------------------------------------------------------------------------------------
    def _attack(self, ctx: AttackContext) -> AttackResult:
        assert self.eps is not None
        if len(ctx.grad_models) != 1:
            raise MedsecError(f"{type(self).__name__} takes one gradient model, got {len(ctx.grad_models)}")
        x, n = ctx.x, ctx.x.shape[0]
        start = None
        if self._start is not None:  # Attack.run hands over the chunks in order
            start = self._start[self._offset:self._offset + n].to(device=x.device, dtype=x.dtype)
            start = torch.clamp(start, (x - self.eps).clamp(min=0.0), (x + self.eps).clamp(max=1.0))
            self._offset += n
        if self.eps == 0:
            return AttackResult(x.clone(), ctx.clean_success.clone())
        # the tracker's "success" here is the plain task goal: the detector is judged by the lowest score kept
        tracker = Tracker(x)
        for r in range(self.restarts):
            self._run_once(ctx, tracker, random=r > 0, start=start if r == 0 else None)
        res = tracker.result({"suspicion": -tracker.loss})
        # the kept points' success under the full goal (accepted by the detector too) is measured by _finish
        res.checked = torch.zeros_like(res.success)
        return res

    def _losses(self, ctx: AttackContext, x_adv: Tensor, t: int, grad: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Classifier loss, detector loss (both (N,), with graph when grad), the outputs and the input."""
        need = ctx.loss.needs_features or self.detector.needs_features
        xa = x_adv.detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out, feats = ctx.forward(ctx.grad_models[0], xa, need)
            ctx._init_task(out)
            inp = ctx.loss_input(out, feats, xa, None, t, self.steps)
            lc, ld = ctx.loss(inp), self.detector(inp)
        for name, v in (("classifier", lc), ("detector", ld)):
            if v.shape != (xa.shape[0],):
                raise MedsecError(f"the {name} loss must be per-sample (N,), got shape {tuple(v.shape)}")
        return lc, ld, out, xa

    def _offer(self, ctx: AttackContext, tracker: Tracker, x_adv: Tensor, out: Tensor, ld: Tensor) -> None:
        """Offer an evaluated iterate: misclassified first, then the lower suspicion."""
        with torch.no_grad():
            susp = self.score(x_adv).reshape(-1).float() if self.score is not None else -ld.detach().float()
            plain = Goal(ctx.goal.task, ctx.goal.targeted, ctx.goal.finding_mask, ctx.goal.dice_threshold)
            tracker.update(x_adv, -susp, plain.success(out.detach(), x_adv, ctx.y))

    def _run_once(self, ctx: AttackContext, tracker: Tracker, random: bool, start: Tensor | None = None) -> None:
        assert self.eps is not None and self.alpha is not None
        x, eps = ctx.x, self.eps
        if start is not None:
            x_adv = start.clone()
        else:
            x_adv = random_start(x, eps, "linf", ctx.gen) if random else x.clone()
        lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
        evade_from = self.steps - int(round(self.evade_unfooled * self.steps))
        for t in range(self.steps):
            if t == evade_from and t > 0:
                # images never misclassified so far go back to their least suspicious point and descend from there
                never = ~tracker.success
                x_adv = torch.where(never.view(-1, *([1] * (x.ndim - 1))), tracker.x_best.to(x_adv.dtype), x_adv)
            lc, ld, out, xa = self._losses(ctx, x_adv, t, grad=True)
            self._offer(ctx, tracker, x_adv, out, ld)
            # phase per image: on the detector once misclassified (or, late in the budget, when it never was)
            on_det = fooled_with_margin(out.detach(), ctx.y, ctx.goal, self.margin)
            if t >= evade_from:
                on_det = torch.ones_like(on_det)
            m = on_det.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
            if self.projection == "selective":
                (g,) = torch.autograd.grad((lc * (1 - m.flatten()) + ld * m.flatten()).sum(), xa)
            else:
                (gc,) = torch.autograd.grad(lc.sum(), xa, retain_graph=True)
                (gd,) = torch.autograd.grad(ld.sum(), xa)
                g = m * remove_component(gd, gc) + (1 - m) * remove_component(gc, gd)
            x_adv = torch.clamp(x_adv.detach() + self.alpha * self.schedule(t, self.steps) * g.sign(), lo, hi)
        _, ld, out, _ = self._losses(ctx, x_adv, self.steps, grad=False)
        self._offer(ctx, tracker, x_adv, out, ld)


class SelectivePGD(OrthogonalPGD):
    """Selective PGD (Bryniarski et al. 2022): Orthogonal PGD without the projections — the classifier loss
    until the image is misclassified, then the detector loss."""

    name = "selective-pgd"

    def __init__(self, detector: Loss, eps: float = 8 / 255, **kw: Any) -> None:
        if "projection" in kw:
            raise MedsecError("SelectivePGD is OrthogonalPGD(projection='selective'); it takes no projection=")
        super().__init__(detector, eps, projection="selective", **kw)


# ----------------------------------------------------------------------------------------------------------
# Keeping the best sample per image when the detector's score counts too (Table 2)
# ----------------------------------------------------------------------------------------------------------

@torch.no_grad()
def suspicion(defence: Any, x: Tensor, batch_size: int = 128) -> Tensor:
    """(N,) the defence's detector score (higher = more suspicious), without gradients, in batches."""
    return torch.cat([defence.score(x[i:i + batch_size]).reshape(-1).float()
                      for i in range(0, x.shape[0], batch_size)])


def evasion_quality(defence: Any, x_adv: Tensor, y: Tensor, task: str, finding: Tensor | None = None) -> Tensor:
    """(N,) LOWER = better for the attacker, for picking the best sample per image against a detector:
    whether the defended system handles the input (rejected, or still right: 2, else 0; as
    :func:`~medsec.attacks.adaptive.strategies.quality`), then the detector's score as the tie-break in
    (0, 1) (a monotone squash of it: lower score wins). So among candidates the system handles alike, the one
    the detector finds least suspicious is kept, which is what the detection AUROC over every attacked image
    measures; an image that is fooled and accepted always beats one that is not."""
    handled = quality(defence, x_adv, y, task, finding) >= 1.0
    s = suspicion(defence, x_adv).double()
    tie = torch.sigmoid(torch.sign(s) * torch.log1p(s.abs())).clamp(1e-6, 1 - 1e-6)
    return (handled.double() * 2.0 + tie).float()
