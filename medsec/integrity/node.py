"""Durable store-and-forward from the medsec node to the archive (a PACS such as Orthanc).

The gated SCP (`medsec.integrity.scp`) writes every accepted instance to `STORE/outbox/<SOP Instance
UID>.dcm` (atomically, fsync'd) before it acknowledges the sender. The `Forwarder` workers send the outbox
to the archive with C-STORE (TCP_NODELAY, parallel associations), the bytes exactly as received (so the
signature still verifies there), over TLS when configured; when the archive acknowledges an instance it is
moved to `STORE/<UID>.dcm`, the local copy. The state is therefore on disk, not in memory:

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

import collections
import json
import logging
import os
import socket
import ssl
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


def disable_nagle(event: Any) -> None:
    """pynetdicom EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket. pynetdicom leaves Nagle's
    algorithm on, and a C-STORE (command PDU, then data PDU, then wait for the response) then stalls on
    the peer's delayed ACK: ~40 ms per instance on loopback, measured. DCMTK disables it likewise."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ArchiveUnavailable(MedsecError):
    """No association with the archive (refused, unreachable, TLS refused, rejected or aborted)."""


class _Link:
    """One association to the archive (one per worker), with the presentation contexts it offered."""

    def __init__(self) -> None:
        self.assoc: Any = None
        self.contexts: set[tuple[str, str]] = set()
        self.last_used = 0.0

    def close(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            finally:
                self.assoc = None


class Forwarder:
    """Sends `STORE/outbox/` to the archive, oldest first, durably; see the module docstring.

    `workers` associations send in parallel (an archive stores concurrent associations faster than one:
    Orthanc took 4 parallel senders at 3.5x the rate of one, measured here). An association idle for
    `idle_release_s` is released, so the archive is never held open (Orthanc waits for open associations
    when it shuts down)."""

    def __init__(self, store_dir: str | Path, archive: Archive, *, calling_ae_title: str = "MEDSEC",
                 tls: TLSConfig | None = None, audit: Any = None, workers: int = 4, max_attempts: int = 5,
                 retry_min_s: float = 0.2, retry_max_s: float = 5.0, network_timeout_s: float = 30.0,
                 idle_release_s: float = 1.0) -> None:
        if workers < 1:
            raise MedsecError(f"forwarding needs at least one association (workers={workers})")
        self.store_dir = Path(store_dir)
        self.outbox = self.store_dir / "outbox"
        self.failed_dir = self.store_dir / "failed"
        self.archive = archive
        self.calling_ae_title = calling_ae_title
        self.tls = tls
        self.audit = audit  # a callable(record: dict) -> None, e.g. the SCP's audit writer
        self.workers = workers
        self.max_attempts = max_attempts
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.network_timeout_s = network_timeout_s
        self.idle_release_s = idle_release_s
        self._ssl = tls.client_context() if tls is not None else None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue: collections.deque[Path] = collections.deque()  # mirrors the outbox, oldest first
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._down_since: float | None = None
        self.sent = 0
        for d in (self.store_dir, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
        for tmp in self.outbox.glob(".*.tmp"):  # a write cut short by a crash: never acknowledged
            tmp.unlink(missing_ok=True)
        for p in self.pending():  # what a previous run left: resumed first
            self._enqueue(p)

    # -- the queue -----------------------------------------------------------------------------
    def pending(self) -> list[Path]:
        """Outbox instances on disk, oldest first."""
        items = []
        for p in self.outbox.glob("*.dcm"):
            try:
                items.append((p.stat().st_mtime_ns, p))
            except FileNotFoundError:  # moved by a send meanwhile
                continue
        return [p for _, p in sorted(items)]

    def _enqueue(self, path: Path) -> None:
        if path.name not in self._queued and path.name not in self._busy:
            self._queued.add(path.name)
            self._queue.append(path)

    def notify(self, path: Path | None = None) -> None:
        """`path` was written to the outbox (None: rescan the outbox)."""
        with self._lock:
            for p in [path] if path is not None else self.pending():
                self._enqueue(p)
            self._wake.notify()

    def _claim(self, timeout: float) -> Path | None:
        """The oldest queued instance no worker is sending and not waiting for a retry, or None."""
        with self._lock:
            end = time.monotonic() + timeout
            while not self._stop.is_set():
                now = time.monotonic()
                for _ in range(len(self._queue)):
                    p = self._queue.popleft()
                    if self._not_before.get(p.name, 0.0) > now:
                        self._queue.append(p)
                        continue
                    self._queued.discard(p.name)
                    self._busy.add(p.name)
                    return p
                if now >= end:
                    return None
                self._wake.wait(min(end - now, 0.2))
            return None

    def _release(self, path: Path, requeue: bool, delay: float = 0.0) -> None:
        with self._lock:
            self._busy.discard(path.name)
            if requeue and path.exists():
                if delay:
                    self._not_before[path.name] = time.monotonic() + delay
                self._enqueue(path)
                self._queue.rotate(0 if delay else 1)  # a retry waits at the back; a broken send goes first
                self._wake.notify()
            else:
                self._not_before.pop(path.name, None)

    def wait_idle(self, timeout: float) -> bool:
        """Block until the outbox is empty (True) or `timeout` seconds pass (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.pending():
                return True
            time.sleep(0.05)
        return not self.pending()

    # -- associations --------------------------------------------------------------------------
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
        from pynetdicom import evt

        kwargs: dict[str, Any] = {"ae_title": self.archive.ae_title,
                                  "evt_handlers": [(evt.EVT_CONN_OPEN, disable_nagle)]}
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
            try:
                with socket.create_connection((self.archive.host, self.archive.port), timeout=5) as raw, \
                        self._ssl.wrap_socket(raw, server_hostname=self.archive.host):
                    pass
            except ssl.SSLCertVerificationError as e:
                return f"presented a TLS certificate this node does not accept ({e.verify_message})"
            except ssl.SSLError as e:
                return f"refused the TLS handshake ({e.reason or e}): does it speak TLS?"
            except OSError as e:
                return f"broke off the TLS handshake ({e.strerror or e}): does it speak TLS?"
            return ("completed the TLS handshake but not the association (does it trust this node's certificate "
                    "and accept its AE title?)")
        return "accepted the connection but aborted the association (does it expect TLS?)"

    def _association_for(self, link: _Link, context: tuple[str, str]) -> Any:
        if link.assoc is not None and link.assoc.is_established and context in link.contexts:
            return link.assoc
        link.close()
        from pynetdicom import AE

        link.contexts.add(context)
        with self._lock:
            queued = list(self._queue)[:200]
        for p in queued:  # offer what is queued, so one association serves the backlog
            if len(link.contexts) >= 120:
                break
            c = _context_of(p)
            if c is not None:
                link.contexts.add(c)
        ae = AE(ae_title=self.calling_ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.network_timeout_s
        for sop_class, syntax in sorted(link.contexts):
            ae.add_requested_context(sop_class, syntax)
        link.assoc = self._associate(ae)
        return link.assoc

    # -- sending -------------------------------------------------------------------------------
    def _record(self, event: str, uid: str, **extra: Any) -> None:
        if self.audit is not None:
            self.audit({"event": event, "sop_instance_uid": uid, "archive": str(self.archive), **extra})

    def send_one(self, path: Path, link: _Link) -> str:
        """Send one outbox file: 'forwarded', 'retry' (failure status, kept), or 'failed' (given up).
        Raises ArchiveUnavailable when there is no association or it broke during the send."""
        uid = path.stem
        context = _context_of(path)
        if context is None:  # unreadable meta: cannot happen for what the gate accepted; keep it aside
            return self._give_up(path, uid, "the queued file has no readable File Meta Information")
        assoc = self._association_for(link, context)
        t0 = time.perf_counter()
        try:
            rsp = assoc.send_c_store(path)
        except (OSError, RuntimeError, ValueError) as e:
            link.close()
            raise ArchiveUnavailable(f"archive {self.archive}: C-STORE of {uid} failed ({e})") from e
        finally:
            link.last_used = time.monotonic()
        if not rsp or "Status" not in rsp:  # no response: the association broke (archive stopped, timeout)
            link.close()
            raise ArchiveUnavailable(f"archive {self.archive} gave no C-STORE response for {uid}")
        status = int(rsp.Status)
        if status in STORED:
            dest = self.store_dir / path.name
            # audit first, then move: a crash in between resends it, and the log shows both sends
            self._record("forwarded", uid, status=status, file=str(dest),
                         seconds=round(time.perf_counter() - t0, 4))
            os.replace(path, dest)
            fsync_dir(self.store_dir)
            fsync_dir(self.outbox)
            with self._lock:
                self._failures.pop(uid, None)
                self.sent += 1
            return "forwarded"
        with self._lock:
            n = self._failures[uid] = self._failures.get(uid, 0) + 1
        if n >= self.max_attempts:
            return self._give_up(path, uid, f"archive answered status 0x{status:04X} {n} times", status)
        self._record("forward-retry", uid, status=status, attempt=n)
        return "retry"

    def _give_up(self, path: Path, uid: str, reason: str, status: int | None = None) -> str:
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        dest = self.failed_dir / path.name
        write_text_atomic(dest.with_suffix(".json"),
                          json.dumps({"sop_instance_uid": uid, "reason": reason, "status": status}) + "\n")
        os.replace(path, dest)
        fsync_dir(self.failed_dir)
        fsync_dir(self.outbox)
        with self._lock:
            self._failures.pop(uid, None)
        log.error("giving up forwarding %s: %s", uid, reason)
        self._record("forward-failed", uid, status=status, reason=reason, file=str(dest))
        return "failed"

    def _outage(self, error: ArchiveUnavailable) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
        if first:
            n = len(self.pending())
            log.warning("%s; %d instance(s) wait in %s and will be forwarded when it answers", error, n, self.outbox)
            self._record("archive-unreachable", "", reason=str(error), pending=n)

    def _recovered(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("archive %s answers again after %.1f s", self.archive, time.monotonic() - since)

    def _work(self) -> None:
        link, delay = _Link(), self.retry_min_s
        while not self._stop.is_set():
            path = self._claim(timeout=self.idle_release_s)
            if path is None:
                link.close()  # idle: do not hold the archive's association open
                continue
            if not path.exists():
                self._release(path, requeue=False)
                continue
            try:
                result = self.send_one(path, link)
            except ArchiveUnavailable as e:
                self._release(path, requeue=True)
                self._outage(e)
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            except Exception:  # a bug must not stop forwarding for good: log, back off, go on
                log.exception("forwarder error on %s", path)
                link.close()
                self._release(path, requeue=True, delay=self.retry_max_s)
                continue
            self._recovered()
            delay = self.retry_min_s
            self._release(path, requeue=result == "retry", delay=self.retry_max_s)
        link.close()

    def run_once(self, timeout: float = 30.0) -> None:
        """Send what is queued now on this thread (without starting workers); for tests and tools."""
        link = _Link()
        try:
            while (path := self._claim(timeout=0)) is not None:
                try:
                    result = self.send_one(path, link)
                except BaseException:
                    self._release(path, requeue=True)
                    raise
                self._release(path, requeue=result == "retry", delay=self.retry_max_s)
        finally:
            link.close()

    def start(self) -> None:
        """Start the workers (they first resume whatever a previous run left in the outbox)."""
        if not self._threads:
            self._stop.clear()
            self._threads = [threading.Thread(target=self._work, name=f"medsec-forwarder-{i}", daemon=True)
                             for i in range(self.workers)]
            for t in self._threads:
                t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the sends in progress; what is still pending stays in the outbox for the next run."""
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []


def _context_of(path: Path) -> tuple[str, str] | None:
    """(SOP Class UID, Transfer Syntax UID) from a Part-10 file's meta information."""
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - any parse problem means the same thing here
        return None
