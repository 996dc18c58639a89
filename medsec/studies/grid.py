"""The one grid runner every study uses: cells, their digest, resume, progress and executors.

A study describes its work as :class:`Cell` s — a module-level function, picklable keyword arguments, and the
keys of the cells that must finish first (the victim a row attacks, a fitted defence) — and hands them to
:func:`run_grid`. Each cell's result is one JSON file ``<out>/cells/<key>.json`` written atomically by the
:class:`CellStore`: a rerun skips every cell whose file exists and parses, so an interrupted run loses at most
the cells in flight. An :class:`Executor` decides where and in which order cells run; :class:`LocalExecutor`
(the default) runs them one after another in this process. Other executors (e.g. one that ships cells to
Ray workers) implement the same ``run(cells, store, progress)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from medsec.errors import MedsecError
from medsec.paths import ensure_writable_dir, write_text_atomic

log = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def cell_key(*parts: Any) -> str:
    """A file-safe cell key from its parts (joined by '-'; characters other than letters, digits, '.', '_'
    and '-' become '_')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(str(p) for p in parts)).strip("_")


def digest(payload: Any, length: int = 12) -> str:
    """The short SHA-256 of a JSON-able payload (keys sorted): how settings enter cell keys and cache names."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


class CellStore:
    """Results of a grid, one ``<key>.json`` per cell under `folder`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = ensure_writable_dir(folder, "results folder")

    def path(self, key: str) -> Path:
        """The file holding cell `key`."""
        return self.folder / f"{cell_key(key)}.json"

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


@dataclass(frozen=True)
class Cell:
    """One unit of a study's work."""

    key: str  # unique, file-safe; the result is <out>/cells/<key>.json
    fn: Callable[..., dict[str, Any]]  # a module-level function (picklable: it may be shipped to other workers)
    kwargs: Mapping[str, Any]  # picklable arguments (config, row spec, paths; no tensors, no closures)
    after: tuple[str, ...] = ()  # keys of cells that must finish first (e.g. the victim cell a row attacks)


class GridError(MedsecError):
    """Some cells of a grid failed; every other cell that could run has finished and is stored."""

    def __init__(self, title: str, failed: Mapping[str, str], skipped: Sequence[str] = ()) -> None:
        self.failed = dict(failed)
        self.skipped = list(skipped)
        lines = [f"{title}: {len(self.failed)} cell(s) failed"]
        lines += [f"  {k}: {err}" for k, err in self.failed.items()]
        if self.skipped:
            lines.append(f"  not run because a cell they need failed: {', '.join(self.skipped)}")
        lines.append("finished cells are kept: rerun the same command to retry the rest")
        super().__init__("\n".join(lines))


@dataclass
class GridProgress:
    """The live view of a grid: cells done / running / failed, and the time each one took (rich)."""

    title: str
    total: int
    console: Console = field(default_factory=Console)
    done: int = 0
    failed: int = 0
    running: set[str] = field(default_factory=set)
    seconds: dict[str, float] = field(default_factory=dict)

    def _status(self) -> str:
        return (f"[{self.done + self.failed}/{self.total}: {self.done} done, {len(self.running)} running, "
                f"{self.failed} failed]")

    def kept(self, key: str) -> None:
        """A cell finished in an earlier run (its file exists): kept, not recomputed."""
        self.done += 1
        self.console.print(f"{self._status()} {key}: finished earlier, kept")

    def started(self, key: str) -> None:
        """A cell starts."""
        self.running.add(key)
        self.console.print(f"{self._status()} {key}: running")

    def finished(self, key: str, seconds: float) -> None:
        """A cell finished and its result is stored."""
        self.running.discard(key)
        self.done += 1
        self.seconds[key] = seconds
        self.console.print(f"{self._status()} {key}: done in {seconds:.1f} s")

    def failure(self, key: str, error: str, seconds: float) -> None:
        """A cell raised; its error is kept for the final GridError."""
        self.running.discard(key)
        self.failed += 1
        self.seconds[key] = seconds
        self.console.print(f"{self._status()} [red]{key}: failed after {seconds:.1f} s: {error}[/]")

    def blocked(self, key: str, because: str) -> None:
        """A cell is not run because a cell it needs failed."""
        self.console.print(f"{self._status()} [yellow]{key}: skipped ({because} failed)[/]")


class Executor(Protocol):
    """Runs a grid's cells: every cell after the cells it names in `after`, results stored in `store`."""

    def run(self, cells: Sequence[Cell], store: CellStore, progress: GridProgress) -> dict[str, dict[str, Any]]:
        """Results by cell key; raises GridError after finishing what it can when cells fail."""
        ...


def dependency_order(cells: Sequence[Cell]) -> list[Cell]:
    """The cells in an order where each comes after the cells it needs (stable otherwise)."""
    by_key = {c.key: c for c in cells}
    out: list[Cell] = []
    state: dict[str, int] = {}  # 1 visiting, 2 placed

    def visit(c: Cell, path: tuple[str, ...]) -> None:
        if state.get(c.key) == 2:
            return
        if state.get(c.key) == 1:
            raise MedsecError(f"grid cells depend on each other in a cycle: {' -> '.join((*path, c.key))}")
        state[c.key] = 1
        for k in c.after:
            visit(by_key[k], (*path, c.key))
        state[c.key] = 2
        out.append(c)

    for c in cells:
        visit(c, ())
    return out


class LocalExecutor:
    """Runs cells one after another in this process, in dependency order (today's behaviour)."""

    def run(self, cells: Sequence[Cell], store: CellStore, progress: GridProgress) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        failed: dict[str, str] = {}
        skipped: list[str] = []
        for c in dependency_order(cells):
            bad = next((k for k in c.after if k in failed or k in skipped), None)
            if bad is not None:
                skipped.append(c.key)
                progress.blocked(c.key, bad)
                continue
            got = store.get(c.key)
            if got is not None:
                results[c.key] = got
                progress.kept(c.key)
                continue
            progress.started(c.key)
            t0 = time.perf_counter()
            try:
                res = c.fn(**c.kwargs)
                if not isinstance(res, dict):
                    raise MedsecError(f"cell {c.key} returned {type(res).__name__}, not a dict")
                store.put(c.key, res)
            except Exception as e:  # one failed cell must not lose the others: reported at the end
                log.debug("cell %s failed", c.key, exc_info=True)
                failed[c.key] = f"{type(e).__name__}: {e}"
                progress.failure(c.key, failed[c.key], time.perf_counter() - t0)
                continue
            results[c.key] = res
            progress.finished(c.key, time.perf_counter() - t0)
        if failed:
            raise GridError(progress.title, failed, skipped)
        return results


def check_cells(cells: Sequence[Cell]) -> None:
    """MedsecError for duplicate or unsafe keys and for dependencies on cells that are not in the grid."""
    seen: set[str] = set()
    for c in cells:
        if not KEY_PATTERN.match(c.key):
            raise MedsecError(f"cell key {c.key!r} is not file-safe (letters, digits, '.', '_', '-')")
        if c.key in seen:
            raise MedsecError(f"two grid cells share the key {c.key!r}")
        seen.add(c.key)
    for c in cells:
        missing = [k for k in c.after if k not in seen]
        if missing:
            raise MedsecError(f"cell {c.key} needs {', '.join(missing)}, which is not in the grid")


def run_grid(cells: Sequence[Cell], store: CellStore, executor: Executor | None = None, *,
             title: str) -> dict[str, dict[str, Any]]:
    """Run (or resume) a grid: results by cell key, each also stored as ``<store>/<key>.json``."""
    cells = list(cells)
    check_cells(cells)
    dependency_order(cells)  # a cycle is an error before anything runs
    progress = GridProgress(title, len(cells))
    progress.console.print(f"[bold]{title}[/]: {len(cells)} cells, results in {store.folder}")
    return (executor or LocalExecutor()).run(cells, store, progress)
