"""Readers for the real datasets in their publishers' own layouts (filled in by the real-data work)."""

from __future__ import annotations

from pathlib import Path

from medsec.data.base import MedicalDataset
from medsec.errors import DataError


def read_dataset(name: str, root: Path, *, size: int, seed: int) -> MedicalDataset:
    """Read the real dataset `name` from `root`."""
    raise DataError(f"no reader for real dataset {name!r} yet (data root {root})")
