"""Victims of an experiment: each dataset's model, trained once and then read from the cache.

Checkpoints are cached by (dataset, architecture, seed, hash of the data/model/training config), so a
second run reuses them; a damaged checkpoint is retrained rather than trusted. Two optional knobs (used by
the transfer study) are part of the cache key: the development-data variant (Bortsova et al.'s d1/d2/d3/d0)
and a weights file the backbone is initialised from (pretraining).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsec.config import ExperimentConfig, VictimConfig
from medsec.data import MedicalDataset, load_dataset
from medsec.data.registry import CACHE_FORMAT
from medsec.errors import ConfigError, MedsecError
from medsec.models.checkpoint import load_checkpoint, save_checkpoint
from medsec.models.inference import resolve_device
from medsec.models.networks import build_model, describe
from medsec.models.training import evaluate_split, seed_everything, train_model
from medsec.paths import cache_root
from medsec.provenance import code_digest

log = logging.getLogger(__name__)


# The architecture of a dataset the config names no victim for (a MedMNIST file, a user's own data): one
# per task, the smallest of the paper's families that suits it (our choice; `--arch` or the config overrides it).
DEFAULT_ARCH = {"classification": "resnet18", "multilabel": "resnet18", "segmentation": "unet"}


def victim_config(cfg: ExperimentConfig, dataset: str, arch: str | None = None,
                  task: str | None = None) -> VictimConfig:
    """The victim settings of `dataset`: its configured architecture unless `arch` is given; for a dataset
    the config has no victim for, the default architecture of its `task` (DEFAULT_ARCH)."""
    if dataset in cfg.victims:
        v = cfg.victims[dataset]
        return v if arch is None else v.model_copy(update={"arch": arch})
    if arch is None:
        if task not in DEFAULT_ARCH:
            raise ConfigError(f"no victim configured for dataset {dataset!r} and its task {task!r} has no default "
                              f"architecture; configured: {', '.join(cfg.victims) or 'none'} (or pass --arch)")
        log.info("no victim configured for %s: using the default %s architecture %s", dataset, task,
                 DEFAULT_ARCH[task])
        arch = DEFAULT_ARCH[task]
    return VictimConfig(arch=arch)


def experiment_dataset(cfg: ExperimentConfig, dataset: str) -> MedicalDataset:
    """The dataset as the experiment config describes it (synthetic by default, real with a data root)."""
    v = cfg.victims.get(dataset)
    root = (v.data_root if v and v.data_root else None) or cfg.data.data_root
    return load_dataset(dataset, size=cfg.data.image_size, n_train=cfg.data.n_train, n_val=cfg.data.n_val,
                        n_test=cfg.data.n_test, seed=cfg.seed, difficulty=v.difficulty if v else None,
                        cache_dir=cfg.cache_dir, data_root=root, data_options=v.data_options if v else None)


DATA_VARIANTS = ("full", "d1", "d2", "d3", "d0")


def development_data(data: MedicalDataset, variant: str = "full", seed: int = 0) -> MedicalDataset:
    """The dataset with its development (train + val) splits cut to Bortsova et al.'s variants.

    full: everything; d1: one half of train and of val (a seeded permutation); d2: the other half, disjoint
    from d1; d3: half of d2; d0: a tenth of d1. The test split is shared by every variant.
    """
    if variant not in DATA_VARIANTS:
        raise MedsecError(f"unknown development-data variant {variant!r}; expected one of {', '.join(DATA_VARIANTS)}")
    if variant == "full":
        return data

    def cut(split_name: str, salt: int) -> np.ndarray:
        n = len(data.split(split_name))
        perm = np.random.default_rng([seed, salt, 0x7472]).permutation(n)
        half = n // 2
        idx = {"d1": perm[:half], "d2": perm[half:], "d3": perm[half:half + (n - half) // 2],
               "d0": perm[:max(2, half // 10)]}[variant]
        if len(idx) < 2:
            raise MedsecError(f"development-data variant {variant!r} leaves {len(idx)} {split_name} images "
                              f"of {data.info.name}: draw more data (data.n_{split_name})")
        return np.sort(idx)

    return replace(data, train=data.train.subset(cut("train", 1)), val=data.val.subset(cut("val", 2)))


def file_digest(path: str | Path) -> str:
    """SHA-256 (first 12 hex digits) of a file's bytes: how a weights file enters a cache key."""
    p = Path(path)
    if not p.is_file():
        raise MedsecError(f"weights file {p} does not exist")
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def load_backbone_weights(model: nn.Module, path: str | Path, arch: str = "") -> None:
    """Initialise `model`'s backbone from a weights file (pretraining); its head and normalisation stay.

    The file holds a medsec checkpoint or a plain state dict, with backbone keys prefixed ``backbone.``
    (as medsec classifiers name them) or bare. Every backbone tensor must be present with the right shape:
    a file made for another architecture, scale or channel count is a MedsecError naming what differs.
    """
    p = Path(path)
    if not p.is_file():
        raise MedsecError(f"weights file {p} does not exist")
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise MedsecError(f"weights file {p}: only classifiers (with a backbone) can be initialised from weights")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise MedsecError(f"weights file {p} is not a readable PyTorch state dict: {e}") from e
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedsecError(f"weights file {p} does not hold a state dict of tensors")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    want = backbone.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(want[k].shape)}"
              for k in want if k in state and state[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise MedsecError(f"weights file {p} does not match the architecture {arch or type(backbone).__name__}"
                          f" (same arch, width, depth and input channels needed): {'; '.join(parts)}")
    backbone.load_state_dict(state)


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
    data_variant: str = "full",
    init_from: str | Path | None = None,
) -> Victim:
    """Load the cached victim of `dataset`, or train, evaluate and cache it.

    seed: the model's initialisation/training seed (default: the experiment seed).
    data_variant: development data (see development_data): full, or Bortsova et al.'s d1/d2/d3/d0.
    init_from: a weights file the backbone starts from (see load_backbone_weights); its content hash is
      part of the cache key, so new weights give a new victim.
    """
    data = development_data(experiment_dataset(cfg, dataset), data_variant, cfg.seed)
    vc = victim_config(cfg, dataset, arch, data.info.task)
    seed = cfg.seed if seed is None else seed
    width = vc.width if vc.width is not None else cfg.model.width
    depth = vc.depth if vc.depth is not None else cfg.model.depth
    device = resolve_device(cfg.device)
    # The data's version and the code that generates, builds and trains are part of the key: a changed
    # generator, architecture or training loop means a retrained victim.
    key = (cfg.digest("data", "train") + repr(vc.model_copy(update={"width": width, "depth": depth}))
           + f"|data-format-{CACHE_FORMAT}|code-{code_digest('data', 'models')}")
    extra_tag = ""
    if data_variant != "full":
        key += f"|variant={data_variant}"
        extra_tag += f"-{data_variant}"
    init_digest = file_digest(init_from) if init_from is not None else None
    if init_digest is not None:
        key += f"|init={init_digest}"
        extra_tag += "-pre"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    tag = "real" if not data.info.synthetic else "syn"
    path = cache_root(cfg.cache_dir) / "models" / f"{dataset}-{vc.arch}-{tag}{extra_tag}-s{seed}-{digest}.pt"
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
    seed_everything(seed)  # the initial weights come from the seed too, not from whatever ran before
    model = build_model(**build)  # type: ignore[arg-type]
    if init_from is not None:
        load_backbone_weights(model, init_from, describe(vc.arch, width, depth))
    t0 = time.perf_counter()
    result = train_model(model, data, cfg.train, seed=seed, device=device,
                         description=f"{data.info.label} / {describe(vc.arch, width, depth)}")
    seconds = time.perf_counter() - t0
    meta = {**build, "dataset": dataset, "synthetic": data.info.synthetic, "class_names": list(data.info.class_names),
            "image_size": cfg.data.image_size, "channels": data.info.channels, "seed": seed,
            "arch_label": describe(vc.arch, width, depth), "train_seconds": round(seconds, 2),
            "data_variant": data_variant, "init_from": str(init_from) if init_from is not None else None,
            "init_digest": init_digest, "n_train": len(data.train),
            "epochs": result.epochs, "best_epoch": result.best_epoch,
            "operating_point": None if result.operating_point is None else {
                "rule": cfg.train.operating_point, "logit_thresholds": result.operating_point},
            "val": result.best_val, "test": evaluate_split(model, data.info.task, data.test, device)}
    try:
        save_checkpoint(model, path, meta)
    except OSError as e:
        log.warning("could not cache the victim at %s: %s", path, e)
    return Victim(model, data, meta, path, from_cache=False)
