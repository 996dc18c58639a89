"""What a run records beside its results: versions, device, seeds, times and config."""

from __future__ import annotations

import functools
import hashlib
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# What does not change a study's numbers: how results are written up and how commands are parsed.
_PRESENTATION = ("report", "cli")


def _tree_digest(packages: tuple[str, ...] | None) -> str:
    """sha256 (12 hex digits) of medsec's .py files: those under `packages` (top-level subpackages such as
    "data"), or with None every one but the presentation layers."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if (rel.parts[0] in _PRESENTATION) if packages is None else (rel.parts[0] not in packages):
            continue
        h.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@functools.cache
def source_digest() -> str:
    """Digest of the medsec source that computes results (every module but the report writers and the
    command line). Study cells carry it in their keys, so cells computed by other code are recomputed, not
    reused."""
    return _tree_digest(None)


@functools.cache
def code_digest(*packages: str) -> str:
    """Digest of the medsec subpackages that make one cached artefact: the embedded synthetic data ("data"),
    a victim ("data", "models": generators, architectures, training), a fitted defence (those and
    "defences", "attacks": the adversarial examples some defences train on). Each cache keys on its own, so
    an edit to the code that made an entry makes a new one instead of silently reusing the old, and an edit
    elsewhere (a report, an attack a victim never sees) keeps the trained models."""
    if not packages:
        raise ValueError("code_digest needs at least one subpackage")
    return _tree_digest(tuple(sorted(packages)))


def run_provenance(config_yaml: str, device: str, started: datetime, seconds: float,
                   seeds: dict[str, int] | None = None) -> dict[str, Any]:
    """What a run records beside its results: versions, device, seeds, times and config."""
    import monai
    import numpy
    import torch

    import medsec

    return {
        "medsec": medsec.__version__, "medsec_source": source_digest(), "python": sys.version.split()[0], "torch": torch.__version__,
        "monai": monai.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
        "device": device, "cpu_threads": torch.get_num_threads(), "seeds": seeds or {},
        "started_utc": started.astimezone(UTC).isoformat(timespec="seconds"), "seconds": round(seconds, 1),
        "config": config_yaml,
    }
