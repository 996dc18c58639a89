"""Levy et al.'s five adaptive strategies as reusable pieces (Levy et al. 2022, section 4).

1. Expand the loss: add what the defence exposes (its differentiable detector score, per-member losses,
   features) to the attack loss under a weight schedule -> :func:`detector_term`, :func:`ramp`.
2. Simplify the loss: replace an unstable or non-differentiable part by a stand-in -> the L2 distance to a
   Gaussian's mean (:func:`feature_distance_term`, :func:`class_mean_term`, Levy eq. 2) and BPDA
   (:class:`BPDA`, :func:`bpda`) for non-differentiable steps.
3. Compute the perturbation incrementally: many small steps and APGD's step-size schedule
   -> :func:`patient_attacks`.
4. When you fail, try again: random restarts with the per-sample best kept -> :class:`BestOf`.
5. Wisdom of the crowd: per-member sign averaging (eq. 3) and surrogate ensembles for limited knowledge
   -> :func:`sign_average`, :class:`SurrogateTransfer`.

Everything reads the defence through the protocol of ``medsec.defences.base`` (``predict``, ``score``,
``detect``, ``exposed()``); nothing here tests a defence's class name, and no detector threshold is ever
changed: the attacks only call ``detect`` to judge success against the threshold fixed at fit time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medsec.attacks.apgd import APGD
from medsec.attacks.core import DICE_SUCCESS, Attack, AttackResult, CompositeAttack, SuccessFn, check_eps
from medsec.attacks.engine import MIM, PGD, GradientAttack, mean_of_signs
from medsec.attacks.losses import ExtraTerm, Loss, Schedule
from medsec.attacks.transfer import InputDiversity
from medsec.defences.base import rejected
from medsec.errors import MedsecError
from medsec.metrics import dice_per_sample, seg_prediction
from medsec.metrics.system import quality as system_quality
from medsec.models.inference import batched

Objective = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------------------
# Reading the defence through its protocol
# ----------------------------------------------------------------------------------------------------------

def accepted_by(defence: Any) -> SuccessFn:
    """Success condition for attacks on a defended system: the defence's detector (if any) ACCEPTS x_adv.
    Pass it as an attack's ``success=``: the attack's own goal (misclassified, target reached, finding
    flipped, Dice dropped) must hold as well, so success means "fooled and let through"."""

    def fn(outputs: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return ~rejected(defence, x_adv)

    return fn


# ----------------------------------------------------------------------------------------------------------
# 1. Expand the loss   2. Simplify it
# ----------------------------------------------------------------------------------------------------------

def ramp(start: float, end: float, warmup: float = 0.5) -> Schedule:
    """Weight schedule: linear from `start` to `end` over the first `warmup` fraction of the steps, then
    constant. Starting low lets the classification term move the sample first (Levy et al. do not publish
    their weights; this is our choice)."""

    def w(step: int, steps: int) -> float:
        frac = min(1.0, step / max(1.0, warmup * steps))
        return start + (end - start) * frac

    return w


def detector_term(defence: Any, scale: float = 1.0) -> Loss:
    """Strategy 1: the detector's own differentiable score, descended (the attacker wants a low suspicion
    score): ``-score(x_adv) / scale``. Needs a differentiable ``defence.score``."""
    score = getattr(defence, "score", None)
    if not callable(score):
        raise MedsecError(f"{type(defence).__name__} exposes no score(x) to add to the loss")
    s = float(scale)

    def fn(out: Tensor, feats: Tensor | None, x: Tensor, y: Tensor) -> Tensor:
        return -score(x).reshape(-1).float() / s

    return ExtraTerm(fn, needs_features=False, name="detector-score")


def feature_distance_term(mean: Tensor, scale: float | None = None) -> Loss:
    """Strategy 2 (Levy et al. eq. 2): the stand-in for a Gaussian detector's log-likelihood, the squared L2
    distance of the features to the Gaussian's centre, descended: ``-||f(x) - mu||^2 / scale``.
    scale (default: 1) keeps the term comparable to the classification loss; pass tr(Sigma)."""
    mu = mean.detach().float().reshape(1, -1)
    s = 1.0 if scale is None else float(scale)
    if not (s > 0 and math.isfinite(s)):
        raise MedsecError(f"feature distance scale must be a positive number, got {scale!r}")

    def fn(out: Tensor, feats: Tensor | None, x: Tensor, y: Tensor) -> Tensor:
        assert feats is not None
        return -((feats - mu.to(feats.device)) ** 2).sum(1) / s

    return ExtraTerm(fn, needs_features=True, name="l2-to-mean")


def class_mean_term(means: Tensor, scales: Tensor) -> Loss:
    """Strategy 2 for per-class Gaussians (GMM): ``-||f(x) - mu_t||^2 / scale_t`` with t = the attack's
    target (y holds the targets in a targeted attack)."""
    mus = means.detach().float()
    sc = scales.detach().float().clamp_min(1e-12)

    def fn(out: Tensor, feats: Tensor | None, x: Tensor, y: Tensor) -> Tensor:
        assert feats is not None
        m, s = mus.to(feats.device)[y], sc.to(feats.device)[y]
        return -((feats - m) ** 2).sum(1) / s

    return ExtraTerm(fn, needs_features=True, name="l2-to-class-mean")


def gaussian_scale(cholesky: Tensor | None, fallback: Tensor | None = None) -> float:
    """tr(Sigma) = ||L||_F^2, the expected squared distance of clean features to the mean; the natural
    unit of eq. 2's term. Falls back to the mean squared distance of `fallback` (N, D) features."""
    if cholesky is not None and cholesky.numel() > 0:
        return float((cholesky.double() ** 2).sum())
    if fallback is not None:
        return float(((fallback - fallback.mean(0)) ** 2).sum(1).mean().clamp_min(1e-12))
    return 1.0


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018): the forward pass runs `fn`
    exactly, the backward pass differentiates `approx` instead (default: the identity). Wrap a
    non-differentiable preprocessing step or a whole defence whose gradients are masked."""

    def __init__(self, fn: Callable[[Tensor], Tensor], approx: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.approx = approx

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            fx = self.fn(x)
        if self.approx is None:
            if fx.shape != x.shape:
                raise MedsecError("BPDA with the identity needs fn to keep the input's shape; pass approx=")
            return x + (fx - x).detach()
        gx = self.approx(x)
        return gx + (fx - gx).detach()


def bpda(fn: Callable[[Tensor], Tensor], approx: Callable[[Tensor], Tensor] | None = None) -> BPDA:
    """Shorthand for :class:`BPDA`."""
    return BPDA(fn, approx)


# ----------------------------------------------------------------------------------------------------------
# 3. Incremental   4. Try again   5. Wisdom of the crowd
# ----------------------------------------------------------------------------------------------------------

def patient_attacks(eps: float, task: str, steps: int = 100, restarts: int = 2, num_classes: int | None = None,
                    **kw: Any) -> list[tuple[str, Attack]]:
    """Strategy 3 (and diversity): APGD with its step-size schedule, plus PGD with many small steps and
    restarts, plus momentum, with the losses that suit the task. Returns (name, attack) pairs."""
    e = check_eps(eps)
    assert e is not None
    out: list[tuple[str, Attack]] = []
    if task == "segmentation":
        out.append(("apgd-dice", APGD(eps=e, steps=steps, loss="dice", restarts=restarts, **kw)))
        out.append(("apgd-ce", APGD(eps=e, steps=steps, loss="ce", restarts=restarts, **kw)))
        out.append(("pgd-dicece-small-steps", PGD(eps=e, alpha=e / max(8, steps // 4), steps=steps,
                                                   loss="dicece", restarts=restarts, **kw)))
        return out
    out.append(("apgd-ce", APGD(eps=e, steps=steps, loss="ce", restarts=restarts, **kw)))
    if task == "classification" and (num_classes is None or num_classes >= 3):
        out.append(("apgd-dlr", APGD(eps=e, steps=steps, loss="dlr", restarts=restarts, **kw)))
    out.append(("pgd-margin-small-steps", PGD(eps=e, alpha=e / max(8, steps // 4), steps=steps, loss="margin",
                                              restarts=restarts, **kw)))
    out.append(("mim", MIM(eps=e, steps=steps, loss="ce", **kw)))
    return out


def sign_average(members: Sequence[nn.Module], eps: float, steps: int = 1, alpha: float | None = None,
                 restarts: int = 1, **kw: Any) -> GradientAttack:
    """Strategy 5, Levy et al. eq. 3: x_adv = x + eps * mean_i sign(grad_x L_i(x, y)) over the members
    (steps=1). With steps > 1 it iterates the same update with step alpha (default eps/steps * 2.5)."""
    if not members:
        raise MedsecError("sign_average needs at least one member network")
    e = check_eps(eps)
    assert e is not None
    if steps == 1:
        kw.setdefault("random_start", False)
        a = e if alpha is None else alpha
    else:
        a = 2.5 * e / steps if alpha is None else alpha
    return GradientAttack(eps=e, alpha=a, steps=steps, restarts=restarts, direction="raw",
                          grad_transform=mean_of_signs, grad_model=list(members), **kw)


def quality(defence: Any, x_adv: Tensor, y: Tensor, task: str, finding: Tensor | None = None,
            batch_size: int = 128) -> Tensor:
    """(N,) how well the defended system still does on each input (LOWER = better for the attacker): the
    defended-system score of :func:`medsec.metrics.system.quality` on the defence's outputs and its detector's
    verdicts. Used to keep the best sample per image."""
    z = batched(lambda xb: defence(xb).float(), x_adv, batch_size)
    return system_quality(z, y, task, rejected(defence, x_adv), finding)


def fooled(q: Tensor, task: str) -> Tensor:
    """(N,) bool: a :func:`quality` value that means the attack reached its goal (below 1: fooled and let
    through; for segmentation a Dice at most DICE_SUCCESS, where the attacks stop on an image)."""
    return q <= DICE_SUCCESS if task == "segmentation" else q < 1.0


class BestOf(CompositeAttack):
    """Strategy 4 (and AutoAttack's diversity): run several attacks (each with its own restarts) and keep,
    per sample, the candidate with the lowest `objective(x_adv, y)` (default: :func:`quality` on the model
    given at call time). The clean input is a candidate too, so the result is never worse than no attack.
    ``info['chosen']`` names the attack that produced each returned sample.

    only_unbroken (default: True with the default objective): as AutoAttack runs its attacks, each attack
    after the first sees only the images no earlier one has fooled (:func:`fooled`); the attacks stop on an
    image once it is fooled anyway. With a custom objective (e.g. a detector's score breaking ties among fooled
    images) every attack sees every image unless only_unbroken=True is asked for."""

    name = "best-of"

    def __init__(self, attacks: Sequence[tuple[str, Attack]] | Sequence[Attack], objective: Objective | None = None,
                 task: str = "classification", only_unbroken: bool | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.only_unbroken = objective is None if only_unbroken is None else bool(only_unbroken)
        pairs: list[tuple[str, Attack]] = []
        for i, a in enumerate(attacks):
            if isinstance(a, tuple):
                pairs.append((str(a[0]), a[1]))
            elif isinstance(a, Attack):
                pairs.append((f"{i}:{a.name}", a))
            else:
                raise MedsecError(f"BestOf takes attacks or (name, attack) pairs, got {type(a).__name__}")
        if not pairs:
            raise MedsecError("BestOf needs at least one attack")
        self.pairs = pairs
        self.objective = objective
        self.task_name = task
        budgets = {(a.norm, a.eps) for _, a in pairs if a.eps is not None}
        if len(budgets) == 1:
            self.norm, self.eps = next(iter(budgets))

    def _compose(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        obj = self.objective or (lambda xa, yy: quality(model, xa, yy, self.task_name))
        best_x = x.detach().clone()
        best_q = obj(best_x, y).float()
        chosen = ["clean"] * x.shape[0]
        for name, atk in self.pairs:
            todo = ~fooled(best_q, self.task_name) if self.only_unbroken else torch.ones_like(best_q, dtype=torch.bool)
            if not bool(todo.any()):
                break
            idx = todo.nonzero().squeeze(1)
            cand = atk(model, x[idx], y[idx])  # BestOf judges the candidate itself: no separate success check
            q = obj(cand, y[idx]).float() if self.objective is None else _judge_rows(obj, cand, x, y, idx)
            better = q < best_q[idx]
            if bool(better.any()):
                rows = idx[better]
                best_x[rows] = cand[better]
                best_q[rows] = q[better]
                for i in rows.tolist():
                    chosen[i] = name
        return AttackResult(best_x, fooled(best_q, self.task_name), {"chosen": chosen, "quality": best_q})


def _judge_rows(obj: Objective, cand: Tensor, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
    """A custom objective judges whole batches (it may close over per-image state such as the true labels or
    the attacked finding): the candidate rows are placed into the clean batch and their values read back."""
    if idx.numel() == x.shape[0]:
        return obj(cand, y).float()
    full = x.clone()
    full[idx] = cand
    return obj(full, y).float()[idx]


class SurrogateTransfer(CompositeAttack):
    """Strategy 5 for limited knowledge (Levy et al. 4.4): craft on an ensemble of surrogate models of the
    defence's architecture (sign-averaged gradients, eq. 3, iterated; and momentum on their summed loss), run
    several restarts, and keep per image the candidate that is most effective ON THE SURROGATES. The victim is
    never queried while crafting; it only judges the result.
    ``candidates``: further attacks, built with ``grad_model=`` the surrogates (e.g.
    :func:`medsec.attacks.transfer.transfer_attack`), run and judged on the surrogates like the rest. They come
    first: pass them most transfer-enhanced first.

    Effectiveness is the share of (surrogate, view) pairs the candidate fools (segmentation: 1 - Dice), over the
    candidate as it is and ``selection_views`` randomly resized and padded copies of it (input diversity with
    p = 1, the same draws for every candidate): an example that keeps fooling the surrogates under such
    transformations transfers better than one that fools them only as it is (Xie et al. 2019's rationale).
    Candidates are tried in order ``candidates``, momentum, the iterated restarts, the one-step sign average, and
    a later one replaces the kept one only where it fools strictly more. No loss enters: among candidates that
    fool the same pairs, a higher surrogate loss prefers the one most fitted to the surrogates, which transfers
    worst. On the quick Denoiser row (seeds 0/1/2) selecting by loss left 3.1 / 12.5 / 28.1 % of the defended
    victim right where this order and rule leave 3.1 / 10.9 / 28.1."""

    name = "surrogate-transfer"

    def __init__(self, surrogates: Sequence[nn.Module], eps: float, steps: int = 20, restarts: int = 3,
                 loss: str | Loss = "ce", candidates: Sequence[Attack] = (), selection_views: int = 4,
                 **kw: Any) -> None:
        if not surrogates:
            raise MedsecError("SurrogateTransfer needs at least one surrogate model")
        if int(selection_views) < 0:
            raise MedsecError(f"selection_views must be >= 0, got {selection_views}")
        self.selection_views = int(selection_views)
        super().__init__(grad_model=list(surrogates), **kw)  # guarded with the model under attack
        self.extra_attacks = list(candidates)
        self.surrogates = list(surrogates)
        self.eps = check_eps(eps)
        self.steps = steps
        self.restarts = restarts
        self.attack_loss = loss

    def _candidates(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """The candidates in selection order: the given ones, momentum, the restarts, the one-step average."""
        assert self.eps is not None
        out: list[Attack] = list(self.extra_attacks)
        # momentum on the ensemble's summed loss (Dong et al. 2018): their recipe for transferable examples
        out.append(MIM(eps=self.eps, steps=self.steps, loss=self.attack_loss, grad_model=self.surrogates,
                       seed=self.seed))
        for r in range(self.restarts):
            out.append(sign_average(self.surrogates, self.eps, steps=self.steps, loss=self.attack_loss,
                                    random_start=r > 0, seed=None if self.seed is None else self.seed + r))
        out.append(sign_average(self.surrogates, self.eps, steps=1, loss=self.attack_loss, seed=self.seed))
        return [a(self.surrogates[0], x, y) for a in out]

    @torch.no_grad()
    def _effectiveness(self, x_adv: Tensor, y: Tensor) -> Tensor:
        """Per image, the share of surrogates fooled (segmentation: their mean 1 - Dice)."""
        fooled = torch.zeros(x_adv.shape[0], device=x_adv.device)
        for m in self.surrogates:
            z = m(x_adv).float()
            if z.ndim == 2 and y.ndim == 1:
                fooled += (z.argmax(1) != y).float()
            elif z.ndim == 4:
                fooled += 1 - dice_per_sample(seg_prediction(z), y, z.shape[1])
        return fooled / len(self.surrogates)

    def _selection_effectiveness(self, x_adv: Tensor, y: Tensor) -> Tensor:
        """Effectiveness on the surrogates averaged over x_adv and `selection_views` diversified copies (the same
        seeded draws for every candidate); classification labels only."""
        total = self._effectiveness(x_adv, y)
        views = self.selection_views if y.ndim == 1 else 0  # class labels (a mask would have to move too)
        gen = torch.Generator(device=x_adv.device).manual_seed(0 if self.seed is None else int(self.seed))
        view = InputDiversity(p=1.0)
        for _ in range(views):
            total = total + self._effectiveness(view(x_adv, gen), y)
        return total / (1 + views)

    def _compose(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        best_x, best_e = x.detach().clone(), torch.full((x.shape[0],), -math.inf, device=x.device)
        for cand in self._candidates(x, y):
            e = self._selection_effectiveness(cand, y)
            better = e > best_e  # strictly: ties stay with the earlier, more transfer-enhanced candidate
            best_x[better] = cand[better]
            best_e = torch.where(better, e, best_e)
        z = batched(lambda xb: model(xb).float(), best_x, 128)
        succ = z.argmax(1) != y if z.ndim == 2 and y.ndim == 1 else torch.zeros(x.shape[0], dtype=torch.bool)
        return AttackResult(best_x, succ, {"surrogate_effectiveness": best_e})
