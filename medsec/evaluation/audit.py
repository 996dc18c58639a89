"""``medsec audit path/to/defence.py:ClassName``: attack your own defence (Levy et al.'s advice).

The user's defence follows the protocol of ``medsec.defences.base`` (an ``nn.Module`` with ``fit(data)`` and
``predict(x) -> logits``; detectors add ``score(x)`` and ``detect(x)``; ``exposed()`` optionally lists the
differentiable parts). It is built for a dataset's victim — ``ClassName.from_victim(victim)`` when it has
that classmethod, else ``ClassName(victim.model)``, else ``ClassName()`` — fitted on clean training data,
and put through a cascade, every stage at the same eps on the same test images:

1. original attacks: FGSM and PGD on the defended model (``predict``);
2. expanded loss: the adaptive recipe for what the defence exposes (``medsec.attacks.adaptive.recipe_for``);
3. BPDA: PGD whose gradients come from the exposed classifier (or the plain victim) while the defence judges
   the result — the forward pass through the defence, the backward pass around its non-differentiable part;
4. restarts: PGD with 5 random restarts, best per sample;
5. transfer: PGD crafted on the plain victim (a surrogate) and transferred.

Gradient-masking checks in the spirit of AutoAttack's: zero or non-finite input gradients, exploding
gradients, randomised outputs (predict twice, compare), a black-box/transfer/BPDA attack beating the
white-box attacks, and an unbounded sanity check (eps = 0.5 must break almost everything).
Verdict: "broken" when the best attack brings the handled rate below half of the clean rate; "holds at this
budget" otherwise (never a proof of robustness); masking findings are listed either way as evidence.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsec.attacks import FGSM, PGD
from medsec.attacks.adaptive import exposed, is_detector, recipe_for
from medsec.attacks.adaptive.recipes import RBFRecipe
from medsec.config import ExperimentConfig
from medsec.errors import MedsecError
from medsec.evaluation.reproduce import handled_scores
from medsec.paths import ensure_writable_dir, write_text_atomic
from medsec.report.document import Report, markdown_table

BROKEN_FRACTION = 0.5  # broken when the best attack leaves < this fraction of the clean handled rate
TRANSFER_MARGIN = 5.0  # points by which a black-box/transfer/BPDA attack must beat white-box to flag masking


@dataclass
class AuditResult:
    """The audit's verdict, the per-attack handled rates (percent) and the masking evidence."""

    defence: str
    eps: float
    n: int
    clean: float
    attacks: dict[str, float] = field(default_factory=dict)
    masking: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    best_attack: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------------------------
# loading the user's defence
# ----------------------------------------------------------------------------------------------------------

def load_defence_class(target: str) -> type:
    """The class named by ``path/to/file.py:ClassName``; MedsecError naming what is wrong otherwise."""
    if ":" not in target:
        raise MedsecError(f"defence {target!r}: expected path/to/defence.py:ClassName")
    path_s, _, name = target.rpartition(":")
    path = Path(path_s)
    if path.suffix != ".py":
        raise MedsecError(f"defence file {path} must be a Python file (.py)")
    if not path.is_file():
        raise MedsecError(f"defence file {path} does not exist")
    mod_name = f"medsec_user_defence_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise MedsecError(f"defence file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise MedsecError(f"defence file {path} failed to import: {type(e).__name__}: {e}") from e
    cls = getattr(module, name, None)
    if cls is None or not inspect.isclass(cls):
        found = [n for n, v in vars(module).items() if inspect.isclass(v) and v.__module__ == mod_name]
        raise MedsecError(f"defence file {path} has no class {name!r}; classes defined there: "
                          f"{', '.join(found) or 'none'}")
    check_protocol_class(cls, target)
    return cls  # type: ignore[no-any-return]


def check_protocol_class(cls: type, where: str) -> None:
    """The class must be an nn.Module with fit(data) and predict(x); a detector needs score and detect."""
    problems = []
    if not issubclass(cls, nn.Module):
        problems.append("it is not a torch.nn.Module subclass")
    for meth in ("fit", "predict"):
        if not callable(getattr(cls, meth, None)):
            problems.append(f"it has no {meth}() method")
    if getattr(cls, "is_detector", False):
        for meth in ("score", "detect"):
            if not callable(getattr(cls, meth, None)):
                problems.append(f"it says is_detector = True but has no {meth}() method")
    if problems:
        raise MedsecError(f"{where} does not follow the defence protocol (medsec.defences.base): "
                          + "; ".join(problems))


def build_user_defence(cls: type, victim: Any, cfg: ExperimentConfig) -> nn.Module:
    """Construct and fit the user's defence for `victim` (see the module docstring for the constructor order)."""
    try:
        if callable(getattr(cls, "from_victim", None)):
            d = cls.from_victim(victim)  # type: ignore[attr-defined]
        else:
            try:
                d = cls(victim.model)
            except TypeError:
                d = cls()
    except MedsecError:
        raise
    except Exception as e:
        raise MedsecError(f"could not construct {cls.__name__} for the victim: {type(e).__name__}: {e}") from e
    try:
        fitted = d.fit(victim.data)
    except MedsecError:
        raise
    except Exception as e:
        raise MedsecError(f"{cls.__name__}.fit(data) failed: {type(e).__name__}: {e}") from e
    d = fitted if isinstance(fitted, nn.Module) else d
    return d.eval()


def check_outputs(defence: nn.Module, x: Tensor, num_outputs: int) -> None:
    """predict must return (N, K) logits for images; MedsecError otherwise."""
    try:
        with torch.no_grad():
            z = defence(x[:2])
    except Exception as e:
        raise MedsecError(f"{type(defence).__name__}.predict(x) failed on test images: {type(e).__name__}: {e}") from e
    if not isinstance(z, Tensor) or z.ndim < 2 or z.shape[0] != min(2, x.shape[0]) or z.shape[1] != num_outputs:
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise MedsecError(f"{type(defence).__name__}.predict(x) must return (N, {num_outputs}) logits, got {got}")


# ----------------------------------------------------------------------------------------------------------
# masking checks
# ----------------------------------------------------------------------------------------------------------

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


@torch.no_grad()
def randomness_check(model: nn.Module, x: Tensor) -> float:
    """Largest absolute difference between two predictions of the same inputs (0 for a deterministic model)."""
    return float((model(x).float() - model(x).float()).abs().max())


# ----------------------------------------------------------------------------------------------------------
# the audit
# ----------------------------------------------------------------------------------------------------------

def audit_defence(defence: nn.Module, victim: Any, eps: float, n: int = 64, steps: int = 50, seed: int = 0,
                  name: str | None = None) -> AuditResult:
    """Run the cascade and the masking checks against a fitted defence protecting `victim` (see module doc)."""
    if not (0.0 <= float(eps) <= 1.0):
        raise MedsecError(f"eps must lie in [0, 1] (L_inf, [0, 1] pixel units), got {eps}")
    if n < 2:
        raise MedsecError(f"the audit needs at least 2 test images, got n={n}")
    t0 = time.perf_counter()
    data = victim.data
    task = data.info.task
    if task == "segmentation":
        raise MedsecError("the audit handles classification defences (segmentation: use medsec reproduce)")
    k = min(n, len(data.test))
    device = next((p.device for p in defence.parameters()), torch.device("cpu"))
    x, y = data.test.images(slice(0, k)).to(device), data.test.target_tensor(slice(0, k)).to(device)
    check_outputs(defence, x, data.info.num_outputs)
    plain = victim.model.eval()
    det = defence if is_detector(defence) else None
    finding = plain(x).argmax(1).detach() if task == "multilabel" else None
    kw: dict[str, Any] = {"seed": seed, "train_mode": "eval"}
    if task == "multilabel":
        kw["findings"] = "top"

    def rate(xa: Tensor, adversarial: bool = True) -> float:
        return round(100 * float(np.mean(handled_scores(defence, xa, y, task, adversarial=adversarial,
                                                        finding=finding, detector=det))), 2)

    res = AuditResult(name or type(defence).__name__, float(eps), k, rate(x, adversarial=False))
    stages: dict[str, Any] = {}
    white: list[str] = []

    def attempt(label: str, fn: Any, is_white: bool) -> None:
        try:
            xa = fn()
        except (MedsecError, RuntimeError) as e:  # a stage that cannot run is evidence, not a crash
            res.checks[f"{label} (could not run)"] = f"{type(e).__name__}: {e}"
            if isinstance(e, RuntimeError) and "grad" in str(e):
                res.masking.append(f"'{label}' found no gradient at all through the defence")
            return
        stages[label] = rate(xa)
        if is_white:
            white.append(label)

    attempt("original: FGSM", lambda: FGSM(eps=eps, **kw)(defence, x, y), True)
    attempt("original: PGD", lambda: PGD(eps=eps, steps=steps, **kw)(defence, x, y), True)
    ex = exposed(defence)
    if "denoiser" in ex:
        rec: Any = RBFRecipe(eps, steps=steps, restarts=1, seed=seed)  # white-box: the denoiser is differentiable
    else:
        try:
            rec = recipe_for(defence, eps, steps=steps, restarts=1, seed=seed)
        except MedsecError:
            rec = RBFRecipe(eps, steps=steps, restarts=1, seed=seed)
    if task == "classification":
        attempt(f"expanded loss: {rec.name}", lambda: rec(defence, x, y), True)
    grad_source = ex.get("classifier") if isinstance(ex.get("classifier"), nn.Module) else plain
    if grad_source is defence:
        grad_source = plain
    attempt("BPDA (gradients of the classifier, judged on the defence)",
            lambda: PGD(eps=eps, steps=steps, grad_model=grad_source, **kw)(defence, x, y), False)
    attempt("restarts: PGD x5", lambda: PGD(eps=eps, steps=max(10, steps // 2), restarts=5, **kw)(defence, x, y),
            True)
    attempt("transfer from the plain victim (surrogate)",
            lambda: PGD(eps=eps, steps=steps, **kw)(plain, x, y), False)
    attempt("random noise (black-box baseline)",
            lambda: (x + eps * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
                                          .to(device))).clamp(0, 1), False)
    res.attacks = stages
    # masking checks
    g = gradient_check(defence, x, y, task)
    res.checks["gradients"] = g
    if g["zero"] > 0.5:
        res.masking.append(f"zero input gradients for {100 * g['zero']:.0f}% of the images (shattered/obfuscated "
                           "gradients: use BPDA)")
    if g["non_finite"] > 0:
        res.masking.append(f"non-finite input gradients for {100 * g['non_finite']:.0f}% of the images")
    if g["exploding"] > 0.1:
        res.masking.append(f"exploding input gradients for {100 * g['exploding']:.0f}% of the images")
    diff = randomness_check(defence, x)
    res.checks["prediction_randomness"] = diff
    if diff > 1e-4:
        res.masking.append(f"randomised outputs: two predictions of the same inputs differ by up to {diff:.3g} "
                           "(attack the expectation: EOT)")
    best_white = min((stages[s] for s in white), default=float("inf"))
    for s in stages:
        if s not in white and stages[s] < best_white - TRANSFER_MARGIN:  # BPDA, transfer, random noise
            res.masking.append(f"'{s}' ({stages[s]:.1f}%) beats every white-box attack ({best_white:.1f}%): the "
                               "white-box gradients are misleading")
    try:
        # unbounded sanity check: with eps = 0.5 a sound gradient attack (detector-aware when there is a
        # detector) must break almost everything
        big_eps = 0.5
        if det is not None:
            big = type(rec)(big_eps, steps=max(10, steps // 2), restarts=1, seed=seed)(defence, x, y)
        else:
            big = PGD(eps=big_eps, steps=max(10, steps // 2), **kw)(defence, x, y)
        unbounded = rate(big)
        res.checks["unbounded_attack_eps_0.5"] = unbounded
        if unbounded > 10 and unbounded > res.clean * 0.2:
            res.masking.append(f"an attack with eps = 0.5 still leaves {unbounded:.1f}% handled: the gradients do "
                               "not lead anywhere")
    except (MedsecError, RuntimeError) as e:
        res.checks["unbounded_attack_eps_0.5 (could not run)"] = f"{type(e).__name__}: {e}"
    if stages:
        res.best_attack = min(stages, key=lambda s: stages[s])
        best = stages[res.best_attack]
        if best < BROKEN_FRACTION * res.clean:
            res.verdict = "broken"
        else:
            res.verdict = "holds at this budget"
    else:
        res.verdict = "could not be attacked"
    res.seconds = round(time.perf_counter() - t0, 1)
    return res


def audit_report(res: AuditResult) -> Report:
    """The audit as a Markdown/HTML report."""
    rep = Report(f"medsec audit: {res.defence}")
    head = f"**Verdict: {res.verdict}**"
    if res.verdict == "broken":
        head += (f" — {res.best_attack!r} leaves {res.attacks[res.best_attack]:.1f}% of the attacked images handled "
                 f"(clean: {res.clean:.1f}%), at eps = {res.eps:g}.")
    elif res.verdict == "holds at this budget":
        head += (" — no attack in the cascade broke it at this eps. That is not a proof of robustness: try larger "
                 "budgets, more steps and attacks designed for this defence.")
    if res.masking:
        head += "\n\n**Gradient masking suspected:**\n\n" + "\n".join(f"- {m}" for m in res.masking)
    rep.add("Verdict", head)
    rep.add("Cascade", f"eps = {res.eps:g} (L_inf, [0,1] pixels), {res.n} test images. Handled = rejected by the "
            "detector or still correctly classified (clean: accepted and correct).\n\n"
            + markdown_table(["attack", "handled %"], [["clean (no attack)", res.clean],
                                                        *[[k, v] for k, v in res.attacks.items()]]))
    rep.add("Checks", "```json\n" + json.dumps(res.checks, indent=2, default=str) + "\n```")
    return rep


def run_audit(target: str, cfg: ExperimentConfig, dataset: str, eps: float, n: int, steps: int,
              out: str | Path | None = None) -> AuditResult:
    """Load (a file's class or a built-in defence name), fit, audit; write audit.json + report when `out`."""
    from medsec.defences.factory import DEFENCE_NAMES, get_defence
    from medsec.models.victims import get_victim

    if not (0.0 <= float(eps) <= 1.0):
        raise MedsecError(f"--eps must lie in [0, 1] (L_inf, [0, 1] pixel units), got {eps}")
    defence: nn.Module
    if ":" not in target and target in DEFENCE_NAMES:
        fd = get_defence(cfg, target, dataset)
        defence, victim, name = fd.defence.eval(), fd.victim, target
    else:
        cls = load_defence_class(target)
        victim = get_victim(cfg, dataset)
        defence, name = build_user_defence(cls, victim, cfg), cls.__name__
    res = audit_defence(defence, victim, eps, n=n, steps=steps, seed=cfg.seed, name=name)
    if out is not None:
        o = ensure_writable_dir(out)
        write_text_atomic(o / "audit.json", json.dumps(res.to_dict(), indent=2, default=str))
        audit_report(res).write(o)
    return res

