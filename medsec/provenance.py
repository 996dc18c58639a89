"""What a run records beside its results: versions, device, seeds, times and config."""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from typing import Any


def run_provenance(config_yaml: str, device: str, started: datetime, seconds: float,
                   seeds: dict[str, int] | None = None) -> dict[str, Any]:
    """What a run records beside its results: versions, device, seeds, times and config."""
    import monai
    import numpy
    import torch

    import medsec

    return {
        "medsec": medsec.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "monai": monai.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
        "device": device, "cpu_threads": torch.get_num_threads(), "seeds": seeds or {},
        "started_utc": started.astimezone(UTC).isoformat(timespec="seconds"), "seconds": round(seconds, 1),
        "config": config_yaml,
    }
