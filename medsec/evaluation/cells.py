"""Resumable experiment grids: one JSON result file per grid cell, written atomically.

A rerun skips every cell whose file exists and parses; an interrupted run loses at most the cell in flight.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsec.paths import ensure_writable_dir, write_text_atomic

log = logging.getLogger(__name__)


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")


class CellStore:
    """Results of a grid, one `<key>.json` per cell under `folder`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = ensure_writable_dir(folder, "results folder")

    def path(self, key: str) -> Path:
        """The file holding cell `key`."""
        return self.folder / f"{_slug(key)}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result of `key`, or None if absent or unreadable (then it is recomputed)."""
        p = self.path(key)
        if not p.exists():
            return None
        try:
            value = json.loads(p.read_text(encoding="utf-8"))
            return value if isinstance(value, dict) else None
        except (OSError, ValueError) as e:
            log.warning("result cell %s is unreadable (%s); recomputing it", p, e)
            return None

    def put(self, key: str, result: dict[str, Any]) -> None:
        """Store the result of `key` atomically."""
        write_text_atomic(self.path(key), json.dumps(result, indent=2, default=_jsonable))

    def compute(self, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored result of `key`, or fn()'s result, stored before it is returned."""
        got = self.get(key)
        if got is not None:
            return got
        result = fn()
        self.put(key, result)
        return result


def _jsonable(v: Any) -> Any:
    """JSON for numpy/torch scalars and arrays."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")
