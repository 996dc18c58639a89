"""Checkpoints: weights plus everything needed to rebuild the network (no pickled code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsec.errors import MedsecError
from medsec.models.networks import build_model
from medsec.paths import atomic_path

BUILD_KEYS = ("arch", "in_channels", "num_outputs", "task", "width", "depth", "mean", "std")


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Write weights and metadata atomically. meta must hold the build_model arguments (BUILD_KEYS)."""
    missing = [k for k in BUILD_KEYS if k not in meta]
    if missing:
        raise MedsecError(f"checkpoint metadata lacks {', '.join(missing)}")
    with atomic_path(path) as tmp:
        torch.save({"format": 1, "meta": meta, "state_dict": model.state_dict()}, tmp)


def load_saved(path: str | Path, what: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict medsec saved at `path` with torch.save, read back with weights_only=True (no pickled code);
    MedsecError naming `what` ("checkpoint", "defence file") when it is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise MedsecError(f"{what} {p} does not exist")
    try:
        blob = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise MedsecError(f"{what} {p} is unreadable: {e}") from e
    if not isinstance(blob, dict):
        raise MedsecError(f"{what} {p} is unreadable: it holds a {type(blob).__name__}, not medsec's dict")
    return blob


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved at `path`; returns (model in eval mode, metadata)."""
    p = Path(path)
    blob = load_saved(p, "checkpoint", map_location)
    try:
        meta = blob["meta"]
        model = build_model(**{k: meta[k] for k in BUILD_KEYS})
        model.load_state_dict(blob["state_dict"])
    except MedsecError:
        raise
    except Exception as e:  # torch raises many types for a damaged file
        raise MedsecError(f"checkpoint {p} is unreadable or does not match its architecture: {e}") from e
    model.eval()
    return model, meta
