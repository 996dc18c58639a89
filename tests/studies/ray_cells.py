"""Module-level cell functions for the Ray executor tests (Ray workers import them by name).

Every call appends one line ``<key> <pid>`` to the calls log, so a test can count how often each cell
was computed, across worker processes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from medsec.studies.grid import CellStore


def _log(calls: str, key: str) -> None:
    with open(calls, "a", encoding="utf-8") as fh:
        fh.write(f"{key} {os.getpid()}\n")


def square(key: str, calls: str, x: int, sleep: float = 0.0) -> dict[str, Any]:
    """x and x squared (after `sleep` seconds)."""
    _log(calls, key)
    time.sleep(sleep)
    return {"x": x, "square": x * x}


def total(key: str, calls: str, folder: str, needs: list[str]) -> dict[str, Any]:
    """The sum of the squares of the cells it needs, read from the results folder (they finished first)."""
    _log(calls, key)
    store = CellStore(folder)
    parts = [store.get(k) for k in needs]
    if any(p is None for p in parts):
        raise RuntimeError(f"{key} ran before the cells it needs: {needs}")
    return {"total": sum(p["square"] for p in parts if p is not None)}


def die_once(key: str, calls: str, marker: str, x: int) -> dict[str, Any]:
    """Kills its own worker process mid-cell on the first attempt (the marker file does not exist yet)."""
    _log(calls, key)
    if not Path(marker).exists():
        Path(marker).write_text("killed once", encoding="utf-8")
        os._exit(1)  # the worker dies without returning, as on an out-of-memory kill
    return {"x": x, "square": x * x}


def fail(key: str, calls: str, x: int) -> dict[str, Any]:
    """An application error."""
    _log(calls, key)
    raise ValueError(f"cannot handle x={x}")


def calls_of(calls: str | Path) -> list[str]:
    """The keys in the calls log, one per computation."""
    p = Path(calls)
    return [line.split()[0] for line in p.read_text(encoding="utf-8").splitlines()] if p.exists() else []


def die_always(key: str, calls: str) -> dict[str, Any]:
    """Kills its worker on every attempt (a cell that always runs out of memory)."""
    _log(calls, key)
    os._exit(1)
