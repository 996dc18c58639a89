"""Durable store-and-forward from the medsec node to the archive (a PACS such as Orthanc).

The gated SCP (`medsec.integrity.scp`) writes every accepted instance to `STORE/outbox/<SOP Instance
UID>.dcm` (atomically, fsync'd) before it acknowledges the sender. The `Forwarder` thread sends the outbox
to the archive with C-STORE, the bytes exactly as received (so the signature still verifies there), over
TLS when configured; when the archive acknowledges an instance it is moved to `STORE/<UID>.dcm`, the
local copy. The state is therefore on disk, not in memory:

- `STORE/outbox/<UID>.dcm`: accepted, not yet acknowledged by the archive. A node restart resumes these.
- `STORE/<UID>.dcm`: acknowledged by the archive (kept as the local copy).
- `STORE/failed/<UID>.dcm` + `.json`: the archive refused it with a failure status `max_attempts` times.

An unreachable archive (connection refused, TLS refused, association rejected or aborted) is retried
with exponential back-off (`retry_min_s` .. `retry_max_s`) for as long as it takes; nothing is dropped.
The one window where an instance is sent twice is a crash after the archive stored it and before the
move out of the outbox: the restarted node sends it again, and the archive, which identifies instances
by SOP Instance UID, keeps one copy (Orthanc answers success and stores nothing new). Every send is in
the audit log (`event: forwarded | forward-retry | forward-failed | archive-unreachable`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.errors import MedsecError
from medsec.integrity.tls import TLSConfig
from medsec.paths import fsync_dir, write_text_atomic

log = logging.getLogger(__name__)

# DIMSE C-STORE statuses that mean "stored" (PS3.4 B.2.3: success and the three warnings).
STORED = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Archive:
    """Where accepted instances go: AE title, host and port (`AET@host:port`)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Archive:
        """`AET@host:port` (e.g. `ORTHANC@127.0.0.1:4242`); a clear error for anything else."""
        aet, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not at or not colon or not aet or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise MedsecError(f"archive {text!r}: expected AET@host:port, e.g. ORTHANC@127.0.0.1:4242")
        if len(aet) > 16:
            raise MedsecError(f"archive {text!r}: an AE title has at most 16 characters")
        return cls(aet, host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class ArchiveUnavailable(MedsecError):
    """No association with the archive (refused, unreachable, TLS refused, rejected or aborted)."""


class Forwarder:
    """Sends `STORE/outbox/` to the archive in arrival order, durably; see the module docstring."""

    def __init__(self, store_dir: str | Path, archive: Archive, *, calling_ae_title: str = "MEDSEC",
                 tls: TLSConfig | None = None, audit: Any = None, max_attempts: int = 5,
                 retry_min_s: float = 0.2, retry_max_s: float = 5.0, network_timeout_s: float = 30.0) -> None:
        self.store_dir = Path(store_dir)
        self.outbox = self.store_dir / "outbox"
        self.failed_dir = self.store_dir / "failed"
        self.archive = archive
        self.calling_ae_title = calling_ae_title
        self.tls = tls
        self.audit = audit  # a callable(record: dict) -> None, e.g. the SCP's audit writer
        self.max_attempts = max_attempts
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.network_timeout_s = network_timeout_s
        self._ssl = tls.client_context() if tls is not None else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._assoc: Any = None
        self._contexts: set[tuple[str, str]] = set()
        self._failures: dict[str, int] = {}
        self.sent = 0
        for d in (self.store_dir, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
        for tmp in self.outbox.glob(".*.tmp"):  # a write cut short by a crash: never acknowledged
            tmp.unlink(missing_ok=True)

    # -- the queue on disk ---------------------------------------------------------------------
    def pending(self) -> list[Path]:
        """Outbox instances, oldest first."""
        items = []
        for p in self.outbox.glob("*.dcm"):
            try:
                items.append((p.stat().st_mtime_ns, p))
            except FileNotFoundError:  # moved by a send meanwhile
                continue
        return [p for _, p in sorted(items)]

    def notify(self) -> None:
        """Something was added to the outbox."""
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Block until the outbox is empty (True) or `timeout` seconds pass (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.pending():
                return True
            time.sleep(0.05)
        return not self.pending()

    # -- the association -----------------------------------------------------------------------
    def echo(self) -> None:
        """C-ECHO the archive; raises ArchiveUnavailable with the reason when it does not answer."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.calling_ae_title)
        ae.network_timeout = ae.acse_timeout = self.network_timeout_s
        ae.add_requested_context(Verification)
        assoc = self._associate(ae)
        try:
            status = assoc.send_c_echo()
            if not status or int(status.Status) != 0:
                raise ArchiveUnavailable(f"archive {self.archive} did not answer C-ECHO")
        finally:
            assoc.release()

    def _associate(self, ae: Any) -> Any:
        kwargs: dict[str, Any] = {"ae_title": self.archive.ae_title}
        if self._ssl is not None:
            kwargs["tls_args"] = (self._ssl, self.archive.host)
        try:
            assoc = ae.associate(self.archive.host, self.archive.port, **kwargs)
        except OSError as e:  # e.g. an unresolvable host name
            raise ArchiveUnavailable(f"archive {self.archive}: {e}") from e
        if not assoc.is_established:
            raise ArchiveUnavailable(f"archive {self.archive} {self._why_not(assoc)}")
        return assoc

    def _why_not(self, assoc: Any) -> str:
        """Why an association failed, in words: probe the TCP port to tell 'down' from 'refused us'."""
        if assoc.is_rejected:
            return "rejected the association (is this node's AE title known to it?)"
        try:
            socket.create_connection((self.archive.host, self.archive.port), timeout=5).close()
        except OSError as e:
            return f"is unreachable ({e.strerror or e})"
        if self._ssl is not None:
            return ("accepted the connection but the TLS handshake or association failed (does it speak TLS, "
                    "and do its trust folder and ours hold each other's certificates or CAs?)")
        return "accepted the connection but aborted the association (does it expect TLS?)"

    def _association_for(self, context: tuple[str, str]) -> Any:
        if self._assoc is not None and self._assoc.is_established and context in self._contexts:
            return self._assoc
        self._close()
        from pynetdicom import AE

        self._contexts.add(context)
        for p in self.pending()[:200]:  # offer what is queued, so one association serves the backlog
            if len(self._contexts) >= 120:
                break
            c = _context_of(p)
            if c is not None:
                self._contexts.add(c)
        ae = AE(ae_title=self.calling_ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.network_timeout_s
        for sop_class, syntax in sorted(self._contexts):
            ae.add_requested_context(sop_class, syntax)
        self._assoc = self._associate(ae)
        return self._assoc

    def _close(self) -> None:
        if self._assoc is not None:
            try:
                if self._assoc.is_established:
                    self._assoc.release()
            finally:
                self._assoc = None

    # -- the worker ----------------------------------------------------------------------------
    def _record(self, event: str, uid: str, **extra: Any) -> None:
        if self.audit is not None:
            self.audit({"event": event, "sop_instance_uid": uid, "archive": str(self.archive), **extra})

    def send_one(self, path: Path) -> str:
        """Send one outbox file: 'forwarded', 'retry' (failure status, kept), or 'failed' (given up).
        Raises ArchiveUnavailable when there is no association or it broke during the send."""
        uid = path.stem
        context = _context_of(path)
        if context is None:  # unreadable meta: cannot happen for what the gate accepted; keep it aside
            return self._give_up(path, uid, "the queued file has no readable File Meta Information")
        assoc = self._association_for(context)
        t0 = time.perf_counter()
        try:
            rsp = assoc.send_c_store(path)
        except (OSError, RuntimeError, ValueError) as e:
            self._close()
            raise ArchiveUnavailable(f"archive {self.archive}: C-STORE of {uid} failed ({e})") from e
        if not rsp or "Status" not in rsp:  # no response: the association broke (archive stopped, timeout)
            self._close()
            raise ArchiveUnavailable(f"archive {self.archive} gave no C-STORE response for {uid}")
        status = int(rsp.Status)
        if status in STORED:
            dest = self.store_dir / path.name
            os.replace(path, dest)
            fsync_dir(self.store_dir)
            fsync_dir(self.outbox)
            self._failures.pop(uid, None)
            self.sent += 1
            self._record("forwarded", uid, status=status, file=str(dest),
                         seconds=round(time.perf_counter() - t0, 4))
            return "forwarded"
        n = self._failures[uid] = self._failures.get(uid, 0) + 1
        if n >= self.max_attempts:
            return self._give_up(path, uid, f"archive answered status 0x{status:04X} {n} times", status)
        self._record("forward-retry", uid, status=status, attempt=n)
        return "retry"

    def _give_up(self, path: Path, uid: str, reason: str, status: int | None = None) -> str:
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        dest = self.failed_dir / path.name
        write_text_atomic(dest.with_suffix(".json"), f'{{"sop_instance_uid": "{uid}", "reason": "{reason}"}}\n')
        os.replace(path, dest)
        fsync_dir(self.failed_dir)
        fsync_dir(self.outbox)
        self._failures.pop(uid, None)
        log.error("giving up forwarding %s: %s", uid, reason)
        self._record("forward-failed", uid, status=status, reason=reason, file=str(dest))
        return "failed"

    def run_once(self) -> int:
        """Send everything pending now; returns how many the archive refused this time (kept for a retry).
        Raises ArchiveUnavailable when there is no association (the caller backs off)."""
        retries = 0
        for path in self.pending():
            if self._stop.is_set():
                break
            if path.exists():
                retries += self.send_one(path) == "retry"
        return retries

    def _run(self) -> None:
        delay = self.retry_min_s
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                retries = self.run_once()
            except ArchiveUnavailable as e:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("%s; %d instance(s) wait in %s and will be forwarded when it answers",
                                e, len(self.pending()), self.outbox)
                    self._record("archive-unreachable", "", reason=str(e), pending=len(self.pending()))
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            except Exception:  # a bug must not stop forwarding for good: log, back off, go on
                log.exception("forwarder error")
                self._close()
                self._stop.wait(self.retry_max_s)
                continue
            if down_since is not None:
                log.warning("archive %s answers again after %.1f s", self.archive, time.monotonic() - down_since)
                down_since = None
            delay = self.retry_min_s
            if retries:
                self._stop.wait(self.retry_max_s)
            elif not self.pending():
                self._idle.set()
                self._wake.wait(1.0)
                self._wake.clear()

    def start(self) -> None:
        """Start the worker thread (it first resumes whatever a previous run left in the outbox)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="medsec-forwarder", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the send in progress; what is still pending stays in the outbox for the next run."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close()


def _context_of(path: Path) -> tuple[str, str] | None:
    """(SOP Class UID, Transfer Syntax UID) from a Part-10 file's meta information."""
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - any parse problem means the same thing here
        return None
