"""Victims of an experiment: each dataset's model, trained once and then read from the cache.

Checkpoints are cached by (dataset, architecture, seed, hash of the data/model/training config), so a
second run reuses them; a damaged checkpoint is retrained rather than trusted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsec.config import ExperimentConfig, VictimConfig
from medsec.data import MedicalDataset, load_dataset
from medsec.errors import ConfigError, MedsecError
from medsec.models.checkpoint import load_checkpoint, save_checkpoint
from medsec.models.networks import build_model, describe
from medsec.models.training import evaluate_split, train_model
from medsec.paths import cache_root

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedsecError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def victim_config(cfg: ExperimentConfig, dataset: str, arch: str | None = None) -> VictimConfig:
    """The victim settings of `dataset` (its configured architecture unless `arch` is given)."""
    if dataset in cfg.victims:
        v = cfg.victims[dataset]
        return v if arch is None else v.model_copy(update={"arch": arch})
    if arch is None:
        raise ConfigError(f"no victim configured for dataset {dataset!r}; configured: "
                          f"{', '.join(cfg.victims) or 'none'} (or pass an architecture)")
    return VictimConfig(arch=arch)


def experiment_dataset(cfg: ExperimentConfig, dataset: str) -> MedicalDataset:
    """The dataset as the experiment config describes it (synthetic by default, real with a data root)."""
    v = cfg.victims.get(dataset)
    root = (v.data_root if v and v.data_root else None) or cfg.data.data_root
    return load_dataset(dataset, size=cfg.data.image_size, n_train=cfg.data.n_train, n_val=cfg.data.n_val,
                        n_test=cfg.data.n_test, seed=cfg.seed, difficulty=v.difficulty if v else None,
                        cache_dir=cfg.cache_dir, data_root=root, data_options=v.data_options if v else None)


def _channel_stats(data: MedicalDataset) -> tuple[list[float], list[float]]:
    x = data.train.images()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


@dataclass
class Victim:
    """A trained victim: the model, its dataset, and its metadata (arch, clean metrics, timings)."""

    model: nn.Module
    data: MedicalDataset
    meta: dict[str, Any]
    checkpoint: Path
    from_cache: bool


def get_victim(
    cfg: ExperimentConfig,
    dataset: str,
    arch: str | None = None,
    *,
    seed: int | None = None,
) -> Victim:
    """Load the cached victim of `dataset`, or train, evaluate and cache it.

    seed: the model's initialisation/training seed (default: the experiment seed).
    """
    vc = victim_config(cfg, dataset, arch)
    seed = cfg.seed if seed is None else seed
    width = vc.width if vc.width is not None else cfg.model.width
    depth = vc.depth if vc.depth is not None else cfg.model.depth
    data = experiment_dataset(cfg, dataset)
    device = resolve_device(cfg.device)
    key = cfg.digest("data", "train") + repr(vc.model_copy(update={"width": width, "depth": depth}))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    tag = "real" if not data.info.synthetic else "syn"
    path = cache_root(cfg.cache_dir) / "models" / f"{dataset}-{vc.arch}-{tag}-s{seed}-{digest}.pt"
    if path.exists():
        try:
            model, meta = load_checkpoint(path)
            return Victim(model.to(device), data, meta, path, from_cache=True)
        except MedsecError as e:
            log.warning("%s; retraining it", e)
            path.unlink(missing_ok=True)
    mean, std = _channel_stats(data)
    build = {"arch": vc.arch, "in_channels": data.info.channels, "num_outputs": data.info.num_outputs,
             "task": data.info.task, "width": width, "depth": depth, "mean": mean, "std": std}
    model = build_model(**build)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    result = train_model(model, data, cfg.train, seed=seed, device=device,
                         description=f"{data.info.label} / {describe(vc.arch, width, depth)}")
    seconds = time.perf_counter() - t0
    meta = {**build, "dataset": dataset, "synthetic": data.info.synthetic, "class_names": list(data.info.class_names),
            "image_size": cfg.data.image_size, "channels": data.info.channels, "seed": seed,
            "arch_label": describe(vc.arch, width, depth), "train_seconds": round(seconds, 2),
            "epochs": result.epochs, "best_epoch": result.best_epoch,
            "val": result.best_val, "test": evaluate_split(model, data.info.task, data.test, device)}
    try:
        save_checkpoint(model, path, meta)
    except OSError as e:
        log.warning("could not cache the victim at %s: %s", path, e)
    return Victim(model, data, meta, path, from_cache=False)
