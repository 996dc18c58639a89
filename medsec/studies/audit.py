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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medsec.attacks import FGSM, PGD
from medsec.attacks.adaptive import RBFRecipe, recipe_for
from medsec.config import ExperimentConfig
from medsec.defences.base import exposed, is_detector
from medsec.errors import MedsecError
from medsec.metrics import percent
from medsec.models.victims import Victim, get_victim
from medsec.studies.audit_checks import (
    UNBOUNDED_EPS,
    gradient_check,
    gradient_findings,
    ordering_findings,
    randomness_check,
    randomness_findings,
    unbounded_findings,
)
from medsec.studies.common import StudyOutput, config_digest, handled_scores
from medsec.studies.grid import Cell, Executor, cell_key, digest, run_grid

BROKEN_FRACTION = 0.5  # broken when the best attack leaves < this fraction of the clean handled rate


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


def build_user_defence(cls: type, victim: Victim, cfg: ExperimentConfig) -> nn.Module:
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
# the cascade's stages, as data
# ----------------------------------------------------------------------------------------------------------

@dataclass
class AuditRun:
    """What every stage of one audit shares."""

    defence: nn.Module
    plain: nn.Module
    x: Tensor
    y: Tensor
    task: str
    eps: float
    steps: int
    seed: int
    kw: dict[str, Any]
    recipe: Any
    finding: Tensor | None

    @property
    def gradient_source(self) -> nn.Module:
        """The network BPDA takes gradients from: the exposed classifier, else the plain victim."""
        clf = exposed(self.defence).get("classifier")
        return clf if isinstance(clf, nn.Module) and clf is not self.defence else self.plain

    def rate(self, xa: Tensor, adversarial: bool = True) -> float:
        """Percent of inputs the defended system handles."""
        det = self.defence if is_detector(self.defence) else None
        return percent(handled_scores(self.defence, xa, self.y, self.task, adversarial=adversarial,
                                      finding=self.finding, detector=det))


@dataclass(frozen=True)
class Stage:
    """One attack of the cascade: its label, whether it is white-box, and how it makes x_adv."""

    label: str
    white_box: bool
    make: Callable[[AuditRun], Tensor]
    classification_only: bool = False


def _noise(r: AuditRun) -> Tensor:
    gen = torch.Generator().manual_seed(r.seed)
    return (r.x + r.eps * torch.sign(torch.randn(r.x.shape, generator=gen).to(r.x.device))).clamp(0, 1)


STAGES: tuple[Stage, ...] = (
    Stage("original: FGSM", True, lambda r: FGSM(eps=r.eps, **r.kw)(r.defence, r.x, r.y)),
    Stage("original: PGD", True, lambda r: PGD(eps=r.eps, steps=r.steps, **r.kw)(r.defence, r.x, r.y)),
    Stage("expanded loss: {recipe}", True, lambda r: r.recipe(r.defence, r.x, r.y), classification_only=True),
    Stage("BPDA (gradients of the classifier, judged on the defence)", False,
          lambda r: PGD(eps=r.eps, steps=r.steps, grad_model=r.gradient_source, **r.kw)(r.defence, r.x, r.y)),
    Stage("restarts: PGD x5", True,
          lambda r: PGD(eps=r.eps, steps=max(10, r.steps // 2), restarts=5, **r.kw)(r.defence, r.x, r.y)),
    Stage("transfer from the plain victim (surrogate)", False,
          lambda r: PGD(eps=r.eps, steps=r.steps, **r.kw)(r.plain, r.x, r.y)),
    Stage("random noise (black-box baseline)", False, _noise),
)


def run_stages(r: AuditRun, res: AuditResult) -> list[str]:
    """Run the cascade into res.attacks (handled %, by label); the white-box labels. A stage that cannot run is
    evidence, not a crash: it is recorded in res.checks (and as masking when it found no gradient)."""
    white = []
    for st in STAGES:
        if st.classification_only and r.task != "classification":
            continue
        label = st.label.format(recipe=r.recipe.name)
        try:
            xa = st.make(r)
        except (MedsecError, RuntimeError) as e:
            res.checks[f"{label} (could not run)"] = f"{type(e).__name__}: {e}"
            if isinstance(e, RuntimeError) and "grad" in str(e):
                res.masking.append(f"'{label}' found no gradient at all through the defence")
            continue
        res.attacks[label] = r.rate(xa)
        if st.white_box:
            white.append(label)
    return white


def masking_checks(r: AuditRun, res: AuditResult, white: list[str]) -> None:
    """The gradient-masking checks of medsec.studies.audit_checks, into res.checks and res.masking."""
    g = gradient_check(r.defence, r.x, r.y, r.task)
    res.checks["gradients"] = g
    res.masking += gradient_findings(g)
    diff = randomness_check(r.defence, r.x)
    res.checks["prediction_randomness"] = diff
    res.masking += randomness_findings(diff)
    res.masking += ordering_findings(res.attacks, white)
    try:  # detector-aware when there is a detector
        steps = max(10, r.steps // 2)
        if is_detector(r.defence):
            big = type(r.recipe)(UNBOUNDED_EPS, steps=steps, restarts=1, seed=r.seed)(r.defence, r.x, r.y)
        else:
            big = PGD(eps=UNBOUNDED_EPS, steps=steps, **r.kw)(r.defence, r.x, r.y)
        unbounded = r.rate(big)
        res.checks[f"unbounded_attack_eps_{UNBOUNDED_EPS}"] = unbounded
        res.masking += unbounded_findings(unbounded, res.clean)
    except (MedsecError, RuntimeError) as e:
        res.checks[f"unbounded_attack_eps_{UNBOUNDED_EPS} (could not run)"] = f"{type(e).__name__}: {e}"


def audit_setup(defence: nn.Module, victim: Victim, eps: float, n: int, steps: int, seed: int) -> AuditRun:
    """Check the inputs and the defence's outputs; the shared state of the audit's stages."""
    if not (0.0 <= float(eps) <= 1.0):
        raise MedsecError(f"eps must lie in [0, 1] (L_inf, [0, 1] pixel units), got {eps}")
    if n < 2:
        raise MedsecError(f"the audit needs at least 2 test images, got n={n}")
    data = victim.data
    task = data.info.task
    if task == "segmentation":
        raise MedsecError("the audit handles classification defences (segmentation: use medsec reproduce)")
    k = min(n, len(data.test))
    device = next((p.device for p in defence.parameters()), torch.device("cpu"))
    x, y = data.test.images(slice(0, k)).to(device), data.test.target_tensor(slice(0, k)).to(device)
    check_outputs(defence, x, data.info.num_outputs)
    plain = victim.model.eval()
    kw: dict[str, Any] = {"seed": seed, "train_mode": "eval"}
    if task == "multilabel":
        kw["findings"] = "top"
    try:  # the recipe for what the defence exposes; the patient white-box one when none applies
        rec: Any = recipe_for(defence, eps, steps=steps, restarts=1, seed=seed)
    except MedsecError:
        rec = RBFRecipe(eps, steps=steps, restarts=1, seed=seed)
    finding = plain(x).argmax(1).detach() if task == "multilabel" else None
    return AuditRun(defence, plain, x, y, task, float(eps), steps, seed, kw, rec, finding)


def audit_defence(defence: nn.Module, victim: Victim, eps: float, n: int = 64, steps: int = 50, seed: int = 0,
                  name: str | None = None) -> AuditResult:
    """Run the cascade and the masking checks against a fitted defence protecting `victim` (see module doc)."""
    t0 = time.perf_counter()
    r = audit_setup(defence, victim, eps, n, steps, seed)
    res = AuditResult(name or type(defence).__name__, r.eps, r.x.shape[0], r.rate(r.x, adversarial=False))
    white = run_stages(r, res)
    masking_checks(r, res, white)
    if res.attacks:
        res.best_attack = min(res.attacks, key=lambda s: res.attacks[s])
        res.verdict = "broken" if res.attacks[res.best_attack] < BROKEN_FRACTION * res.clean else \
            "holds at this budget"
    else:
        res.verdict = "could not be attacked"
    res.seconds = round(time.perf_counter() - t0, 1)
    return res


def audit_cell(target: str, cfg: ExperimentConfig, dataset: str, eps: float, n: int, steps: int) -> dict[str, Any]:
    """Cell: load (a file's class or a built-in defence name), fit, audit."""
    from medsec.defences.factory import DEFENCE_NAMES, get_defence

    defence: nn.Module
    if ":" not in target and target in DEFENCE_NAMES:
        fd = get_defence(cfg, target, dataset)
        defence, victim, name = fd.defence.eval(), fd.victim, target
    else:
        cls = load_defence_class(target)
        victim = get_victim(cfg, dataset)
        defence, name = build_user_defence(cls, victim, cfg), cls.__name__
    return audit_defence(defence, victim, eps, n=n, steps=steps, seed=cfg.seed, name=name).to_dict()


def run_audit(target: str, cfg: ExperimentConfig, dataset: str, eps: float, n: int, steps: int,
              out: str | Path, executor: Executor | None = None) -> AuditResult:
    """Audit `target` as one grid cell (a rerun with the same settings reuses it); writes results.json."""
    if not (0.0 <= float(eps) <= 1.0):
        raise MedsecError(f"--eps must lie in [0, 1] (L_inf, [0, 1] pixel units), got {eps}")
    if ":" in target:
        load_defence_class(target)  # a bad file or class is a clear error before anything trains
    o = StudyOutput.at(out)
    key = cell_key("audit", Path(target.rpartition(":")[0] or target).stem, target.rpartition(":")[2], dataset,
                   digest([target, config_digest(cfg), eps, n, steps]))
    done = run_grid([Cell(key, audit_cell, {"target": target, "cfg": cfg, "dataset": dataset, "eps": eps, "n": n,
                                            "steps": steps})], o.store, executor, title="audit")
    o.write_results(done[key])
    return AuditResult(**done[key])
