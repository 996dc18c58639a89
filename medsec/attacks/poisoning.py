"""Training-time attacks: a BadNets backdoor and clean-label feature-collision poisoning.

Both are used in two steps, because they act on the training data, not on a test image:

1. ``poisoned = attack.poison(...)`` returns a :class:`PoisonedData`: a copy of the dataset whose training
   split holds the poisons, and the indices of those poisons (the original dataset is not changed);
2. the victim is retrained on ``poisoned.dataset`` (:func:`retrain` from scratch with the victim's recipe,
   or :func:`retrain_head` for the transfer-learning setting, features frozen) and the result evaluated.

The test-time half has the usual call shape: ``BadNets(...)(model, x, y)`` stamps the trigger.

BadNets (Gu et al., 2019): a fixed pattern (a black/white checkerboard by default) stamped in a corner of
a fraction `rate` of the training images, whose labels become the attacker's class. Poisons are drawn
from images not already of that class (choice: relabelling images of the target class teaches nothing).
The validation split is poisoned at the same rate by default (the attacker supplies the development
data): otherwise early stopping on a clean validation split may keep an epoch before the backdoor is learnt.

Feature collision (Shafahi et al., NeurIPS 2018, "Poison frogs"): for a target test image t (true class
A) and base images b of the attacker's class B, craft p = argmin ||f(p) - f(t)||^2 + beta ||p - b||^2 by
forward-backward splitting (a gradient step on the feature term, then the closed-form proximal step
p = (p + lr beta b) / (1 + lr beta)); the poison keeps b's correct label B (clean label). Deviation
(documented choice): the forward step is normalised to an RMS pixel change of `lr`, so beta needs no
rescaling by feature and input sizes (Shafahi et al. scale it by D_feat^2 / D_in^2 for raw gradients),
and the poison is kept within an L_inf distance `eps` of its base so it still looks like the base
(the clean-label premise; later work such as Zhu et al. 2019 uses such a bound too). Optional
watermarking (opacity 0.3 in their end-to-end experiments) blends the target into the base first.
Success: the retrained model puts t in class B.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsec.attacks.core import AttackResult, CompositeAttack, check_batch, guarded
from medsec.data.base import MedicalDataset, Split
from medsec.errors import MedsecError
from medsec.models.inference import batched


@dataclass
class PoisonedData:
    """A poisoned copy of a dataset: its training split holds the poisons at `indices`."""

    dataset: MedicalDataset
    indices: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_poisons(self) -> int:
        """How many training images are poisons."""
        return len(self.indices)


def _check_classification(data: MedicalDataset) -> None:
    if data.info.task != "classification":
        raise MedsecError(f"poisoning attacks need a classification dataset; {data.info.name} is {data.info.task}")


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


# ------------------------------------------------------------------------------------------------------------
# BadNets
# ------------------------------------------------------------------------------------------------------------

class BadNets(CompositeAttack):
    """Backdoor by poisoning: stamp a trigger on `rate` of the training set and relabel to `target_class`.

    rate: poisoning rate p in [0, 1] (fraction of the whole training set). trigger_size: side of the
    square trigger, fraction of the image side (< 1) or pixels (>= 1). pattern: "checkerboard" (black and
    white squares) or "white". position: corner of the trigger ("bottom-right", "bottom-left", "top-right",
    "top-left"), one pixel from the border. poison_val: poison the validation split at the same rate
    too (default): the attacker supplies the development data and the victim splits it, so its
    early stopping sees poisoned validation images as well. seed: which images are poisoned.
    """

    name = "badnets"
    seed: int

    def __init__(self, rate: float = 0.05, target_class: int = 0, trigger_size: float = 0.1,
                 pattern: str = "checkerboard", position: str = "bottom-right", poison_val: bool = True,
                 seed: int = 0) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise MedsecError(f"BadNets: poisoning rate must be in [0, 1], got {rate!r}")
        if pattern not in ("checkerboard", "white"):
            raise MedsecError(f"BadNets: pattern must be 'checkerboard' or 'white', got {pattern!r}")
        if position not in ("bottom-right", "bottom-left", "top-right", "top-left"):
            raise MedsecError(f"BadNets: unknown trigger position {position!r}")
        if not trigger_size > 0:
            raise MedsecError(f"BadNets: trigger_size must be positive, got {trigger_size!r}")
        super().__init__(targeted=True, seed=seed, train_mode="eval")
        self.rate, self.target_class, self.trigger_size = float(rate), int(target_class), float(trigger_size)
        self.pattern, self.position, self.seed = pattern, position, int(seed)
        self.poison_val = bool(poison_val)

    def __repr__(self) -> str:
        return f"BadNets(rate={self.rate:g}, target_class={self.target_class})"

    def _side(self, h: int, w: int) -> int:
        side = max(2, round(self.trigger_size * min(h, w))) if self.trigger_size < 1 else int(self.trigger_size)
        if side + 1 > min(h, w):
            raise MedsecError(f"BadNets: a {side} px trigger does not fit a {h}x{w} image")
        return side

    def trigger_mask(self, c: int, h: int, w: int) -> tuple[Tensor, Tensor]:
        """(trigger values (C, H, W), bool mask (1, H, W)) for images of this shape."""
        s = self._side(h, w)
        r0 = 1 if self.position.startswith("top") else h - s - 1
        c0 = 1 if self.position.endswith("left") else w - s - 1
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        mask[:, r0:r0 + s, c0:c0 + s] = True
        vals = torch.zeros(c, h, w)
        if self.pattern == "white":
            vals[:, r0:r0 + s, c0:c0 + s] = 1.0
        else:
            cell = max(1, s // 3)
            rr, cc = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            vals[:, r0:r0 + s, c0:c0 + s] = (((rr // cell) + (cc // cell)) % 2).float()
        return vals, mask

    def stamp(self, x: Tensor) -> Tensor:
        """x with the trigger stamped (pixels outside the trigger untouched)."""
        x = check_batch(x)
        vals, mask = self.trigger_mask(*x.shape[1:])
        return torch.where(mask.to(x.device), vals.to(x.device, x.dtype), x)

    def _compose(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        """The test-time half of the attack: x with the trigger; success: the model predicts the target class."""
        x_adv = self.stamp(x)
        return AttackResult(x_adv, batched(model, x_adv).argmax(1) == self.target_class)

    def poison(self, data: MedicalDataset) -> PoisonedData:
        """A copy of `data` whose training split (and validation split, with poison_val) has
        round(rate * N) triggered images relabelled to the target class. `indices`: the training poisons."""
        _check_classification(data)
        k = data.info.num_outputs
        if not 0 <= self.target_class < k:
            raise MedsecError(f"BadNets: target_class must be in [0, {k}) for {data.info.name}, got {self.target_class}")
        train, idx = self._poison_split(data.train, "train", 0)
        val, vidx = self._poison_split(data.val, "val", 1) if self.poison_val else (data.val, np.zeros(0, np.int64))
        return PoisonedData(replace(data, train=train, val=val), idx,
                            {"rate": self.rate, "target_class": self.target_class, "val_indices": vidx.tolist()})

    def _poison_split(self, sp: Split, name: str, salt: int) -> tuple[Split, np.ndarray]:
        n_poison = int(round(self.rate * len(sp)))
        candidates = np.flatnonzero(sp.targets != self.target_class)
        if n_poison > len(candidates):
            raise MedsecError(f"BadNets: rate {self.rate:g} asks for {n_poison} poisons but only {len(candidates)} "
                              f"{name} images are outside the target class")
        rng = np.random.default_rng([self.seed, salt, 0x6264])
        idx = np.sort(rng.choice(candidates, size=n_poison, replace=False)) if n_poison else np.zeros(0, np.int64)
        pixels, targets = sp.pixels.copy(), sp.targets.copy()
        if n_poison:
            pixels[idx] = _to_uint8(self.stamp(sp.images(idx)))
            targets[idx] = self.target_class
        return Split(pixels=pixels, targets=targets, patient_ids=sp.patient_ids, extra=dict(sp.extra)), idx

    def success_rate(self, model: nn.Module, x: Tensor, y: Tensor) -> float:
        """Fraction of triggered images (of classes other than the target) the model puts in the target class."""
        keep = y != self.target_class
        if not bool(keep.any()):
            raise MedsecError("BadNets: no test image outside the target class to measure the trigger on")
        with guarded([model], "eval"):
            pred = batched(model, self.stamp(x[keep]), 512).argmax(1)
        return float((pred == self.target_class).float().mean())


# ------------------------------------------------------------------------------------------------------------
# Feature collision
# ------------------------------------------------------------------------------------------------------------

class FeatureCollision:
    """Clean-label poisons whose features collide with one target image's (Shafahi et al., 2018).

    n_poisons: poisons per target (bases drawn from the attacker's class). beta: weight of the similarity
    to the base; steps, lr: forward-backward iterations and RMS step size (pixel units); eps: largest
    L_inf distance of a poison from its base (None = unbounded); opacity: watermark of the target blended
    into each base before optimising (0 = none). seed: choice of bases.
    The model must expose `features(x)` (medsec classifiers do).
    """

    name = "feature-collision"

    def __init__(self, n_poisons: int = 1, beta: float = 0.1, steps: int = 200, lr: float = 0.01,
                 eps: float | None = 0.1, opacity: float = 0.0, seed: int = 0) -> None:
        if n_poisons < 1 or steps < 1 or not lr > 0 or not beta >= 0:
            raise MedsecError("FeatureCollision: n_poisons and steps must be >= 1, lr > 0, beta >= 0")
        if not 0.0 <= opacity < 1.0:
            raise MedsecError(f"FeatureCollision: opacity must be in [0, 1), got {opacity!r}")
        if eps is not None and not 0 < eps <= 1:
            raise MedsecError(f"FeatureCollision: eps must be in (0, 1] or None, got {eps!r}")
        self.n_poisons, self.beta, self.steps, self.lr = int(n_poisons), float(beta), int(steps), float(lr)
        self.eps, self.opacity, self.seed = eps, float(opacity), int(seed)

    def __repr__(self) -> str:
        return (f"FeatureCollision(n_poisons={self.n_poisons}, beta={self.beta:g}, eps={self.eps}, "
                f"opacity={self.opacity:g})")

    def craft(self, model: nn.Module, target: Tensor, bases: Tensor) -> Tensor:
        """Poisons (B, C, H, W) near `bases` whose features approach those of `target` (1, C, H, W)."""
        target, bases = check_batch(target, name="target"), check_batch(bases, name="bases")
        feats = getattr(model, "features", None)
        if feats is None:
            raise MedsecError(f"FeatureCollision: {type(model).__name__} has no features(x) method")
        with guarded([model], "eval"):
            ft = feats(target[:1]).detach()
            d_in = bases[0].numel()
            base = (1 - self.opacity) * bases + self.opacity * target[:1]
            p = base.clone()
            lb = self.lr * self.beta
            for _ in range(self.steps):
                q = p.clone().requires_grad_(True)
                with torch.enable_grad():
                    loss = (feats(q) - ft).pow(2).sum()
                    (g,) = torch.autograd.grad(loss, q)
                rms = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) / math.sqrt(d_in)
                p = p - self.lr * g / rms  # forward step on the feature term
                p = (p + lb * base) / (1 + lb)  # backward (proximal) step on beta ||p - base||^2
                if self.eps is not None:
                    p = torch.min(torch.max(p, bases - self.eps), bases + self.eps)
                p = p.clamp(0.0, 1.0)
        return p.detach()

    def poison(self, model: nn.Module, data: MedicalDataset, target_index: int, base_class: int) -> PoisonedData:
        """Poison `data`'s training split against test image `target_index`, for the attacker's `base_class`.

        The poisons are appended to the training split with their (correct) label `base_class`.
        """
        _check_classification(data)
        if not 0 <= target_index < len(data.test):
            raise MedsecError(f"FeatureCollision: target_index must be in [0, {len(data.test)}), got {target_index}")
        t_class = int(data.test.targets[target_index])
        if base_class == t_class:
            raise MedsecError(f"FeatureCollision: base_class {base_class} is the target image's own class")
        pool = np.flatnonzero(data.train.targets == base_class)
        if len(pool) < self.n_poisons:
            raise MedsecError(f"FeatureCollision: {len(pool)} training images of class {base_class}, "
                              f"{self.n_poisons} bases needed")
        rng = np.random.default_rng([self.seed, target_index, 0x6663])
        base_idx = np.sort(rng.choice(pool, size=self.n_poisons, replace=False))
        target_x = data.test.images(np.array([target_index]))
        poisons = self.craft(model, target_x, data.train.images(base_idx))
        tr = data.train
        n0 = len(tr)
        extra = {k: np.concatenate([v, v[base_idx]]) for k, v in tr.extra.items()}
        pid = None if tr.patient_ids is None else np.concatenate(
            [tr.patient_ids.astype(str), np.array([f"poison{i}" for i in range(self.n_poisons)])])
        train = Split(pixels=np.concatenate([tr.pixels, _to_uint8(poisons)]),
                      targets=np.concatenate([tr.targets, np.full(self.n_poisons, base_class, tr.targets.dtype)]),
                      patient_ids=pid, extra=extra)
        with guarded([model], "eval"):
            dist = (model.features(poisons) - model.features(target_x)).norm(dim=1)  # type: ignore[operator]
        info = {"target_index": int(target_index), "target_class": t_class, "base_class": int(base_class),
                "base_indices": base_idx.tolist(), "feature_distance": [float(d) for d in dist],
                "linf_from_base": float((poisons - data.train.images(base_idx)).abs().amax())}
        return PoisonedData(replace(data, train=train), np.arange(n0, n0 + self.n_poisons), info)


# ------------------------------------------------------------------------------------------------------------
# Retraining
# ------------------------------------------------------------------------------------------------------------

def retrain(meta: dict[str, Any], data: MedicalDataset, train_cfg: Any, seed: int = 0,
            device: str | torch.device = "cpu") -> nn.Module:
    """A victim trained from scratch on (poisoned) `data` with the recipe of a victim's metadata
    (architecture, scale, normalisation from `meta`; Adam settings from `train_cfg`, a TrainConfig)."""
    from medsec.models.checkpoint import BUILD_KEYS
    from medsec.models.networks import build_model
    from medsec.models.training import train_model

    missing = [k for k in BUILD_KEYS if k not in meta]
    if missing:
        raise MedsecError(f"retrain: victim metadata lacks {', '.join(missing)}")
    torch.manual_seed(seed)  # the initial weights depend on the seed only, not on what ran before
    model = build_model(**{k: meta[k] for k in BUILD_KEYS})
    train_model(model, data, train_cfg, seed=seed, device=device, description=f"retraining on {data.info.name} (poisoned)")
    return model


def retrain_head(model: nn.Module, data: MedicalDataset, epochs: int = 200, lr: float = 0.01,
                 weight_decay: float = 0.0, seed: int = 0) -> nn.Module:
    """A copy of `model` whose linear head is retrained on (poisoned) `data`, the features frozen
    (Shafahi et al.'s transfer-learning setting). Full-batch Adam on cross-entropy, from the current head."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or not hasattr(model, "features"):
        raise MedsecError("retrain_head: the model needs features(x) and a linear head (a medsec classifier)")
    new = copy.deepcopy(model).eval()
    x, y = data.train.images(), data.train.target_tensor()
    with torch.no_grad():
        f = torch.cat([new.features(x[i:i + 256]) for i in range(0, len(x), 256)])  # type: ignore[operator]
    torch.manual_seed(seed)
    nh: nn.Linear = new.head  # type: ignore[assignment]
    for p in nh.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(nh.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(nh(f), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    new.eval()
    return new

