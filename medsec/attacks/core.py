"""The pieces every attack shares: input checks, the model guard, task goals, speed switches, tracking.

An attack is built with its parameters and called on a model (see DESIGN.md):
``x_adv = Attack(...)(model, x, y)``; ``Attack.run`` returns an :class:`AttackResult` that also says,
per sample, whether the attack's goal was reached. Subclasses implement ``_attack(ctx)``.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from medsec.attacks.losses import Loss, LossInput, resolve_loss
from medsec.errors import MedsecError
from medsec.metrics.segmentation import dice_per_sample, seg_prediction
from medsec.models.inference import logits_and_features

Norm = Literal["linf", "l2"]
AttackTask = Literal["classification", "multilabel", "segmentation"]
SuccessFn = Callable[[Tensor, Tensor, Tensor], Tensor]
InputTransform = Callable[[Tensor, "torch.Generator | None"], Tensor]

NORMS = ("linf", "l2")
# segmentation: an untargeted attack has reached its goal on an image once its Dice is at most this (default)
DICE_SUCCESS = 0.1
_STATEFUL_IN_TRAIN = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.modules.instancenorm._InstanceNorm)


def check_norm(norm: str) -> Norm:
    """The norm name in canonical form ("linf" or "l2"); MedsecError for anything else."""
    n = str(norm).lower().replace("_", "").replace("-", "")
    n = {"inf": "linf", "linf": "linf", "l2": "l2", "2": "l2"}.get(n, n)
    if n not in NORMS:
        raise MedsecError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return n  # type: ignore[return-value]


def check_eps(eps: float | None, name: str = "eps", allow_none: bool = False) -> float | None:
    """A finite, non-negative budget in [0, 1] pixel units (L_inf) or pixel-L2 units."""
    if eps is None:
        if allow_none:
            return None
        raise MedsecError(f"{name} must be a number, got None")
    e = float(eps)
    if not math.isfinite(e) or e < 0:
        raise MedsecError(f"{name} must be a finite number >= 0, got {eps!r}")
    return e


def check_positive_int(v: int, name: str, minimum: int = 1) -> int:
    """An integer >= minimum (steps, restarts, ...)."""
    if isinstance(v, bool) or int(v) != v or int(v) < minimum:
        raise MedsecError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------------------------------------
# Threat-model geometry
# ----------------------------------------------------------------------------------------------------------

def _flat_norm(t: Tensor, norm: Norm) -> Tensor:
    f = t.flatten(1)
    return f.abs().amax(1) if norm == "linf" else f.norm(p=2, dim=1)


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm) -> Tensor:
    """Project x_adv onto {x' : ||x' - x|| <= eps} intersected with the [0, 1] box.

    L_inf: the exact projection. L2: rescale into the ball, then clip to the box (the box clip only
    shrinks the perturbation, so the result stays in both sets; this is the usual PGD-L2 projection).
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = _flat_norm(delta, "l2")
        factor = torch.clamp(eps / (n + 1e-12), max=1.0)
        delta = delta * _view(factor, delta)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: Tensor, eps: float, norm: Norm, gen: torch.Generator | None) -> Tensor:
    """A uniform random point of the threat ball around x (L_inf: uniform cube; L2: uniform ball),
    clipped to [0, 1]."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return (x + (2 * u - 1) * eps).clamp(0.0, 1.0)
    g = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    g = g / _view(_flat_norm(g, "l2") + 1e-12, g)
    d = x[0].numel()
    r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype).pow(1.0 / d) * eps
    return project(x + g * _view(r, g), x, eps, norm)


def normalise_grad(g: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent direction of unit size: sign for L_inf, g/||g||_2 for L2."""
    if norm == "linf":
        return g.sign()
    return g / _view(_flat_norm(g, "l2") + 1e-12, g)


# ----------------------------------------------------------------------------------------------------------
# Input checks, task inference, goals
# ----------------------------------------------------------------------------------------------------------

def check_images(x: Any, name: str = "x") -> Tensor:
    """Float (N, C, H, W) images in [0, 1] without NaN; MedsecError otherwise."""
    if not isinstance(x, Tensor):
        raise MedsecError(f"{name} must be a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise MedsecError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}")
    if x.ndim != 4:
        raise MedsecError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise MedsecError(f"{name} holds no images")
    if bool(torch.isnan(x).any()):
        raise MedsecError(f"{name} contains NaN values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise MedsecError(f"{name} must lie in [0, 1] (medsec's pixel contract), got values in [{lo:.4g}, {hi:.4g}]")
    return x


def infer_task(outputs: Tensor, y: Tensor, task: str | None = None) -> AttackTask:
    """Classification, multi-label or segmentation, from the model's output shape and the labels' shape;
    MedsecError when the labels do not fit the outputs."""
    n = outputs.shape[0]
    if not isinstance(y, Tensor):
        raise MedsecError(f"labels y must be a torch.Tensor, got {type(y).__name__}")
    if y.shape[0] != n:
        raise MedsecError(f"labels y hold {y.shape[0]} rows for {n} images")
    if bool(y.is_floating_point() and torch.isnan(y).any()):
        raise MedsecError("labels y contain NaN values")
    if outputs.ndim == 2:
        k = outputs.shape[1]
        if y.ndim == 1 and task in (None, "classification"):
            if y.is_floating_point() or y.dtype == torch.bool:
                raise MedsecError(f"class labels y must be integers, got dtype {y.dtype}")
            if int(y.min()) < 0 or int(y.max()) >= k:
                raise MedsecError(f"class labels y must lie in [0, {k}), got [{int(y.min())}, {int(y.max())}]")
            return "classification"
        if y.ndim == 2 and y.shape[1] == k and task in (None, "multilabel"):
            if bool(((y != 0) & (y != 1)).any()):
                raise MedsecError("multi-label targets y must be 0/1 findings")
            return "multilabel"
        raise MedsecError(
            f"labels y of shape {tuple(y.shape)} do not fit model outputs {tuple(outputs.shape)}: "
            f"expected ({n},) class indices or ({n}, {k}) findings"
        )
    if outputs.ndim == 4:
        k, h, w = outputs.shape[1:]
        if y.ndim != 3 or tuple(y.shape[1:]) != (h, w) or y.is_floating_point():
            raise MedsecError(
                f"segmentation labels y must be integer masks ({n}, {h}, {w}), got {tuple(y.shape)} {y.dtype}"
            )
        kk = max(k, 2)
        if int(y.min()) < 0 or int(y.max()) >= kk:
            raise MedsecError(f"mask labels must lie in [0, {kk}), got [{int(y.min())}, {int(y.max())}]")
        return "segmentation"
    raise MedsecError(f"model outputs must be (N, K) or (N, K, H, W) logits, got shape {tuple(outputs.shape)}")


@dataclass
class Goal:
    """What counts as success for one call: per task, targeted or not, which findings, Dice threshold."""

    task: AttackTask
    targeted: bool
    finding_mask: Tensor | None = None  # multilabel: (N, K) bool, the attacked findings
    dice_threshold: float = DICE_SUCCESS
    custom: SuccessFn | None = None

    def success(self, outputs: Tensor, x_adv: Tensor, y: Tensor, idx: Tensor | None = None) -> Tensor:
        """(N,) bool: the goal is reached for each sample (`idx` selects rows of the per-call state)."""
        reached = self._task_goal(outputs, y, idx)
        if self.custom is not None:  # an extra condition, e.g. "and the detector accepts it"
            reached = reached & self.custom(outputs, x_adv, y).bool().reshape(-1).to(reached.device)
        return reached

    def _task_goal(self, outputs: Tensor, y: Tensor, idx: Tensor | None) -> Tensor:
        if self.task == "classification":
            pred = outputs.argmax(1)
            return pred == y if self.targeted else pred != y
        if self.task == "multilabel":
            assert self.finding_mask is not None
            m = self.finding_mask if idx is None else self.finding_mask[idx]
            state = (outputs > 0).to(y.dtype)
            hit = (state == y) if self.targeted else (state != y)
            # every attacked finding must be flipped (untargeted) / set (targeted)
            return (hit | ~m).all(1)
        pred = seg_prediction(outputs)
        d = dice_per_sample(pred, y, outputs.shape[1])
        return d >= 1.0 - self.dice_threshold if self.targeted else d <= self.dice_threshold


# ----------------------------------------------------------------------------------------------------------
# Model guard and speed switches
# ----------------------------------------------------------------------------------------------------------

def _stateful_training_modules(model: nn.Module) -> list[str]:
    return [name or type(m).__name__ for name, m in model.named_modules()
            if m.training and isinstance(m, _STATEFUL_IN_TRAIN)]


@contextmanager
def guarded(models: Sequence[nn.Module], train_mode: str) -> Iterator[None]:
    """Run an attack without changing the models: their train/eval flags, parameters' requires_grad and
    .grad are restored afterwards. Parameters are frozen during the attack (input gradients only).

    train_mode: "raise" (default) refuses a model whose batch-norm/dropout layers are in train mode (an
    attack would update running statistics or be randomised: a silent wrong answer); "eval" switches
    such a model to eval mode for the attack and restores its mode afterwards.
    """
    if train_mode not in ("raise", "eval"):
        raise MedsecError(f"train_mode must be 'raise' or 'eval', got {train_mode!r}")
    modes: list[tuple[nn.Module, bool]] = []
    params: list[tuple[nn.Parameter, bool, Tensor | None]] = []
    seen: set[int] = set()
    for model in models:
        if not isinstance(model, nn.Module):
            raise MedsecError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        bad = _stateful_training_modules(model)
        if bad and train_mode == "raise":
            raise MedsecError(
                f"model is in train mode with batch-norm/dropout layers ({', '.join(bad[:3])}"
                f"{'...' if len(bad) > 3 else ''}): call model.eval() first, or pass train_mode='eval'"
            )
        for m in model.modules():
            if id(m) not in seen:
                seen.add(id(m))
                modes.append((m, m.training))
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append((p, p.requires_grad, p.grad))
    try:
        for m, _ in modes:
            if isinstance(m, _STATEFUL_IN_TRAIN):
                m.training = False
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, tr in modes:
            m.training = tr
        for p, rg, g in params:
            p.requires_grad_(rg)
            p.grad = g


_COMPILED: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Speed:
    """Speed switches that keep results honest.

    precision: "fp32" always; "bf16" autocast (CUDA only; gradients in bf16, every reported success and
    the returned best point re-checked in fp32); "auto" = bf16 on CUDA, fp32 on CPU.
    channels_last: hand CUDA convolutions NHWC inputs ("auto" = on for CUDA, off on CPU).
    compile: wrap the model's forward in torch.compile (cached per model; off by default).
    fuse_bn: run the gradient passes on a copy of the model with eval-mode batch norm folded into the
    preceding convolutions (torch.fx; the same function up to float rounding, checked on the batch when
    the copy is made; cached per model and rebuilt when its weights change; skipped for models fx cannot
    trace and for losses that need features). Reported success is measured on the original model.
    """

    precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    fuse_bn: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise MedsecError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.channels_last not in ("auto", True, False):
            raise MedsecError(f"channels_last must be 'auto', True or False, got {self.channels_last!r}")

    def bf16(self, device: torch.device) -> bool:
        """Whether the attack's gradient passes run under bf16 autocast on this device."""
        if device.type != "cuda":
            return False
        return self.precision in ("auto", "bf16")

    def nhwc(self, device: torch.device) -> bool:
        """Whether inputs are handed over channels_last."""
        return device.type == "cuda" and self.channels_last in ("auto", True)


def _compiled(model: nn.Module) -> Any:
    fn = _COMPILED.get(model)
    if fn is None:
        fn = torch.compile(model)
        _COMPILED[model] = fn
    return fn


_FUSED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], nn.Module | None]] = weakref.WeakKeyDictionary()


def _weights_key(model: nn.Module) -> tuple[Any, ...]:
    """Changes whenever a parameter or buffer of `model` is modified or replaced."""
    return tuple((t.data_ptr(), t._version) for t in [*model.parameters(), *model.buffers()])


def fused_model(model: nn.Module, probe: Tensor) -> nn.Module | None:
    """A copy of `model` with eval-mode batch norm folded into convolutions, or None when that is not
    possible (training modules, no batch norm, fx cannot trace it, or the copy disagrees with the model
    on `probe` by more than 1e-4 of the logits' scale). Cached per model and weights version."""
    key = _weights_key(model)
    hit = _FUSED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    fused: nn.Module | None = None
    if (not any(m.training for m in model.modules())
            and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())):
        try:
            with warnings.catch_warnings():  # the module's imports warn about torch.jit deprecations
                warnings.simplefilter("ignore")
                from torch.fx.experimental.optimization import fuse

                cand = fuse(model)
            for p in cand.parameters():
                p.requires_grad_(False)
            with torch.no_grad():
                a, b = model(probe), cand(probe)
            if isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape:
                tol = 1e-4 * max(float(a.abs().max()), 1.0)
                if float((a - b).abs().max()) <= tol:
                    fused = cand
        except Exception:  # fx cannot trace every model: fall back to the model itself
            fused = None
    _FUSED[model] = (key, fused)
    return fused


# ----------------------------------------------------------------------------------------------------------
# Per-call context, best-point tracking, results
# ----------------------------------------------------------------------------------------------------------

@dataclass
class AttackResult:
    """What one attack call produced: x_adv, per-sample success (checked in fp32) and extra records."""

    x_adv: Tensor
    success: Tensor  # (N,) bool
    info: dict[str, Any] = field(default_factory=dict)
    checked: Tensor | None = None  # (N,) bool: success measured; None = all measured

    @property
    def success_rate(self) -> float:
        """Fraction of samples whose goal was reached."""
        return float(self.success.float().mean())


class AttackContext:
    """Everything one call needs: models, inputs, goal, loss, RNG and the forward helper."""

    def __init__(self, attack: Attack, model: nn.Module, grad_models: list[nn.Module], x: Tensor, y: Tensor,
                 gen: torch.Generator | None) -> None:
        self.attack = attack
        self.model = model
        self.grad_models = grad_models
        self.x = x
        self.y = y
        self.gen = gen
        self.speed = attack.speed
        self.device = x.device
        self.loss: Loss = attack.loss
        self.need_features = self.loss.needs_features
        self.input_transform = attack.input_transform
        # a transformed input's outputs do not say whether the point itself succeeds: check it separately
        self.separate_check = (not (len(grad_models) == 1 and grad_models[0] is model)
                               or self.input_transform is not None)
        self._clean_outputs: Tensor | None = None
        self._clean_success: Tensor | None = None
        self.fast: dict[int, nn.Module] = {}  # id(model) -> its batch-norm-folded copy
        if self.speed.fuse_bn and not self.need_features:
            probe = x[: min(16, x.shape[0])]
            for m in {id(m): m for m in [model, *grad_models]}.values():
                f = fused_model(m, probe)
                if f is not None:
                    self.fast[id(m)] = f
        self._task: AttackTask | None = None
        self._goal: Goal | None = None

    # -- lazily computed: the clean forward pass is only run by attacks that need it ----------------------
    def _init_task(self, outputs: Tensor) -> None:
        """Check the labels against the first outputs seen and set up the goal."""
        if self._task is not None:
            return
        task = infer_task(outputs, self.y, self.attack.task)
        mask = None
        if task == "multilabel":
            clean = outputs if self._clean_outputs is not None else self.clean_outputs
            mask = finding_mask(clean, self.attack.findings)
        self._task = task
        self._goal = Goal(task, self.attack.targeted, mask, self.attack.dice_threshold, self.attack.success_fn)

    @property
    def clean_outputs(self) -> Tensor:
        """The success model's fp32 outputs on the clean images (one forward pass, on first use)."""
        if self._clean_outputs is None:
            with torch.no_grad():
                self._clean_outputs, _ = self.forward(self.model, self.x, features=False, exact=True)
            self._init_task(self._clean_outputs)
        return self._clean_outputs

    @property
    def task(self) -> AttackTask:
        """classification, multilabel or segmentation (inferred from outputs and labels)."""
        if self._task is None:
            self._init_task(self.clean_outputs)
        assert self._task is not None
        return self._task

    @property
    def goal(self) -> Goal:
        """What counts as success in this call."""
        if self._goal is None:
            self._init_task(self.clean_outputs)
        assert self._goal is not None
        return self._goal

    @property
    def clean_success(self) -> Tensor:
        """(N,) bool: the goal already holds on the clean images."""
        if self._clean_success is None:
            self._clean_success = self.goal.success(self.clean_outputs, self.x, self.y)
        return self._clean_success

    # -- forward passes ------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, x: Tensor, features: bool, exact: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        """Logits (fp32) and, when asked, features in one pass (model.forward_features when it exists).
        exact=True forces fp32 (used for success checks that get reported)."""
        bf16 = (not exact) and self.speed.bf16(x.device)
        if self.speed.nhwc(x.device):
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
        feats: Tensor | None = None
        with ctx:
            if features:
                out, feats = logits_and_features(model, x)
            else:
                net = model if exact else self.fast.get(id(model), model)
                fwd = _compiled(net) if self.speed.compile else net
                out = fwd(x)
        if not isinstance(out, Tensor):
            raise MedsecError(f"model must return a logits tensor, got {type(out).__name__}")
        out = out.float()
        if feats is not None:
            feats = feats.float()
        return out, feats

    def loss_input(self, outputs: Tensor, features: Tensor | None, x_adv: Tensor, idx: Tensor | None,
                   step: int, steps: int) -> LossInput:
        """The loss's view of one evaluation (rows `idx` of this call)."""
        y = self.y if idx is None else self.y[idx]
        fm = self.goal.finding_mask
        if fm is not None and idx is not None:
            fm = fm[idx]
        return LossInput(outputs=outputs, y=y, targeted=self.attack.targeted, task=self.task,
                         features=features, x_adv=x_adv, finding_mask=fm, step=step, steps=steps)

    def loss_and_grad(self, x_adv: Tensor, idx: Tensor | None, step: int, steps: int,
                      ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Per-member input gradients of the attack loss, the (N,) loss (mean over members) and the
        (N,) success of x_adv (on the success model)."""
        grads: list[Tensor] = []
        total: Tensor | None = None
        out_first: Tensor | None = None
        for m in self.grad_models:
            xa = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                xin = xa if self.input_transform is None else self.input_transform(xa, self.gen)
                out, feats = self.forward(m, xin, self.need_features)
                self._init_task(out)
                lval = self.loss(self.loss_input(out, feats, xa, idx, step, steps))
                if lval.shape != (xa.shape[0],):
                    raise MedsecError(f"attack loss must be per-sample (N,), got shape {tuple(lval.shape)}")
                (g,) = torch.autograd.grad(lval.sum(), xa)
            grads.append(g)
            total = lval.detach() if total is None else total + lval.detach()
            if out_first is None:
                out_first = out.detach()
        assert total is not None and out_first is not None
        total = total / len(self.grad_models)
        y = self.y if idx is None else self.y[idx]
        if self.separate_check:
            with torch.no_grad():
                out_first, _ = self.forward(self.model, x_adv, False)
        succ = self.goal.success(out_first, x_adv, y, idx)
        return grads, total, succ

    @torch.no_grad()
    def evaluate(self, x_adv: Tensor, idx: Tensor | None, step: int, steps: int, exact: bool = False
                 ) -> tuple[Tensor, Tensor]:
        """(N,) attack loss (mean over gradient members) and (N,) success of x_adv without gradients."""
        total: Tensor | None = None
        for m in self.grad_models:
            out, feats = self.forward(m, x_adv, self.need_features, exact=exact)
            self._init_task(out)
            lval = self.loss(self.loss_input(out, feats, x_adv, idx, step, steps)).detach()
            total = lval if total is None else total + lval
        assert total is not None
        y = self.y if idx is None else self.y[idx]
        if self.separate_check or exact:
            out, _ = self.forward(self.model, x_adv, False, exact=exact)
        succ = self.goal.success(out, x_adv, y, idx)
        return total / len(self.grad_models), succ

    @torch.no_grad()
    def verify(self, x_adv: Tensor, idx: Tensor | None = None) -> Tensor:
        """(N,) success of the given points (rows `idx`), in fp32 on the success model."""
        out, _ = self.forward(self.model, x_adv, False, exact=True)
        self._init_task(out)
        return self.goal.success(out, x_adv, self.y if idx is None else self.y[idx], idx)


def finding_mask(clean_outputs: Tensor, findings: str | int | Sequence[int]) -> Tensor:
    """(N, K) bool: which findings a multi-label attack goes after.

    "top": the finding with the highest clean logit per image (Li & Zhu 2020: "the class with the highest
    predicted probability"); "all": every finding; an int or list of ints: those finding indices.
    """
    n, k = clean_outputs.shape
    m = torch.zeros(n, k, dtype=torch.bool, device=clean_outputs.device)
    if findings == "top":
        m[torch.arange(n, device=m.device), clean_outputs.argmax(1)] = True
    elif findings == "all":
        m[:] = True
    else:
        raw: list[Any] = [findings] if isinstance(findings, int) else list(findings)
        if not raw or any((not isinstance(i, int)) or i < 0 or i >= k for i in raw):
            raise MedsecError(f"findings must be 'top', 'all' or finding indices in [0, {k}), got {findings!r}")
        ids: list[int] = [int(i) for i in raw]
        m[:, ids] = True
    return m


class Tracker:
    """Per-sample best point so far: a successful point beats an unsuccessful one; among equals, the
    higher attack loss wins. `checked` says whether the success flag of the kept point was measured
    (a last iterate handed over by take_last() is not, until Attack.run verifies it)."""

    def __init__(self, x: Tensor, clean_success: Tensor | None = None) -> None:
        n = x.shape[0]
        self.x_best = x.detach().clone()
        if clean_success is None:
            self.success = torch.zeros(n, dtype=torch.bool, device=x.device)
            self.checked = torch.zeros(n, dtype=torch.bool, device=x.device)
        else:
            self.success = clean_success.clone()
            self.checked = torch.ones(n, dtype=torch.bool, device=x.device)
        self.loss = torch.full((n,), -math.inf, device=x.device)

    def update(self, x_cand: Tensor, loss: Tensor, succ: Tensor, idx: Tensor | None = None) -> None:
        """Offer evaluated candidate points for rows `idx` (all rows when None)."""
        bs = self.success if idx is None else self.success[idx]
        bl = self.loss if idx is None else self.loss[idx]
        better = (succ & ~bs) | ((succ == bs) & (loss > bl))
        if not bool(better.any()):
            return
        rows = better.nonzero().squeeze(1) if idx is None else idx[better]
        self.x_best[rows] = x_cand[better].detach().to(self.x_best.dtype)
        self.success[rows] = succ[better]
        self.loss[rows] = loss[better].float()
        self.checked[rows] = True

    def take_last(self, x_last: Tensor, idx: Tensor | None = None) -> None:
        """Rows not yet successful keep the unevaluated last iterate (as plain PGD returns it), which
        saves the forward pass that evaluating it would cost; Attack.run checks them afterwards."""
        bs = self.success if idx is None else self.success[idx]
        take = ~bs
        if not bool(take.any()):
            return
        rows = take.nonzero().squeeze(1) if idx is None else idx[take]
        self.x_best[rows] = x_last[take].detach().to(self.x_best.dtype)
        self.checked[rows] = False

    def result(self, info: dict[str, Any] | None = None) -> AttackResult:
        """The kept points as an AttackResult (unchecked rows are verified by Attack.run)."""
        return AttackResult(self.x_best, self.success.clone(), info or {}, checked=self.checked.clone())


# ----------------------------------------------------------------------------------------------------------
# The base class
# ----------------------------------------------------------------------------------------------------------

class Attack:
    """Base of every attack: `attack(model, x, y) -> x_adv`, `attack.run(model, x, y) -> AttackResult`.

    Shared keyword options:
      targeted: y holds the targets (classes, finding states, or a mask) instead of the true labels.
      loss: "ce" (task default: CE / BCE / pixel CE), "margin", "dlr", "dice", or a Loss object;
        extra: a Loss (e.g. ExtraTerm) added to it — how defence-aware attacks are built.
      findings: multi-label only — "top" (Li & Zhu), "all", or finding indices.
      dice_threshold: segmentation success — Dice <= t (untargeted) or Dice >= 1 - t (targeted).
      success: an extra success condition `fn(outputs, x_adv, y) -> (N,) bool` on top of the task's goal
        (e.g. :func:`medsec.attacks.adaptive.accepted_by`: the detector lets x_adv through).
      grad_model: model (or list of models) whose gradients drive the attack; success is judged on the
        model passed at call time (BPDA, surrogate/ensemble gradients).
      seed: seed of the attack's own generator (the global RNG is left alone); None = nondeterministic.
      input_transform: `fn(x_adv, generator) -> images` applied (differentiably) before each gradient pass,
        e.g. :class:`medsec.attacks.transfer.InputDiversity` (Xie et al.); success is judged on x_adv itself.
      precision / channels_last / compile / fuse_bn: see Speed. train_mode: see guarded().
      batch_size: attack in chunks of this many images (None = all at once).
    """

    name = "attack"
    norm: Norm = "linf"
    eps: float | None = None

    def __init__(self, *, targeted: bool = False, loss: str | Loss = "ce", extra: Loss | None = None,
                 findings: str | int | Sequence[int] = "top", dice_threshold: float = DICE_SUCCESS,
                 success: SuccessFn | None = None, task: AttackTask | None = None,
                 grad_model: nn.Module | Sequence[nn.Module] | None = None, seed: int | None = 0,
                 input_transform: InputTransform | None = None, precision: str = "auto",
                 channels_last: bool | str = "auto", compile: bool = False,
                 fuse_bn: bool = True, train_mode: str = "raise", batch_size: int | None = None) -> None:
        self.targeted = bool(targeted)
        self.loss = resolve_loss(loss)
        if extra is not None:
            if not isinstance(extra, Loss):
                raise MedsecError(f"extra must be a medsec.attacks.Loss (e.g. ExtraTerm), got {type(extra).__name__}")
            self.loss = self.loss + extra
        self.findings = findings
        if not 0.0 <= float(dice_threshold) < 1.0:
            raise MedsecError(f"dice_threshold must be in [0, 1), got {dice_threshold}")
        self.dice_threshold = float(dice_threshold)
        self.success_fn = success
        if task not in (None, "classification", "multilabel", "segmentation"):
            raise MedsecError(f"task must be classification, multilabel or segmentation, got {task!r}")
        self.task = task
        self.grad_model = grad_model
        self.seed = seed
        if input_transform is not None and not callable(input_transform):
            raise MedsecError("input_transform must be a callable (x, generator) -> images, got "
                              f"{type(input_transform).__name__}")
        self.input_transform = input_transform
        self.speed = Speed(precision, channels_last, compile, bool(fuse_bn))
        if train_mode not in ("raise", "eval"):
            raise MedsecError(f"train_mode must be 'raise' or 'eval', got {train_mode!r}")
        self.train_mode = train_mode
        if batch_size is not None:
            check_positive_int(batch_size, "batch_size")
        self.batch_size = batch_size

    # -- public API ----------------------------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The adversarial images (x's shape and dtype, in [0, 1], inside the threat ball).

        Skips the final success check that run() makes, so it costs no forward pass beyond the attack's."""
        return self.run(model, x, y, verify=False).x_adv

    def run(self, model: nn.Module, x: Tensor, y: Tensor, verify: bool = True) -> AttackResult:
        """Attack and report per-sample success (measured in fp32 on `model`; verify=False leaves the
        success of unevaluated last iterates as False and skips the bf16 re-check). Every attack runs through
        here: inputs checked, the models guarded (see guarded()), the result inside the box and the ball."""
        x, y = self._inputs(model, x, y)
        with guarded([model, *self._grad_models(model)], self.train_mode):
            return self._run(model, x, y, verify)

    def _inputs(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The checked images and the labels on their device (integer ids as long)."""
        if not isinstance(model, nn.Module):
            raise MedsecError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        x = check_images(x)
        if not isinstance(y, Tensor):
            raise MedsecError(f"labels y must be a torch.Tensor, got {type(y).__name__}")
        if y.shape[0] != x.shape[0]:
            raise MedsecError(f"labels y hold {y.shape[0]} rows for {x.shape[0]} images")
        y = y.to(x.device)
        if not (y.is_floating_point() or y.dtype == torch.bool or y.dtype == torch.long):
            y = y.long()  # int32/uint8 class ids or masks
        return x, y

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, verify: bool) -> AttackResult:
        """The engine's path: per batch, one AttackContext and `_attack(ctx)`, then the contract on the way out."""
        gms = self._grad_models(model)
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=x.device)
            gen.manual_seed(int(self.seed))
        work = _param_dtype(model, x.dtype)
        bs = self.batch_size or x.shape[0]
        parts: list[AttackResult] = []
        for s in range(0, x.shape[0], bs):
            xb = x[s:s + bs].detach()
            ctx = AttackContext(self, model, gms, xb.to(work), y[s:s + bs], gen)
            parts.append(self._finish(ctx, self._attack(ctx), verify))
        return _concat(parts, x.dtype)

    # -- for subclasses ------------------------------------------------------------------------------------
    def _attack(self, ctx: AttackContext) -> AttackResult:
        raise NotImplementedError

    def _grad_models(self, model: nn.Module) -> list[nn.Module]:
        gm = self.grad_model
        if gm is None:
            return [model]
        if isinstance(gm, nn.Module) and not isinstance(gm, nn.ModuleList):
            return [gm]
        gms = list(gm)
        if not gms or not all(isinstance(m, nn.Module) for m in gms):
            raise MedsecError("grad_model must be an nn.Module or a non-empty list of nn.Modules")
        return gms

    def _finish(self, ctx: AttackContext, res: AttackResult, verify: bool = True) -> AttackResult:
        """Enforce the contract on the way out (box and ball, guarding against float round-off) and
        measure success where it was not measured in fp32: unevaluated last iterates, projected points,
        and every point when the gradient passes ran in reduced precision."""
        x_adv = res.x_adv.detach()
        changed = bool((x_adv < 0).any() or (x_adv > 1).any())
        x_adv = x_adv.clamp(0.0, 1.0)
        if self.eps is not None:
            size = _flat_norm(x_adv - ctx.x, self.norm)
            if bool((size > self.eps * (1 + 1e-6) + 1e-7).any()):
                x_adv = project(x_adv, ctx.x, self.eps, self.norm)
                changed = True
        succ = res.success
        if verify:
            if changed or self.speed.bf16(ctx.device) or ctx.fast:
                succ = ctx.verify(x_adv)
            elif res.checked is not None and not bool(res.checked.all()):
                rows = (~res.checked).nonzero().squeeze(1)
                succ = succ.clone()
                succ[rows] = ctx.verify(x_adv[rows], rows)
        return AttackResult(x_adv, succ, res.info)

    def __repr__(self) -> str:
        keys = ("eps", "alpha", "steps", "norm", "restarts", "targeted")
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys if hasattr(self, k))
        return f"{type(self).__name__}({args})"


class CompositeAttack(Attack):
    """An attack made of other attacks or of its own search (BestOf, SurrogateTransfer, Cascade, the adaptive
    recipes, the survey attacks): the same contract as the engine's attacks — ``attack(model, x, y) -> x_adv``,
    ``run(model, x, y) -> AttackResult``, inputs checked, models guarded — with ``_compose(model, x, y)`` in
    place of the engine's per-step ``_attack(ctx)``. The result is clipped to [0, 1] and, when the attack has
    a budget, projected into its ball (a no-op for the attacks that already keep to it)."""

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, verify: bool) -> AttackResult:
        """``_compose`` on chunks of ``batch_size`` images (all at once when None): the composed attacks keep
        their graphs for one chunk at a time, so 1000 images at 224 px fit a GPU."""
        bs = self.batch_size or x.shape[0]
        parts: list[AttackResult] = []
        for s in range(0, x.shape[0], bs):
            xb = x[s:s + bs]
            res = self._compose(model, xb, y[s:s + bs])
            x_adv = res.x_adv.detach().clamp(0.0, 1.0)
            if self.eps is not None and bool((_flat_norm(x_adv - xb, self.norm) > self.eps * (1 + 1e-6) + 1e-7).any()):
                x_adv = project(x_adv, xb, self.eps, self.norm)
            parts.append(AttackResult(x_adv, res.success, res.info))
        return parts[0] if len(parts) == 1 else _concat(parts, x.dtype)

    def _compose(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        raise NotImplementedError


def check_class_labels(x: Tensor, y: Tensor) -> None:
    """Class labels (N,) of integers for images x; MedsecError otherwise (attacks that need classifiers)."""
    if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point():
        raise MedsecError("labels y must be an integer tensor (N,) of class indices (this attack attacks "
                          "classifiers)")
    if y.shape[0] != x.shape[0]:
        raise MedsecError(f"labels y hold {y.shape[0]} rows for {x.shape[0]} images")


def check_batch(x: object, y: object | None = None, name: str = "x") -> Tensor:
    """Float (N, C, H, W) images in [0, 1] (and, if given, one class label per image); MedsecError otherwise."""
    xt = check_images(x, name)
    if y is not None:
        check_class_labels(xt, y)  # type: ignore[arg-type]
    return xt


def attack_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with `seed` (nondeterministic when None); the global RNG is left alone."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _param_dtype(model: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype attacks compute in: the model's floating parameters' (x is converted back at the end)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def _concat(parts: list[AttackResult], dtype: torch.dtype) -> AttackResult:
    if len(parts) == 1:
        p = parts[0]
        return AttackResult(p.x_adv.to(dtype), p.success, p.info)
    info: dict[str, Any] = {}

    def per_sample(k: str) -> bool:  # one entry per image of every chunk (not, e.g., a list of attack names)
        return all(isinstance(p.info.get(k), Tensor | list)
                   and not (isinstance(p.info[k], Tensor) and p.info[k].ndim == 0)
                   and len(p.info[k]) == p.x_adv.shape[0] for p in parts)

    for k, v in parts[0].info.items():
        if isinstance(v, Tensor) and v.ndim >= 1 and per_sample(k):
            info[k] = torch.cat([p.info[k] for p in parts])
        elif isinstance(v, list) and per_sample(k):
            info[k] = [e for p in parts for e in p.info[k]]
        else:
            info[k] = v
    return AttackResult(torch.cat([p.x_adv for p in parts]).to(dtype), torch.cat([p.success for p in parts]), info)
