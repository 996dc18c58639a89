"""Experiment configuration: pydantic models read from YAML, with `quick` and `full` profiles.

A wrong key or value is a ConfigError that names it (e.g. ``train.epochs: Input should be greater than 0``).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medsec.errors import ConfigError

PROFILES = ("quick", "full")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """How much data to draw and at what size (synthetic), or where the real data lies."""

    image_size: int = Field(64, ge=16, le=1024)
    n_train: int = Field(1500, gt=0)
    n_val: int = Field(300, gt=0)
    n_test: int = Field(300, gt=0)
    data_root: str | None = None  # real data: the publisher's layout under this folder


class TrainConfig(_Strict):
    """Victim training: Adam, early stopping on the validation metric."""

    epochs: int = Field(20, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(4, ge=1)  # epochs without validation improvement before stopping
    augment: bool = True  # random horizontal flips and small shifts


class ModelConfig(_Strict):
    """Scale knobs applied to the paper architectures (1.0 = the published network)."""

    width: float = Field(1.0, gt=0, le=4)
    depth: float = Field(1.0, gt=0, le=1)


class VictimConfig(_Strict):
    """The victim of one dataset: architecture, and optional per-dataset overrides."""

    arch: str
    width: float | None = Field(None, gt=0, le=4)  # overrides model.width for this victim
    depth: float | None = Field(None, gt=0, le=1)  # overrides model.depth for this victim
    difficulty: float | None = Field(None, ge=0, le=1)  # synthetic data difficulty; None = default
    data_root: str | None = None  # real data for this dataset only
    data_options: dict[str, Any] = Field(default_factory=dict)  # real-data reader options (docs/datasets.md)


class ExperimentConfig(_Strict):
    """One experiment: seeds, data, models, training, and the victims per dataset."""

    profile: str = "custom"
    seed: int = 0
    cache_dir: str | None = None  # default: $MEDSEC_CACHE or ~/.cache/medsec
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    victims: dict[str, VictimConfig] = Field(default_factory=dict)

    def digest(self, *parts: str) -> str:
        """A short hash of the named sections (e.g. "data", "train", "model") for cache keys."""
        payload = {p: getattr(self, p).model_dump() for p in parts}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        """The config as YAML, as a run records it beside its results."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{loc}: {msg}")
    return f"invalid config {source}: " + "; ".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "(dict)") -> ExperimentConfig:
    """Validate a config dict; ConfigError names every wrong key or value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(profile_or_path: str | Path = "quick", overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """A built-in profile by name (quick, full) or a YAML file, with optional nested overrides."""
    name = str(profile_or_path)
    if name in PROFILES:
        text = resources.files("medsec.configs").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
        source = f"profile {name!r}"
    else:
        path = Path(name)
        if path.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)} or a .yaml file")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {source} is not valid YAML: {e}") from None
    if overrides:
        raw = _deep_update(raw, overrides)
    return config_from_dict(raw, source)
