"""The transferability study of Bortsova et al. (MedIA 2021): how well do adversarial examples crafted on
a surrogate model fool a target model, depending on architecture, initialisation and development data?

Models (all trained with the victim recipe, cached by get_victim):
- targets: every architecture x initialisation, trained on d1 (half of the development pool) with the
  target seed;
- surrogates: a second, independently trained instance of every architecture x initialisation on the
  same d1 (the surrogate seed), and, for the configured initialisations, instances trained on d2
  (disjoint from d1), d3 (half of d2) and d0 (a tenth of d1);
- initialisations: "random" (He init), "pretrained" (the backbone of a model trained on another
  embedded task, `pretrain_source`, shared by target and surrogate as ImageNet weights are), and "file"
  (weights a user gives per architecture).

Attacks: FGSM and PGD-20 (Bortsova's iterative FGSM: step 0.005, no random start), eps swept in [0, 1]
pixel units. Control: the same perturbation with its pixel positions shuffled (one permutation per
image, shared by its channels). Metric: 100 * target metric on adversarial / on clean images (lower =
stronger transfer). One result file per (surrogate, target, attack, eps) cell; a rerun skips finished ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsec.config import ExperimentConfig, TransferConfig, VictimConfig
from medsec.errors import ConfigError, MedsecError
from medsec.metrics import PRIMARY_METRIC, task_metrics
from medsec.models.networks import CLASSIFIER_ARCHS, describe
from medsec.models.training import predict
from medsec.models.victims import DATA_VARIANTS, Victim, get_victim, resolve_device
from medsec.studies.common import StudyOutput, provenance
from medsec.studies.grid import Cell, Executor, cell_key, digest, run_grid

log = logging.getLogger(__name__)

INITS = ("random", "pretrained", "file")
ATTACKS = ("fgsm", "pgd")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: architecture, initialisation, development data and seed."""

    arch: str
    init: str
    data: str  # d1, d2, d3, d0
    seed: int
    role: str  # target | surrogate

    @property
    def id(self) -> str:
        """A short stable name, used in cell keys and tables."""
        return f"{self.arch}-{self.init}-{self.data}-s{self.seed}"


# ------------------------------------------------------------------------------------------------------------
# Configuration checks and the grid
# ------------------------------------------------------------------------------------------------------------

def check_transfer_config(t: TransferConfig) -> None:
    """ConfigError naming the first bad setting of the transfer section."""
    for a in t.archs:
        if a not in CLASSIFIER_ARCHS:
            raise ConfigError(f"transfer.archs: {a!r} is not a classifier architecture ({', '.join(CLASSIFIER_ARCHS)})")
    for i in t.inits + t.data_variant_inits:
        if i not in INITS:
            raise ConfigError(f"transfer.inits: unknown initialisation {i!r}; expected one of {', '.join(INITS)}")
    if "file" in t.inits and not t.weights:
        raise ConfigError("transfer.inits: 'file' needs transfer.weights (architecture -> weights file)")
    for a, path in t.weights.items():
        if a not in t.archs:
            raise ConfigError(f"transfer.weights: architecture {a!r} is not among transfer.archs")
        if not Path(path).is_file():
            raise ConfigError(f"transfer.weights: weights file {path} for {a} does not exist")
    for v in t.data_variants:
        if v not in DATA_VARIANTS or v in ("full", "d1"):
            raise ConfigError(f"transfer.data_variants: {v!r}; expected some of d2, d3, d0")
    for a in t.attacks:
        if a not in ATTACKS:
            raise ConfigError(f"transfer.attacks: unknown attack {a!r}; expected some of {', '.join(ATTACKS)}")
    for e in [*t.eps, t.main_eps]:
        if not 0 < e <= 1:
            raise ConfigError(f"transfer.eps: {e} is outside (0, 1] (eps is in [0, 1] pixel units)")
    if t.main_eps not in t.eps:
        raise ConfigError(f"transfer.main_eps {t.main_eps} must be one of transfer.eps {t.eps}")


def _inits_for(t: TransferConfig, arch: str, wanted: list[str]) -> list[str]:
    """The initialisations that apply to `arch` ('file' only where a weights file is given)."""
    return [i for i in wanted if i != "file" or arch in t.weights]


def study_grid(t: TransferConfig) -> tuple[list[ModelSpec], list[ModelSpec]]:
    """(targets, surrogates) of the study. Giving weights files adds the init 'file' for those archs."""
    inits = t.inits + (["file"] if t.weights and "file" not in t.inits else [])
    targets = [ModelSpec(a, i, "d1", t.target_seed, "target") for a in t.archs for i in _inits_for(t, a, inits)]
    surr = [ModelSpec(a, i, "d1", t.surrogate_seed, "surrogate") for a in t.archs for i in _inits_for(t, a, inits)]
    surr += [ModelSpec(a, i, v, t.surrogate_seed, "surrogate") for a in t.archs
             for i in _inits_for(t, a, t.data_variant_inits) for v in t.data_variants]
    return targets, surr


_GRID_FIELDS = ("archs", "inits", "data_variants", "data_variant_inits", "attacks", "eps", "main_eps", "whitebox",
                "weights")


def settings_digest(cfg: ExperimentConfig) -> str:
    """A short hash of every setting a transfer cell's result depends on besides its key (models' data and
    training, attack settings, seeds, the user's weights files' contents): the cells of a run live in a
    folder named by it, so changed settings never reuse stale cells."""
    from medsec.models.victims import file_digest

    t = cfg.transfer
    payload = {"t": {k: v for k, v in t.model_dump().items() if k not in _GRID_FIELDS},
               "weights": {a: file_digest(p) for a, p in sorted(t.weights.items())},
               "cfg": cfg.digest("data", "train"), "seed": cfg.seed, "device": cfg.device}
    return digest(payload, 10)


def check_weights_files(cfg: ExperimentConfig) -> None:
    """Fail early (before any training) when a user's weights file does not fit its architecture."""
    from medsec.models.networks import build_model
    from medsec.models.victims import experiment_dataset, load_backbone_weights

    t = cfg.transfer
    if not t.weights:
        return
    info = experiment_dataset(study_config(cfg, t.dataset, t.archs[0]), t.dataset).info
    for arch, path in t.weights.items():
        model = build_model(arch, in_channels=info.channels, num_outputs=info.num_outputs, task=info.task,
                            width=t.width, depth=t.depth)
        load_backbone_weights(model, path, describe(arch, t.width, t.depth))


def study_config(cfg: ExperimentConfig, dataset: str, arch: str) -> ExperimentConfig:
    """The experiment config a transfer-study model of `arch` on `dataset` is trained with."""
    t = cfg.transfer
    update = {"arch": arch, "width": t.width, "depth": t.depth}
    if t.difficulty is not None:
        update["difficulty"] = t.difficulty
    base = cfg.victims.get(dataset)  # keeps a real-data root and reader options
    vc = base.model_copy(update=update) if base is not None else VictimConfig(**update)  # type: ignore[arg-type]
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"n_train": t.n_train, "n_val": t.n_val, "n_test": t.n_test}),
        "train": cfg.train.model_copy(update={"epochs": t.epochs, "batch_size": t.batch_size}),
        "victims": {dataset: vc},
    })


class ModelPool:
    """Trains or loads the study's models on demand (get_victim caches them); keeps them in memory."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.t = cfg.transfer
        self._models: dict[str, Victim] = {}
        self._bases: dict[str, Path] = {}

    def init_weights(self, arch: str, init: str) -> Path | None:
        """The weights file a model of `arch` with initialisation `init` starts from."""
        if init == "random":
            return None
        if init == "file":
            return Path(self.t.weights[arch])
        if arch not in self._bases:
            src = self.t.pretrain_source
            if src == self.t.dataset:
                raise ConfigError("transfer.pretrain_source must be another dataset than transfer.dataset")
            base = get_victim(study_config(self.cfg, src, arch), src, arch, seed=self.t.pretrain_seed)
            self._bases[arch] = base.checkpoint
        return self._bases[arch]

    def get(self, spec: ModelSpec) -> Victim:
        """The trained model of `spec`."""
        if spec.id not in self._models:
            cfg = study_config(self.cfg, self.t.dataset, spec.arch)
            self._models[spec.id] = get_victim(cfg, self.t.dataset, spec.arch, seed=spec.seed,
                                               data_variant=spec.data, init_from=self.init_weights(spec.arch, spec.init))
        return self._models[spec.id]

    def drop(self, spec: ModelSpec) -> None:
        """Forget a model (memory)."""
        self._models.pop(spec.id, None)


# ------------------------------------------------------------------------------------------------------------
# Attacks and the control
# ------------------------------------------------------------------------------------------------------------

def make_attack(name: str, eps: float, t: TransferConfig) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """FGSM or Bortsova's iterative FGSM / PGD-20 (step pgd_alpha, no random start) at `eps`."""
    from medsec.attacks.registry import build_attack

    if name == "fgsm":
        return build_attack(name, eps)
    if name == "pgd":
        return build_attack(name, eps, alpha=min(t.pgd_alpha, eps), steps=t.pgd_steps, random_start=False)
    raise MedsecError(f"unknown transfer attack {name!r}")


def shuffle_perturbation(x: torch.Tensor, x_adv: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Bortsova et al.'s control: x plus the perturbation x_adv - x with its pixel positions shuffled
    (one random permutation per image, shared by its channels), clipped to [0, 1]. Same size, no structure."""
    n, c, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    d = (x_adv - x).reshape(n, c, h * w)
    perm = torch.stack([torch.randperm(h * w, generator=gen) for _ in range(n)]).to(x.device)
    d = torch.gather(d, 2, perm[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)
    return (x + d).clamp(0.0, 1.0)


def primary_metric(task: str, logits: torch.Tensor, y: torch.Tensor) -> float:
    """The task's headline metric (accuracy, weighted AUROC, ...)."""
    if task == "segmentation":
        raise MedsecError("the transfer study covers classifiers only")
    return task_metrics(task, logits, y)[PRIMARY_METRIC[task]]


def transfer_cell(target: nn.Module, task: str, clean: float, y: torch.Tensor, x_adv: torch.Tensor,
                  x_ctrl: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Target metric on adversarial and shuffled-control images beside its clean value (computed once per
    target), and the two ratios (percent)."""
    adv = primary_metric(task, predict(target, x_adv, device=device), y)
    ctrl = primary_metric(task, predict(target, x_ctrl, device=device), y)
    def ratio(v: float) -> float:
        return 100.0 * v / clean if clean > 0 else float("nan")

    return {"clean": clean, "adversarial": adv, "shuffled": ctrl,
            "ratio": ratio(adv), "ratio_shuffled": ratio(ctrl)}


# ------------------------------------------------------------------------------------------------------------
# The study: one cell per model, then one per (surrogate, attack, eps) scoring every target
# ------------------------------------------------------------------------------------------------------------

def fit_model(cfg: ExperimentConfig, spec: ModelSpec) -> dict[str, Any]:
    """Cell: train (or load) one model of the study; its summary."""
    return {"id": spec.id, **model_summary(ModelPool(cfg).get(spec))}


def attack_cell(cfg: ExperimentConfig, surrogate: ModelSpec, targets: list[ModelSpec], attack: str,
                eps: float) -> dict[str, Any]:
    """Cell: craft on `surrogate` at `eps` once, score every target (and the shuffled control) on it."""
    t = cfg.transfer
    device = resolve_device(cfg.device)
    pool = ModelPool(cfg)
    sv = pool.get(surrogate)
    sv.model.eval()
    data, task = sv.data, sv.data.info.task
    n = min(t.n_eval, len(data.test))
    x, y = data.test.images(np.arange(n)).to(device), data.test.target_tensor(np.arange(n)).to(device)
    c0 = time.perf_counter()
    x_adv = make_attack(attack, eps, t)(sv.model, x, y).detach()
    craft_s = time.perf_counter() - c0
    x_ctrl = shuffle_perturbation(x, x_adv, seed=cfg.seed)
    rows = []
    for tg in targets:
        tv = pool.get(tg)
        clean = primary_metric(task, predict(tv.model, x, device=device), y)
        res = transfer_cell(tv.model, task, clean, y, x_adv, x_ctrl, device)
        res.update(_cell_meta(surrogate, tg, attack, eps, n, craft_s, sv, tv))
        rows.append(res)
    return {"rows": rows}


def transfer_grid(cfg: ExperimentConfig) -> list[Cell]:
    """Model cells, then the attack cells (each after its surrogate's and its targets' cells)."""
    t = cfg.transfer
    tag = settings_digest(cfg)
    targets, surrogates = study_grid(t)
    models = {s.id: Cell(cell_key("model", s.id, tag), fit_model, {"cfg": cfg, "spec": s})
              for s in [*targets, *surrogates]}
    pairs: list[tuple[ModelSpec, list[ModelSpec]]] = [(s, targets) for s in surrogates]
    if t.whitebox:
        pairs += [(tg, [tg]) for tg in targets]
    cells = list(models.values())
    for s, tgs in pairs:
        kind = "whitebox" if tgs == [s] else "transfer"
        for attack in t.attacks:
            for eps in t.eps:
                cells.append(Cell(cell_key(kind, s.id, attack, f"eps{eps:g}", tag), attack_cell,
                                  {"cfg": cfg, "surrogate": s, "targets": tgs, "attack": attack, "eps": eps},
                                  after=tuple(dict.fromkeys(models[m.id].key for m in [s, *tgs]))))
    return cells


def run_transfer_study(cfg: ExperimentConfig, out_dir: str | Path, executor: Executor | None = None
                       ) -> dict[str, Any]:
    """Run (or resume) the study; writes cells and results.json under `out_dir` and returns the result."""
    t = cfg.transfer
    check_transfer_config(t)
    check_weights_files(cfg)
    out = StudyOutput.at(out_dir)
    cells = transfer_grid(cfg)
    done = run_grid(cells, out.store, executor, title="transferability (Bortsova et al.)")
    rows = [r for c in cells if c.fn is attack_cell for r in done[c.key]["rows"]]
    targets, _ = study_grid(t)
    first = ModelPool(cfg).get(targets[0]).data
    task = first.info.task
    result = {"rows": rows, "dataset": first.info.label, "task": task, "metric": PRIMARY_METRIC[task],
              "eps_units": "[0,1] pixel units (Bortsova et al.'s [-1,1] eps is twice these values)",
              "models": {c.kwargs["spec"].id: done[c.key] for c in cells
                         if c.fn is fit_model and c.kwargs["spec"].role == "target"},
              "provenance": provenance(cfg, out, {"seed": cfg.seed, "target_seed": t.target_seed,
                                                  "surrogate_seed": t.surrogate_seed, "pretrain_seed": t.pretrain_seed}),
              "findings": bortsova_findings(rows, t)}
    out.write_results(result)
    return result


def _cell_meta(s: ModelSpec, tg: ModelSpec, attack: str, eps: float, n: int, craft_s: float,
               sv: Victim, tv: Victim) -> dict[str, Any]:
    return {"surrogate": s.id, "target": tg.id, "attack": attack, "eps": eps, "n": n,
            "s_arch": s.arch, "s_init": s.init, "s_data": s.data, "s_seed": s.seed,
            "t_arch": tg.arch, "t_init": tg.init, "t_data": tg.data, "t_seed": tg.seed,
            "whitebox": s.id == tg.id, "craft_seconds": round(craft_s, 2),
            "s_clean_test": sv.meta.get("test"), "t_clean_test": tv.meta.get("test")}


def model_summary(v: Victim) -> dict[str, Any]:
    """What the results keep of a model: architecture, data, seed, clean metrics, training time."""
    keys = ("arch_label", "data_variant", "n_train", "seed", "test", "val", "epochs", "train_seconds", "init_digest")
    return {k: v.meta.get(k) for k in keys}


# ------------------------------------------------------------------------------------------------------------
# Findings
# ------------------------------------------------------------------------------------------------------------

def mean_ratio(rows: list[dict[str, Any]], key: str = "ratio") -> float:
    """Mean of `key` over rows where it is a number (NaN when none is)."""
    vals = [r[key] for r in rows if r.get(key) is not None and r[key] == r[key]]
    return float(np.mean(vals)) if vals else float("nan")


def bortsova_findings(rows: list[dict[str, Any]], t: TransferConfig) -> list[dict[str, Any]]:
    """Bortsova et al.'s three findings, checked on the main eps for each attack (lower ratio = more transfer).

    1. pretraining raises transfer: surrogate and target both pretrained vs both random (d1 surrogates);
    2. different development data lowers it: same architecture and init, d2/d3/d0 vs d1 surrogates;
    3. a different architecture lowers it further: with different data, different vs same architecture.
    """
    out = []
    for attack in t.attacks:
        rr = [r for r in rows if r["attack"] == attack and abs(r["eps"] - t.main_eps) < 1e-12 and not r["whitebox"]]
        d1 = [r for r in rr if r["s_data"] == "d1"]
        pre = [r for r in d1 if r["s_init"] == r["t_init"] == "pretrained"]
        rnd = [r for r in d1 if r["s_init"] == r["t_init"] == "random"]
        if pre and rnd:
            a, b = mean_ratio(pre), mean_ratio(rnd)
            out.append({"finding": "pretraining raises transfer", "attack": attack,
                        "pretrained": a, "random": b, "reproduced": bool(a < b),
                        "pretrained_same_arch": mean_ratio([r for r in pre if r["s_arch"] == r["t_arch"]]),
                        "random_same_arch": mean_ratio([r for r in rnd if r["s_arch"] == r["t_arch"]]),
                        "pretrained_diff_arch": mean_ratio([r for r in pre if r["s_arch"] != r["t_arch"]]),
                        "random_diff_arch": mean_ratio([r for r in rnd if r["s_arch"] != r["t_arch"]])})
        same_init = [r for r in rr if r["s_init"] == r["t_init"] and r["s_init"] in t.data_variant_inits]
        same = [r for r in same_init if r["s_data"] == "d1" and r["s_arch"] == r["t_arch"]]
        other = [r for r in same_init if r["s_data"] != "d1" and r["s_arch"] == r["t_arch"]]
        if same and other:
            a, b = mean_ratio(same), mean_ratio(other)
            per = {v: mean_ratio([r for r in other if r["s_data"] == v]) for v in t.data_variants}
            out.append({"finding": "different development data lowers transfer", "attack": attack,
                        "same_data": a, "different_data": b, "per_variant": per, "reproduced": bool(b > a)})
        diff_arch = [r for r in same_init if r["s_data"] != "d1" and r["s_arch"] != r["t_arch"]]
        if other and diff_arch:
            a, b = mean_ratio(other), mean_ratio(diff_arch)
            out.append({"finding": "a different architecture lowers it further", "attack": attack,
                        "different_data_same_arch": a, "different_data_different_arch": b,
                        "same_data_different_arch": mean_ratio([r for r in same_init if r["s_data"] == "d1"
                                                          and r["s_arch"] != r["t_arch"]]),
                        "reproduced": bool(b > a)})
        if rr:
            out.append({"finding": "crafted perturbations beat the shuffled control", "attack": attack,
                        "adversarial": mean_ratio(rr), "shuffled": mean_ratio(rr, "ratio_shuffled"),
                        "reproduced": bool(mean_ratio(rr) < mean_ratio(rr, "ratio_shuffled"))})
    return out
