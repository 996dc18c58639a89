"""One adaptive attack per defence of Levy et al. (2022), each built from the strategies' pieces.

Every recipe is called like an attack on the DEFENCE: ``recipe(defence, x, y) -> x_adv`` and
``recipe.run(defence, x, y) -> AttackResult``; it reads only what the defence exposes (``exposed()``), and
judges success on the defended system (accepted by the detector and misclassified). Detector thresholds
are never touched. :func:`recipe_for` picks the recipe from the exposed parts, not from class names.

- :class:`MGMRecipe` (4.1): classification loss, then (once fooled) + lambda * ||f(x) - mu||^2 (eq. 2), APGD +
  PGD, and orthogonal PGD (Bryniarski et al. 2022) on the detector's own score; best kept, the detector's
  score breaking ties, so images the classifier still gets right leave less suspicious too (Table 2).
- :class:`GMMRecipe` (4.2): two stages — leave the true class for the nearest fooling class, then make the
  classifier and that class's Gaussian accept the sample (L2 stand-in to the class mean; orthogonal PGD on
  that class's score).
- :class:`EnsembleRecipe` (4.3): eq. 3, eps * mean_i sign(grad L_i), then iterated with restarts.
- :class:`DenoiserRecipe` (4.4): limited knowledge: surrogate ensemble of the defence's architecture,
  eq. 3 iterated, and momentum + input diversity (+ translation invariance), the most effective samples (on
  the surrogates) kept, evaluated on the victim.
- :class:`RBFRecipe` (4.5): patience and diversity: many small steps, several attacks, best per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medsec.attacks.adaptive.orthogonal import OrthogonalPGD, evasion_quality
from medsec.attacks.adaptive.strategies import (
    BestOf,
    SurrogateTransfer,
    accepted_by,
    class_mean_term,
    detector_term,
    feature_distance_term,
    fooled,
    gaussian_scale,
    patient_attacks,
    quality,
    ramp,
    sign_average,
)
from medsec.attacks.apgd import APGD
from medsec.attacks.core import Attack, AttackResult, CompositeAttack, check_eps, check_positive_int
from medsec.attacks.engine import PGD
from medsec.attacks.losses import ExtraTerm, Loss, Margin, Selective
from medsec.attacks.transfer import LogitEnsemble, ti_kernel_size, transfer_attack
from medsec.defences.base import exposed, is_detector
from medsec.errors import MedsecError
from medsec.metrics import task_of_outputs
from medsec.models.inference import batched


def task_of(model: nn.Module, x: Tensor, y: Tensor) -> str:
    """classification | multilabel | segmentation, from the model's output shape and the labels."""
    with torch.no_grad():
        return task_of_outputs(model(x[:1]), y)


class Recipe(CompositeAttack):
    """Base of the per-defence adaptive attacks: eps in [0, 1] pixel units (L_inf), steps, restarts, seed.
    Called on the DEFENCE like any attack: ``recipe(defence, x, y) -> x_adv``, ``recipe.run(defence, x, y) ->
    AttackResult`` (success = the defended system is fooled and the detector evaded)."""

    name = "recipe"
    strategies: tuple[str, ...] = ()
    eps: float

    def __init__(self, eps: float, steps: int = 100, restarts: int = 2, seed: int | None = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(seed=seed, batch_size=batch_size)  # batch_size: attack in chunks (memory at 224 px)
        e = check_eps(eps)
        assert e is not None
        if e > 1:
            raise MedsecError(f"eps must lie in [0, 1] (pixel units), got {eps}")
        self.eps = e
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        self.seed = seed

    def describe(self) -> str:
        """One line for reports: the recipe, its budget and the strategies it uses."""
        return (f"{self.name}: eps={self.eps:g} (L_inf, [0,1] pixels), {self.steps} steps, {self.restarts} "
                f"restarts; strategies: {', '.join(self.strategies)}")


def _need(ex: dict[str, Any], key: str, defence: Any, recipe: str) -> Any:
    if key not in ex or ex[key] is None:
        raise MedsecError(f"the {recipe} recipe needs the defence to expose {key!r}; "
                          f"{type(defence).__name__} exposes {', '.join(ex) or 'nothing'}")
    return ex[key]


def _finish(res: AttackResult, defence: nn.Module, y: Tensor, task: str, finding: Tensor | None = None,
            judge: Callable[..., Tensor] = quality) -> AttackResult:
    q = res.info.get("quality")  # BestOf already judged its pick with this very objective
    if q is None:
        q = judge(defence, res.x_adv, y, task, finding)
    info = dict(res.info)
    info["quality"] = q
    return AttackResult(res.x_adv, fooled(q, task), info)


class MGMRecipe(Recipe):
    """Levy et al. 4.1: evade the MGM detector and fool the classifier at once.

    Loss = margin (capped at kappa, so a misclassified sample stops being pushed further), plus, once the
    sample is misclassified (``Selective``: first fool, then evade), lambda(t) * (-||f(x) - mu||^2 / tr(Sigma)),
    the stable stand-in for the log-likelihood (eq. 2); lambda ramps from lam_start to lam over the first half
    of the steps. Optimised by APGD and by PGD with restarts; the best
    sample per image (accepted and wrong first) is kept. With exact=True a third attack adds the detector's own
    score instead of the stand-in (strategy 1 unsimplified), in case the stand-in misses low-variance
    directions of Sigma. With orthogonal=True (default) orthogonal PGD (Bryniarski et al. 2022,
    :class:`~medsec.attacks.adaptive.orthogonal.OrthogonalPGD`) joins them, on the detector's exact score
    (detector_loss="score") or on the L2 stand-in ("l2"), and the best sample per image is picked by
    :func:`~medsec.attacks.adaptive.orthogonal.evasion_quality` (handled or not first, then the lower detector
    score), so that images the classifier still gets right leave with a lower score too; orthogonal=False is
    the recipe as it was before (no orthogonal PGD, ties broken by the classifier's margin).
    For multi-label victims the top clean finding is attacked (Li & Zhu)."""

    name = "mgm-adaptive"
    strategies: tuple[str, ...] = ("expand loss", "simplify loss (L2 to the mean)", "incremental (APGD)", "restarts",
                  "orthogonal PGD (Bryniarski et al. 2022)")

    def __init__(self, eps: float, steps: int = 100, restarts: int = 2, lam: float = 1.0, lam_start: float = 0.1,
                 kappa: float = 2.0, exact: bool = True, orthogonal: bool = True, detector_loss: str = "score",
                 seed: int | None = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(eps, steps, restarts, seed, batch_size)
        self.lam, self.lam_start, self.kappa = float(lam), float(lam_start), float(kappa)
        self.exact = bool(exact)
        self.orthogonal = bool(orthogonal)
        self.detector_loss = _check_detector_loss(detector_loss)
        if not self.orthogonal:
            self.strategies = self.strategies[:-1]

    def _compose(self, defence: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        ex = exposed(defence)
        clf = _need(ex, "classifier", defence, "MGM")
        mean = _need(ex, "mean", defence, "MGM")
        scale = gaussian_scale(ex.get("cholesky"))
        task = task_of(defence, x, y)
        sched = ramp(self.lam_start, self.lam)
        loss: Loss = Selective(Margin(self.kappa), feature_distance_term(mean, scale), sched)
        succ = accepted_by(defence) if is_detector(defence) else None
        kw: dict[str, Any] = {"grad_model": clf, "success": succ, "seed": self.seed}
        attacks: list[tuple[str, Attack]] = [
            ("apgd-margin+l2mean", APGD(eps=self.eps, steps=self.steps, restarts=self.restarts, loss=loss, **kw)),
            ("pgd-margin+l2mean", PGD(eps=self.eps, steps=self.steps, restarts=self.restarts,
                                     alpha=2.5 * self.eps / self.steps, loss=loss, **kw)),
        ]
        has_score = callable(getattr(defence, "score", None))
        spread = _score_scale(defence, x) if has_score and (self.exact or self.orthogonal) else 1.0
        if self.exact and has_score:
            # strategy 1 without the simplification: the detector's own score, scaled by its clean spread
            exact: Loss = Selective(Margin(self.kappa), detector_term(defence, spread), sched)
            attacks.append(("apgd-margin+score", APGD(eps=self.eps, steps=self.steps, restarts=self.restarts,
                                                      loss=exact, success=succ, seed=self.seed)))
        finding = _top_finding(defence, x) if task == "multilabel" else None
        judge = evasion_quality if self.orthogonal and has_score else quality
        res = BestOf(attacks, objective=lambda xa, yy: judge(defence, xa, y, task, finding)).run(defence, x, y)
        if self.orthogonal and has_score:
            stand_in = feature_distance_term(mean, scale) if self.detector_loss == "l2" else None
            res = _refine(res, _orthogonal(defence, spread, stand_in, self, kw), defence, x, y,
                          lambda xa: judge(defence, xa, y, task, finding))
        return _finish(res, defence, y, task, finding, judge)


DETECTOR_LOSSES = ("score", "l2")


def _check_detector_loss(name: str) -> str:
    if name not in DETECTOR_LOSSES:
        raise MedsecError(f"detector_loss must be 'score' (the detector's own score) or 'l2' (Levy et al.'s "
                          f"feature-distance stand-in), got {name!r}")
    return name


def _refine(res: AttackResult, named: tuple[str, OrthogonalPGD], defence: nn.Module, x: Tensor, y_attack: Tensor,
            judge: Callable[[Tensor], Tensor]) -> AttackResult:
    """The detector-aware last stage: orthogonal PGD warm-started at the best sample so far (a misclassified
    one goes straight to lowering the detector's score), and per image the better of the two by `judge`
    (lower wins; the best-of stage's "quality" must come from the same judge)."""
    name, atk = named
    cand = atk.run(defence, x, y_attack, verify=False, start=res.x_adv).x_adv
    q, best_q = judge(cand).float(), res.info["quality"].float()
    better = q < best_q
    x_adv = torch.where(better.view(-1, *([1] * (x.ndim - 1))), cand, res.x_adv)
    chosen = [name if b else c for b, c in zip(better.tolist(), res.info["chosen"], strict=True)]
    q_new = torch.where(better, q, best_q)
    return AttackResult(x_adv, q_new < 1.0, {**res.info, "chosen": chosen, "quality": q_new})


def _orthogonal(defence: Any, spread: float, stand_in: Loss | None, recipe: Recipe, kw: dict[str, Any]
                ) -> tuple[str, OrthogonalPGD]:
    """The orthogonal-PGD candidate of a detector recipe: on the detector's exact score (in units of its clean
    spread) or on an L2 stand-in (then the kept iterate is still picked by the detector's own score)."""
    if stand_in is None:
        det, label, score = detector_term(defence, spread), "score", None
    else:
        det, label, score = stand_in, "l2", defence.score
    return (f"orthogonal-pgd+{label}", OrthogonalPGD(det, eps=recipe.eps, steps=recipe.steps,
                                                     restarts=recipe.restarts, score=score, **kw))


def _score_scale(defence: Any, x: Tensor) -> float:
    """The spread (std) of the detector's scores on the clean inputs: the unit of the exact score term."""
    s = batched(lambda xb: defence.score(xb).float().reshape(-1), x, 128)
    return float(s.std().clamp_min(1e-6)) if s.numel() > 1 else 1.0


def _top_finding(model: nn.Module, x: Tensor) -> Tensor:
    return batched(lambda xb: model(xb).float(), x, 128).argmax(1)


class GMMRecipe(Recipe):
    """Levy et al. 4.2: two stages against per-class Gaussians on top of an adversarially trained classifier.

    Stage 1 (stage1_steps of untargeted margin PGD on the classifier) finds the nearest fooling class t per
    image (the highest non-true logit at the stage-1 point). Stage 2 is a targeted attack towards t whose loss
    is the targeted margin (capped at kappa) plus, once t is predicted (``Selective``), lambda(t) *
    (-||f(x) - mu_t||^2 / tr(Sigma_t)), the L2 stand-in for class t's Gaussian, with APGD and PGD + restarts; with exact=True a third attack uses the
    exposed ``class_score(x, t)`` (the detector's own score for class t) instead of the stand-in. With
    orthogonal=True (default) stage 2 also runs targeted orthogonal PGD (Bryniarski et al. 2022) on class t's
    score (detector_loss="score") or on the L2 stand-in ("l2"), and the best sample per image is picked with
    the detector's score breaking ties (:func:`~medsec.attacks.adaptive.orthogonal.evasion_quality`);
    orthogonal=False is the recipe as it was before."""

    name = "gmm-adaptive"
    strategies: tuple[str, ...] = ("two-stage targeting", "expand loss", "simplify loss (L2 to the class mean)",
                  "incremental (APGD)", "restarts", "orthogonal PGD (Bryniarski et al. 2022)")

    def __init__(self, eps: float, steps: int = 100, restarts: int = 2, stage1_steps: int = 20, lam: float = 1.0,
                 lam_start: float = 0.1, kappa: float = 2.0, exact: bool = True, orthogonal: bool = True,
                 detector_loss: str = "score", seed: int | None = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(eps, steps, restarts, seed, batch_size)
        self.stage1_steps = check_positive_int(stage1_steps, "stage1_steps")
        self.lam, self.lam_start, self.kappa = float(lam), float(lam_start), float(kappa)
        self.exact = bool(exact)
        self.orthogonal = bool(orthogonal)
        self.detector_loss = _check_detector_loss(detector_loss)
        if not self.orthogonal:
            self.strategies = self.strategies[:-1]

    def _compose(self, defence: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        ex = exposed(defence)
        clf = _need(ex, "classifier", defence, "GMM")
        gaussians = list(_need(ex, "gaussians", defence, "GMM"))
        if y.ndim != 1:
            raise MedsecError("the GMM recipe needs class labels (N,)")
        means = torch.stack([g.mean.float() for g in gaussians])
        scales = torch.tensor([gaussian_scale(getattr(g, "cholesky", None)) for g in gaussians])
        # stage 1: nearest fooling class
        s1 = PGD(eps=self.eps, steps=self.stage1_steps, loss="margin", seed=self.seed)
        x1 = s1(clf, x, y)
        z1 = batched(lambda xb: clf(xb).float(), x1, 128)
        z1 = z1.masked_fill(torch.nn.functional.one_hot(y, z1.shape[1]).bool(), -math.inf)
        target = z1.argmax(1)
        # stage 2: convince classifier and class-t Gaussian
        loss: Loss = Selective(Margin(self.kappa), class_mean_term(means, scales), ramp(self.lam_start, self.lam))
        kw: dict[str, Any] = {"loss": loss, "grad_model": clf, "targeted": True,
                              "success": accepted_by(defence), "seed": self.seed}
        attacks: list[tuple[str, Attack]] = [
            ("apgd-targeted+l2classmean", APGD(eps=self.eps, steps=self.steps, restarts=self.restarts, **kw)),
            ("pgd-targeted+l2classmean", PGD(eps=self.eps, steps=self.steps, restarts=self.restarts,
                                            alpha=2.5 * self.eps / self.steps, **kw)),
        ]
        class_score = ex.get("class_score")
        spread = _score_scale(defence, x) if callable(class_score) and (self.exact or self.orthogonal) else 1.0

        def exact_fn(out: Tensor, feats: Tensor | None, xa: Tensor, t: Tensor) -> Tensor:
            assert callable(class_score)
            return -class_score(xa, t).reshape(-1).float() / spread

        if self.exact and callable(class_score):
            # strategy 1 unsimplified: the detector's own score for the target class, in units of its clean spread
            exact: Loss = Selective(Margin(self.kappa), ExtraTerm(exact_fn, needs_features=False, name="class-score"),
                                    ramp(self.lam_start, self.lam))
            attacks.append(("apgd-targeted+class-score", APGD(
                eps=self.eps, steps=self.steps, restarts=self.restarts, loss=exact, targeted=True,
                success=accepted_by(defence), seed=self.seed)))
        orthogonal = self.orthogonal and callable(class_score)
        judge: Callable[..., Tensor] = evasion_quality if orthogonal else quality
        res = BestOf(attacks, objective=lambda xa, _t: judge(defence, xa, y, "classification")).run(defence, x, target)
        if orthogonal:
            # orthogonal PGD towards t: the target's margin, then class t's score (or its L2 stand-in)
            det: Loss = (class_mean_term(means, scales) if self.detector_loss == "l2"
                         else ExtraTerm(exact_fn, needs_features=False, name="class-score"))
            score: Callable[[Tensor], Tensor] | None = ex.get("score") if self.detector_loss == "l2" else None
            opgd = OrthogonalPGD(det, eps=self.eps, steps=self.steps, restarts=self.restarts, score=score,
                                 grad_model=clf, targeted=True, success=accepted_by(defence), seed=self.seed)
            res = _refine(res, (f"orthogonal-pgd-targeted+{self.detector_loss}", opgd), defence, x, target,
                          lambda xa: judge(defence, xa, y, "classification"))
        out = _finish(res, defence, y, "classification", judge=judge)
        out.info["target"] = target
        return out


class EnsembleRecipe(Recipe):
    """Levy et al. 4.3: eq. 3 (one step, eps * mean of the members' gradient signs), then the same update
    iterated with restarts (strategies 3 and 4), and APGD on the averaged ensemble; best per image kept."""

    name = "ensemble-adaptive"
    strategies = ("wisdom of the crowd (eq. 3)", "incremental (APGD)", "restarts")

    def __init__(self, eps: float, steps: int = 20, restarts: int = 2, seed: int | None = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(eps, steps, restarts, seed, batch_size)

    def _compose(self, defence: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        ex = exposed(defence)
        members = list(_need(ex, "members", defence, "Ensemble"))
        task = task_of(defence, x, y)
        attacks: list[tuple[str, Attack]] = [
            ("eq3-fgsm-sign-average", sign_average(members, self.eps, steps=1, seed=self.seed)),
            ("eq3-iterated", sign_average(members, self.eps, steps=self.steps, restarts=self.restarts,
                                          seed=self.seed)),
            # strategy 3 on the averaged ensemble itself (white box): APGD's step-size schedule
            ("apgd-ce-ensemble", APGD(eps=self.eps, steps=self.steps, restarts=self.restarts, seed=self.seed)),
        ]
        res = BestOf(attacks, task=task).run(defence, x, y)
        return _finish(res, defence, y, task)


SurrogateFactory = Callable[[int], nn.Module]


class DenoiserRecipe(Recipe):
    """Levy et al. 4.4 (limited knowledge): a small ensemble of surrogates (trained by the caller on the
    attacker's own data, e.g. with other seeds: copies of the defence's architecture, and any other model the
    attacker owns), eq. 3 iterated with restarts on them, and, with transfer=True (default), the field's
    transfer-enhancing techniques (:mod:`medsec.attacks.transfer`): MI-DI-TI-FGSM and MI-DI-FGSM on the mean of
    the surrogates' logits, ``transfer_steps`` iterations (default: max(steps, 100); these attacks need many
    small steps). The most effective samples, judged on the surrogates only, are kept, then evaluated on the
    victim, which is never queried while crafting. transfer=False leaves those techniques out."""

    name = "denoiser-adaptive"
    strategies: tuple[str, ...] = ("wisdom of the crowd (surrogate ensemble)", "incremental", "restarts",
                                   "keep the most effective samples",
                                   "momentum, input diversity, translation invariance")

    def __init__(self, eps: float, surrogates: Sequence[nn.Module] | None = None,
                 surrogate_factory: SurrogateFactory | None = None, n_surrogates: int = 3, steps: int = 20,
                 restarts: int = 3, transfer: bool = True, transfer_steps: int | None = None,
                 seed: int | None = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(eps, steps, restarts, seed, batch_size)
        self.transfer = bool(transfer)
        self.transfer_steps = check_positive_int(transfer_steps if transfer_steps is not None else max(steps, 100),
                                                 "transfer_steps")
        if not self.transfer:
            self.strategies = self.strategies[:-1]
        if not surrogates and surrogate_factory is None:
            raise MedsecError("the Denoiser recipe needs surrogate models or a surrogate_factory(seed) (limited "
                              "knowledge: the attacker trains its own copies of the architecture)")
        self.surrogates = list(surrogates or [])
        self.factory = surrogate_factory
        self.n_surrogates = check_positive_int(n_surrogates, "n_surrogates")

    def _models(self) -> list[nn.Module]:
        if not self.surrogates:
            assert self.factory is not None
            self.surrogates = [self.factory(1000 + i).eval() for i in range(self.n_surrogates)]
        return self.surrogates

    def _compose(self, defence: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        task = task_of(defence, x, y)
        models = self._models()
        extra: list[Attack] = []
        if self.transfer:
            ens = LogitEnsemble(models).eval()
            kw: dict[str, Any] = {"grad_model": ens, "seed": self.seed}
            extra = [transfer_attack(self.eps, self.transfer_steps, ti_size=ti_kernel_size(x.shape[-1]), **kw),
                     transfer_attack(self.eps, self.transfer_steps, **kw)]  # most transfer-enhanced first
        atk = SurrogateTransfer(models, self.eps, steps=self.steps, restarts=self.restarts, candidates=extra,
                                seed=self.seed)
        return _finish(atk.run(defence, x, y), defence, y, task)


class RBFRecipe(Recipe):
    """Levy et al. 4.5: patience and diversity — APGD (CE, and DLR with >= 3 classes; Dice for
    segmentation), PGD with many small steps and restarts, momentum; the best sample per image is kept."""

    name = "rbf-adaptive"
    strategies = ("incremental (many small steps, APGD)", "diversity (several attacks)", "restarts")

    def _compose(self, defence: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        task = task_of(defence, x, y)
        with torch.no_grad():
            k = int(defence(x[:1]).shape[1])
        attacks = patient_attacks(self.eps, task, steps=self.steps, restarts=self.restarts, num_classes=k,
                                  seed=self.seed)
        res = BestOf(attacks, task=task).run(defence, x, y)
        return _finish(res, defence, y, task)


class DetectorRecipe(Recipe):
    """Generic expanded-loss attack on any detector with a differentiable score: margin (capped), plus once
    misclassified lambda(t) * (-score(x) / scale), scale = the spread of the clean scores; APGD and PGD with
    restarts; with orthogonal=True (default) also orthogonal PGD (Bryniarski et al. 2022) on the score, the best
    sample per image picked with the detector's score breaking ties (orthogonal=False: the recipe as before).
    For multi-label victims the top clean finding is attacked."""

    name = "detector-adaptive"
    strategies: tuple[str, ...] = ("expand loss (detector score)", "incremental (APGD)", "restarts",
                  "orthogonal PGD (Bryniarski et al. 2022)")

    def __init__(self, eps: float, steps: int = 100, restarts: int = 2, lam: float = 1.0, kappa: float = 2.0,
                 orthogonal: bool = True, seed: int | None = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(eps, steps, restarts, seed, batch_size)
        self.lam, self.kappa = float(lam), float(kappa)
        self.orthogonal = bool(orthogonal)
        if not self.orthogonal:
            self.strategies = self.strategies[:-1]

    def _compose(self, defence: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        task = task_of(defence, x, y)
        spread = _score_scale(defence, x)
        loss: Loss = Selective(Margin(self.kappa), detector_term(defence, spread), ramp(0.1 * self.lam, self.lam))
        succ = accepted_by(defence) if is_detector(defence) else None
        kw: dict[str, Any] = {"loss": loss, "success": succ, "seed": self.seed}
        attacks: list[tuple[str, Attack]] = [
            ("apgd-margin+score", APGD(eps=self.eps, steps=self.steps, restarts=self.restarts, **kw)),
            ("pgd-margin+score", PGD(eps=self.eps, steps=self.steps, restarts=self.restarts, **kw)),
        ]
        if not self.orthogonal:
            res = BestOf(attacks, task=task).run(defence, x, y)
            return _finish(res, defence, y, task)
        finding = _top_finding(defence, x) if task == "multilabel" else None
        res = BestOf(attacks, objective=lambda xa, _y: evasion_quality(defence, xa, y, task, finding)).run(defence, x, y)
        res = _refine(res, _orthogonal(defence, spread, None, self, {"success": succ, "seed": self.seed}), defence,
                      x, y, lambda xa: evasion_quality(defence, xa, y, task, finding))
        return _finish(res, defence, y, task, finding, evasion_quality)


def recipe_for(defence: nn.Module, eps: float, **options: Any) -> Recipe:
    """The adaptive recipe for a defence, matched on what each recipe actually reads: per-class ``gaussians``
    -> GMM; a feature Gaussian's ``mean`` and its ``classifier`` -> MGM; ``members`` -> Ensemble; the
    attacker's own surrogate models (limited knowledge: ``surrogates=`` or ``surrogate_factory=`` in the
    options) -> the surrogate-ensemble recipe (:class:`DenoiserRecipe`); any other detector with a
    differentiable ``score`` -> the generic expanded-loss attack; anything else -> patience and diversity
    (:class:`RBFRecipe`, which reads nothing but the defended model's outputs)."""
    ex = exposed(defence)
    if "gaussians" in ex:
        return GMMRecipe(eps, **options)
    if "mean" in ex and "classifier" in ex:
        return MGMRecipe(eps, **options)
    if "members" in ex:
        return EnsembleRecipe(eps, **options)
    if options.get("surrogates") or options.get("surrogate_factory") is not None:
        return DenoiserRecipe(eps, **options)
    if is_detector(defence) and callable(getattr(defence, "score", None)):
        return DetectorRecipe(eps, **options)
    return RBFRecipe(eps, **options)
