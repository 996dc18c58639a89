"""Run a grid's cells as Ray tasks, on one machine or a cluster (``--executor ray [--address ADDR]``).

Each :class:`~medsec.studies.grid.Cell` becomes one Ray task that asks for its resources (``gpus_per_cell``
GPUs when the cluster has GPUs, else ``cpus_per_cell`` CPUs), and:

- skips the cell when its result file already exists (the driver checks before submitting, the task again
  before computing: a second driver may have finished it meanwhile);
- takes a lock file ``<key>.lock`` beside the result, created with O_EXCL, so no cell runs twice at the same
  time, across workers and drivers. The holder refreshes the lock's modification time while it works; a lock
  whose holder died (its process is gone on the same host, or its heartbeat is older than
  ``stale_lock_seconds``) is taken over. A task that finds a live lock waits for that holder's result;
- writes the result atomically (:class:`~medsec.studies.grid.CellStore`) into the results folder, which every
  worker must see at the same path (a shared file system);
- is retried by Ray when its worker process dies (``max_retries``); an exception raised by the cell's
  function is an application error: it is reported with the cell's key, not retried, and the other cells
  finish (cells that need the failed one are reported as not run).

Dependencies (``Cell.after``) travel as Ray object refs passed to the dependent task, so Ray starts it only
once the cells it needs have finished; the driver never polls for them. Keyword arguments shared by several
cells (a config, an array) are put into the object store once and passed by reference.

Ray is optional: ``pip install 'medsec[ray]'``. Without it, asking for this executor is a one-line error.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from medsec.errors import MedsecError
from medsec.studies.grid import Cell, CellStore, GridError, GridProgress, dependency_order

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'medsec[ray]'"
_SCALARS = (str, int, float, bool, type(None), Path)


def require_ray() -> ModuleType:
    """The ray module, or a MedsecError saying what to install."""
    try:
        import ray
    except ImportError:
        raise MedsecError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """MedsecError when a Ray address (``HOST:PORT`` or ``ray://HOST:PORT``) cannot be reached over TCP.
    ``auto`` and ``local`` are Ray's own words (a running cluster on this machine / a new local one)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MedsecError(f"--address {address!r}: expected HOST:PORT or ray://HOST:PORT (or auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise MedsecError(f"--address {address}: no Ray cluster can be reached there ({e}); start one with "
                          f"`ray start --head` on that machine or check the address") from None


# --------------------------------------------------------------------------------------------------------
# the lock of one cell (runs on the workers)
# --------------------------------------------------------------------------------------------------------

def lock_path(store: CellStore, key: str) -> Path:
    """The lock file of cell `key`, beside its result file."""
    return store.path(key).with_suffix(".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CellLock:
    """An O_EXCL lock file with a heartbeat (see the module docstring). ``acquire()`` -> True when taken."""

    def __init__(self, path: Path, stale_seconds: float) -> None:
        self.path = path
        self.stale_seconds = stale_seconds
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _holder(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
            return value if isinstance(value, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written right now, or damaged: judged by its age

    def stale(self) -> bool:
        """Whether the current lock (if any) belongs to a holder that is gone."""
        holder = self._holder()
        if holder is None:
            return False
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"]):
                return True
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age > self.stale_seconds

    def acquire(self) -> bool:
        """Take the lock (True), or find it held by a live holder (False). A dead holder's lock is removed."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.stale():
                    return False
                log.warning("cell lock %s belongs to a holder that is gone; taking it over", self.path)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "started": time.time()}, fh)
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return True
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(0.5, self.stale_seconds / 4)):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (only if it is still ours)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = self._holder()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------
# the task (runs on the workers)
# --------------------------------------------------------------------------------------------------------

def run_cell_task(key: str, fn: Any, kwargs: Mapping[str, Any], folder: str, stale_seconds: float,
                  poll_seconds: float, *deps: dict[str, Any]) -> dict[str, Any]:
    """One cell on a worker: a status dict ``{"key", "ok", "result" | "error" | "blocked", "seconds"}``.

    deps: the status dicts of the cells this one needs (Ray passes them once those tasks have finished)."""
    bad = next((d for d in deps if not d.get("ok")), None)
    if bad is not None:
        return {"key": key, "ok": False, "blocked": bad.get("blocked") or bad["key"]}
    store = CellStore(folder)
    lock = CellLock(lock_path(store, key), stale_seconds)
    while True:
        got = store.get(key)
        if got is not None:
            return {"key": key, "ok": True, "result": got, "kept": True, "seconds": 0.0}
        if lock.acquire():
            break
        time.sleep(poll_seconds)  # another worker or driver holds this cell: wait for its result
    try:
        got = store.get(key)  # finished between our check and our lock
        if got is not None:
            return {"key": key, "ok": True, "result": got, "kept": True, "seconds": 0.0}
        ray = require_ray()
        args = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in kwargs.items()}
        t0 = time.perf_counter()
        try:
            result = fn(**args)
            if not isinstance(result, dict):
                raise MedsecError(f"cell {key} returned {type(result).__name__}, not a dict")
            store.put(key, result)
        except Exception as e:  # an application error: reported with the cell's key, never retried
            log.debug("cell %s failed", key, exc_info=True)
            return {"key": key, "ok": False, "error": f"{type(e).__name__}: {e}",
                    "seconds": time.perf_counter() - t0}
        return {"key": key, "ok": True, "result": result, "seconds": time.perf_counter() - t0}
    finally:
        lock.release()


def probe_folder(folder: str) -> str | None:
    """On a worker: None when `folder` exists and a file can be created in it, else what went wrong."""
    p = Path(folder)
    if not p.is_dir():
        return f"{folder} is not a folder on node {socket.gethostname()}"
    probe = p / f".medsec-probe-{uuid.uuid4().hex}"
    try:
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as e:
        return f"{folder} is not writable on node {socket.gethostname()}: {e}"
    return None


# --------------------------------------------------------------------------------------------------------
# the executor (runs on the driver)
# --------------------------------------------------------------------------------------------------------

class RayExecutor:
    """Runs a grid's cells as Ray tasks (see the module docstring).

    address: a running cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``); None starts a local Ray
      unless one is already initialised in this process;
    gpus_per_cell: GPUs each cell asks for (None: 1 when the cluster has GPUs, else 0);
    cpus_per_cell: CPUs each cell asks for;
    max_retries: how often Ray reruns a cell whose worker process died;
    stale_lock_seconds: a lock not refreshed for this long belongs to a dead holder;
    shared_folders: folders besides the results folder every worker must be able to write (the cache).
    """

    def __init__(self, address: str | None = None, *, gpus_per_cell: float | None = None,
                 cpus_per_cell: float = 1.0, max_retries: int = 3, stale_lock_seconds: float = 120.0,
                 shared_folders: Sequence[str | Path] = (), poll_seconds: float = 1.0) -> None:
        self.ray = require_ray()
        if address is not None:
            check_address(address)
        if max_retries < 0:
            raise MedsecError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.gpus_per_cell = gpus_per_cell
        self.cpus_per_cell = cpus_per_cell
        self.max_retries = max_retries
        self.stale_lock_seconds = stale_lock_seconds
        self.shared_folders = [str(f) for f in shared_folders]
        self.poll_seconds = poll_seconds

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=True)
        except Exception as e:  # ray raises ConnectionError, RuntimeError, ValueError... for a bad cluster
            raise MedsecError(f"cannot connect to Ray{f' at {self.address}' if self.address else ''}: {e}") from None

    def _check_folders(self, folders: Sequence[str]) -> None:
        """Every alive node must be able to write every shared folder: one probe task per node."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(probe_folder)
        refs = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            refs += [probe.options(num_cpus=0, scheduling_strategy=strategy).remote(f) for f in folders]
        problems = sorted({p for p in ray.get(refs) if p})
        if problems:
            raise MedsecError("the Ray workers cannot use the shared folders (results and cache must be on a "
                              "file system every node mounts at the same path): " + "; ".join(problems))

    def _prepare(self, store: CellStore) -> tuple[str, float]:
        """Connect, create and probe the shared folders; (the results folder as the workers see it, GPUs per
        cell)."""
        self._connect()
        folder = str(Path(store.folder).resolve())  # the workers' working folder is not the driver's
        for f in self.shared_folders:
            try:
                Path(f).mkdir(parents=True, exist_ok=True)  # a first run: the cache does not exist yet
            except OSError as e:
                raise MedsecError(f"cannot create the shared folder {f}: {e}") from None
        self._check_folders([folder, *self.shared_folders])
        gpus = self.gpus_per_cell
        if gpus is None:
            gpus = 1.0 if self.ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        return folder, gpus

    def _submit(self, cells: Sequence[Cell], store: CellStore, progress: GridProgress, folder: str, gpus: float,
                results: dict[str, dict[str, Any]]) -> dict[Any, str]:
        """One task per unfinished cell, in dependency order (finished ones go to `results`); ref -> key."""
        ray = self.ray
        task = ray.remote(run_cell_task)
        shared: dict[int, Any] = {}  # id(value) -> its object ref: a value shared by cells travels once

        def by_ref(v: Any) -> Any:
            if isinstance(v, _SCALARS):
                return v
            if id(v) not in shared:
                shared[id(v)] = ray.put(v)
            return shared[id(v)]

        refs: dict[str, Any] = {}
        pending: dict[Any, str] = {}
        for c in dependency_order(cells):
            got = store.get(c.key)
            if got is not None:
                results[c.key] = got
                progress.kept(c.key)
                continue
            deps = [refs[k] for k in c.after if k in refs]  # finished cells need no ref
            ref = task.options(num_cpus=self.cpus_per_cell, num_gpus=gpus, max_retries=self.max_retries,
                               retry_exceptions=False, name=f"medsec:{c.key}").remote(
                c.key, c.fn, {k: by_ref(v) for k, v in c.kwargs.items()}, folder,
                self.stale_lock_seconds, self.poll_seconds, *deps)
            refs[c.key] = ref
            pending[ref] = c.key
        return pending

    def _record(self, key: str, status: dict[str, Any], progress: GridProgress, results: dict[str, dict[str, Any]],
                failed: dict[str, str], skipped: list[str]) -> None:
        """File one finished task's status: a result, a cell blocked by a failed one, or a failure."""
        if status.get("ok"):
            results[key] = status["result"]
            if status.get("kept"):
                progress.running.discard(key)
                progress.kept(key)
            else:
                progress.finished(key, float(status.get("seconds", 0.0)))
        elif "blocked" in status:
            skipped.append(key)
            progress.running.discard(key)
            progress.blocked(key, status["blocked"])
        else:
            failed[key] = status["error"]
            progress.failure(key, status["error"], float(status.get("seconds", 0.0)))

    def run(self, cells: Sequence[Cell], store: CellStore, progress: GridProgress) -> dict[str, dict[str, Any]]:
        """Results by cell key; GridError (after every other cell finished) when cells fail."""
        ray = self.ray
        folder, gpus = self._prepare(store)
        results: dict[str, dict[str, Any]] = {}
        pending = self._submit(cells, store, progress, folder, gpus, results)
        failed: dict[str, str] = {}
        skipped: list[str] = []
        after = {c.key: c.after for c in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_seconds)
            for k in pending.values():  # a lock file shows a cell has started on some worker
                if k not in progress.running and lock_path(store, k).exists():
                    progress.started(k)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    status = ray.get(ref)
                except ray.exceptions.RayError as e:
                    # a cell whose needed cell's worker died for good fails with that error too: not run
                    unfinished = set(failed) | set(skipped) | set(pending.values())
                    bad = next((k for k in after[key] if k in unfinished), None)
                    if bad is not None:
                        skipped.append(key)
                        progress.blocked(key, bad)
                        continue
                    failed[key] = f"the Ray task failed after {self.max_retries} retries: {type(e).__name__}: " \
                                  f"{str(e).splitlines()[0] if str(e) else ''}"
                    progress.failure(key, failed[key], 0.0)
                    continue
                self._record(key, status, progress, results, failed, skipped)
        if failed:
            raise GridError(progress.title, failed, skipped)
        return results


def make_executor(name: str, address: str | None = None, *, shared_folders: Sequence[str | Path] = ()) -> Any:
    """The executor a command's ``--executor NAME [--address ADDR]`` asks for: local or ray."""
    from medsec.studies.grid import LocalExecutor

    if name == "local":
        if address is not None:
            raise MedsecError("--address is for --executor ray; the local executor runs in this process")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, shared_folders=shared_folders)
    raise MedsecError(f"unknown --executor {name!r}; expected local or ray")
