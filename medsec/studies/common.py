"""What the studies share: the study's output folder, the config digest of its cells, and the cells that
train (or load) victims and fit defences before the rows that need them run.

Every study writes into its ``--out`` folder: ``results.json``, ``cells/`` (one file per grid cell),
``figures/``, and (written by :mod:`medsec.report`) ``report.md`` and ``report.html``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from medsec.config import ExperimentConfig
from medsec.defences.base import is_detector, rejected
from medsec.defences.factory import defence_config, get_defence
from medsec.metrics import PRIMARY_METRIC, handled
from medsec.models.inference import batched, resolve_device
from medsec.models.victims import get_victim
from medsec.paths import ensure_writable_dir, write_text_atomic
from medsec.studies.grid import Cell, CellStore, cell_key, digest

RESULTS = "results.json"


@dataclass(frozen=True)
class StudyOutput:
    """The folders of one study run: the root (results and reports), cells/ and figures/."""

    root: Path
    store: CellStore
    figures: Path
    started: datetime
    t0: float

    @classmethod
    def at(cls, out: str | Path) -> StudyOutput:
        """Create (or reuse) the output folder `out` with its cells/ and figures/ subfolders."""
        root = ensure_writable_dir(out)
        return cls(root, CellStore(root / "cells"), ensure_writable_dir(root / "figures", "figures folder"),
                   datetime.now(UTC), time.perf_counter())

    def seconds(self) -> float:
        """Time since the run started."""
        return time.perf_counter() - self.t0

    def write_results(self, result: Any, name: str = RESULTS) -> Path:
        """Write the study's results file atomically (JSON)."""
        path = self.root / name
        write_text_atomic(path, json.dumps(result, indent=2, default=str))
        return path


def provenance(cfg: ExperimentConfig, out: StudyOutput, seeds: dict[str, int]) -> dict[str, Any]:
    """The run's provenance (config, versions, device, time, seeds) as reports print it."""
    from medsec.provenance import run_provenance

    return run_provenance(cfg.to_yaml(), str(resolve_device(cfg.device)), out.started, out.seconds(), seeds)


def config_digest(cfg: ExperimentConfig, *ignore: str) -> str:
    """The digest of everything that changes a study's numbers: `cfg` (not the profile name, cache folder,
    device, nor the sections named in `ignore`, dotted, e.g. "reproduce.rows") and medsec's source
    (:func:`medsec.provenance.source_digest`: cells computed by another version are not reused)."""
    from medsec.provenance import source_digest

    d = cfg.model_dump(mode="json")
    for k in ("profile", "cache_dir", "device"):
        d.pop(k, None)
    for dotted in ignore:
        section, _, key = dotted.partition(".")
        if key:
            d.get(section, {}).pop(key, None)
        else:
            d.pop(section, None)
    d["medsec_source"] = source_digest()
    return digest(d)


# ----------------------------------------------------------------------------------------------------------
# the defended system's score
# ----------------------------------------------------------------------------------------------------------

def outputs(model: nn.Module, x: Tensor) -> Tensor:
    """The model's float32 outputs on x, 64 images at a time (on x's device)."""
    return batched(lambda xb: model(xb).float(), x, 64)


def handled_scores(model: nn.Module, x: Tensor, y: Tensor, task: str, *, adversarial: bool,
                   finding: Tensor | None = None, detector: Any = None,
                   rejected_mask: Tensor | None = None) -> np.ndarray:
    """Per input in [0, 1]: 1 when the system handles it (see the module docstring), Dice for segmentation.

    detector: a defence with ``detect`` whose threshold was fixed at fit time (None = no detector);
    rejected_mask: its verdicts on x when already computed (saves a detector pass)."""
    z = outputs(model, x)
    rej = None
    if task != "segmentation" and detector is not None and is_detector(detector):
        rej = rejected(detector, x) if rejected_mask is None else rejected_mask
    return handled(z, y, task, adversarial=adversarial, rejected=rej, finding=finding).numpy()


# ----------------------------------------------------------------------------------------------------------
# victim and defence cells
# ----------------------------------------------------------------------------------------------------------

def fit_victim(cfg: ExperimentConfig, dataset: str, arch: str | None = None) -> dict[str, Any]:
    """Cell: train (or load) `dataset`'s victim (its configured architecture unless `arch`); its checkpoint and
    clean metrics on the whole test split."""
    t0 = time.perf_counter()
    v = get_victim(cfg, dataset, arch)
    task = v.data.info.task
    key = PRIMARY_METRIC[task]
    return {
        "dataset": dataset, "label": v.data.info.label, "synthetic": v.data.info.synthetic, "task": task,
        "arch": v.meta["arch_label"], "metric": key, "value": 100 * v.meta["test"][key],
        "metrics": v.meta["test"], "n_train": len(v.data.train), "n_test": len(v.data.test),
        "image_size": v.data.image_shape[1:], "epochs": v.meta["epochs"],
        "train_seconds": v.meta["train_seconds"], "from_cache": v.from_cache,
        "checkpoint": str(v.checkpoint), "seconds": round(time.perf_counter() - t0, 1),
    }


def fit_defence(cfg: ExperimentConfig, defence_cfg: ExperimentConfig, defence: str, dataset: str) -> dict[str, Any]:
    """Cell: fit (or load) `defence` for `dataset`'s victim (trained with `cfg`); where it is cached, whether
    it was, and how long fitting took."""
    fd = get_defence(defence_cfg, defence, dataset, victim=get_victim(cfg, dataset))
    threshold = getattr(fd.defence, "threshold", None)
    return {"defence": defence, "dataset": dataset, "path": str(fd.path), "from_cache": fd.from_cache,
            "seconds": fd.seconds, "victim_checkpoint": str(fd.victim.checkpoint),
            "threshold": None if threshold is None else float(threshold)}


def victim_cell(cfg: ExperimentConfig, dataset: str, tag: str, arch: str | None = None) -> Cell:
    """The cell that trains (or loads) `dataset`'s victim; `tag` is the config digest of the study."""
    return Cell(cell_key("victim", dataset, *([arch] if arch else []), tag), fit_victim,
                {"cfg": cfg, "dataset": dataset, "arch": arch})


def defence_cell(cfg: ExperimentConfig, defence: str, dataset: str, tag: str,
                 defence_cfg: ExperimentConfig | None = None) -> Cell:
    """The cell that fits `defence` for `dataset`'s victim, after the victim's cell. defence_cfg: the config the
    defence's own networks train with (default: :func:`defence_config`)."""
    return Cell(cell_key("defence", defence, dataset, tag), fit_defence,
                {"cfg": cfg, "defence_cfg": defence_config(cfg) if defence_cfg is None else defence_cfg,
                 "defence": defence, "dataset": dataset}, after=(cell_key("victim", dataset, tag),))
