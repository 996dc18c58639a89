"""A gated DICOM Storage SCP (`medsec serve`): every received C-STORE instance passes the integrity gate.

The instance's bytes are taken exactly as the peer encoded them (`event.encoded_dataset()`), so the
signature is checked over what arrived. Accepted instances are written to `store_dir/<SOP Instance
UID>.dcm` (or, with a `Forwarder`, to its outbox, from which it forwards them to the archive), atomically
and fsync'd, before the sender gets its success status: an acknowledged instance survives a crash of the
node. An instance whose UID is already held with the same bytes is acknowledged as a duplicate and neither
stored nor forwarded again. With a model, accepted instances are handed to inference (`on_accept`).
Refused ones go to `quarantine_dir` with a JSON sidecar holding the verdict, and the peer gets a failure
status 0xC000 + the gate's exit code (e.g. 0xC00C tampered, 0xC00B unsigned; the "Cannot understand"
range of PS3.4 GG.4). With `refuse=False` a quarantined instance is acknowledged with 0x0000 instead (for
peers that retry failures forever). Every received instance gets one audit line (`event: received`) with
the verdict, what was done (`action`: stored, queued, duplicate, replaced, quarantined), the peer, and with
TLS the protocol, cipher and the peer certificate's subject.

With a TLS context (`medsec.integrity.tls.TLSConfig.server_context`) the SCP speaks only TLS: a plaintext
association request, a client without a certificate, or one the trust folder does not vouch for fails the
handshake and never reaches DICOM (logged, and an audit line `event: tls-refused`). Handshakes run in the
association's own thread with a timeout, so a client that connects and stays silent blocks nobody.

Signatures survive the network only in an explicit VR little endian transfer syntax (or a compressed one,
which is explicit VR LE too): the SCP offers those first. A peer that insists on implicit VR gets its data
re-encoded for verification, which keeps values but may not reproduce the signed bytes.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsec.integrity.errors import IntegrityError
from medsec.integrity.gate import Gate, Verdict
from medsec.integrity.rawdicom import split_meta
from medsec.integrity.tls import describe
from medsec.paths import write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    from medsec.integrity.node import Forwarder

log = logging.getLogger(__name__)

OnAccept = Callable[[bytes, Path, Verdict], dict[str, Any] | None]
HANDSHAKE_TIMEOUT_S = 10.0
# OpenSSL's reason codes for a refused handshake, in words (the code is kept in the audit line too).
TLS_REFUSALS = {
    "WRONG_VERSION_NUMBER": "not a TLS handshake (a plaintext association request?)",
    "HTTP_REQUEST": "not a TLS handshake (an HTTP request)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client presented no certificate",
    "CERTIFICATE_VERIFY_FAILED": "the client certificate is not trusted by the trust folder, expired, or "
    "not for TLS clients",
    "UNSUPPORTED_PROTOCOL": "the client offers only TLS versions below 1.2",
    "NO_SHARED_CIPHER": "no cipher suite in common with the BCP 195 list",
}


def _safe_name(uid: str | None, fallback: str) -> str:
    s = "".join(ch for ch in (uid or "") if ch.isdigit() or ch == ".")
    return s or fallback


def _same_instance(a: bytes, b: bytes) -> bool:
    """The same transfer syntax and data set bytes. The file meta is the receiver's own (pynetdicom writes
    it, with the sender's AE title), so the same instance from another sender is still the same."""
    try:
        (sa, ta), (sb, tb) = split_meta(a, "held"), split_meta(b, "received")
    except IntegrityError:
        return a == b
    return ta == tb and a[sa:] == b[sb:]


class GatedStorageSCP:
    """Storage SCP whose C-STORE handler runs the gate; see the module docstring."""

    def __init__(self, gate: Gate, store_dir: str | Path, quarantine_dir: str | Path, *,
                 ae_title: str = "MEDSEC", on_accept: OnAccept | None = None, refuse: bool = True,
                 forwarder: Forwarder | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.gate = gate
        self.store_dir = Path(store_dir)
        self.quarantine_dir = Path(quarantine_dir)
        self.ae_title = ae_title
        self.on_accept = on_accept
        self.refuse = refuse
        self.forwarder = forwarder
        self.ssl_context = ssl_context
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._uid_locks: dict[str, list[Any]] = {}  # UID -> [lock, users]
        self._counter = 0
        self.server: Any = None
        for folder in (self.store_dir, self.quarantine_dir):  # writes a crash cut short: never acknowledged
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                tmp.unlink(missing_ok=True)

    def audit(self, record: dict[str, Any]) -> None:
        """One line in the gate's audit log (when it has one)."""
        if self.gate.audit is not None:
            self.gate.audit.append(record)

    def _keep(self, data: bytes, name: str) -> tuple[str, Path]:
        """Store an accepted instance durably; returns (action, path). Instances with the same UID are
        stored one after the other; different UIDs are written (and fsync'd) concurrently."""
        done = self.store_dir / name
        target = self.forwarder.outbox / name if self.forwarder is not None else done
        action = "queued" if self.forwarder is not None else "stored"
        with self._store_lock:
            lock = self._uid_locks.setdefault(name, [threading.Lock(), 0])
            lock[1] += 1
        try:
            with lock[0]:
                for held in dict.fromkeys((target, done)):
                    try:
                        same = _same_instance(held.read_bytes(), data)
                    except FileNotFoundError:
                        continue
                    if same:
                        return "duplicate", held
                    action = "replaced"  # same UID, other bytes (both validly signed): the newer one wins
                write_bytes_atomic(target, data, durable=True)
        finally:
            with self._store_lock:
                lock[1] -= 1
                if not lock[1]:
                    del self._uid_locks[name]
        if self.forwarder is not None:
            self.forwarder.notify(target)
        return action, target

    def handle_store(self, event: Any) -> int:
        """pynetdicom EVT_C_STORE handler: gate, then store or quarantine; returns the DIMSE status."""
        data = event.encoded_dataset(include_meta=True)
        peer = getattr(event.assoc.requestor, "ae_title", "?")
        peer = peer.decode(errors="replace") if isinstance(peer, bytes) else str(peer)
        with self._lock:
            self._counter += 1
            n = self._counter
        source = f"{peer.strip()}#{n}"
        verdict = self.gate.verdict_bytes(data, source)
        name = _safe_name(verdict.sop_instance_uid, f"instance-{uuid.uuid4().hex}") + ".dcm"
        record: dict[str, Any] = {"event": "received", "source": source,
                                  "sop_instance_uid": verdict.sop_instance_uid,
                                  "verdict": "accepted" if verdict.ok else "refused", "reason": verdict.reason,
                                  "signer": verdict.signer, "peer": event.assoc.requestor.address}
        record.update(describe(getattr(getattr(event.assoc.dul, "socket", None), "socket", None)))
        try:
            status = self._decide(data, name, verdict, record, peer)
        except OSError as e:  # the local store cannot take it (disk full, permissions): not acknowledged
            log.error("cannot store %s from %s: %s", verdict.sop_instance_uid, peer, e)
            record.update(action="not-stored", error=f"{e.strerror or e}")
            status = 0xA700  # Refused: out of resources (PS3.4 B.2.3); the sender keeps it and retries
        record["status"] = status
        self.audit(record)
        with self._lock:
            self.results.append(record)
        return status

    def _decide(self, data: bytes, name: str, verdict: Verdict, record: dict[str, Any], peer: str) -> int:
        """Store or quarantine, durably; fills `record`; returns the DIMSE status."""
        if verdict.ok:
            action, path = self._keep(data, name)
            record.update(action=action, file=str(path))
            if self.on_accept is not None and action != "duplicate":
                try:
                    record["inference"] = self.on_accept(data, path, verdict)
                except Exception as e:  # inference trouble must not kill the association
                    log.exception("inference failed for %s", path)
                    record["inference_error"] = str(e)
            status = 0x0000
        else:
            # a unique name: the same UID may arrive tampered many times, across restarts too
            path = self.quarantine_dir / f"{name[:-4]}.{uuid.uuid4().hex[:12]}.dcm"
            write_bytes_atomic(path, data, durable=True)
            write_text_atomic(path.with_suffix(".verdict.json"), json.dumps(verdict.as_dict(), indent=2))
            record.update(action="quarantined", file=str(path), message=verdict.message)
            status = 0xC000 + verdict.exit_code if self.refuse else 0x0000
            log.warning("refused C-STORE from %s: %s (%s)", peer, verdict.reason, verdict.message)
        return status

    def tls_refused(self, address: Any, error: BaseException) -> None:
        """A TLS handshake failed (plaintext, no or untrusted client certificate, protocol/cipher mismatch)."""
        code = getattr(error, "reason", None) or type(error).__name__
        reason = TLS_REFUSALS.get(str(code), str(code))
        detail = getattr(error, "verify_message", None)
        if detail:
            reason += f" ({detail})"
        if isinstance(error, TimeoutError | socket.timeout):
            reason = f"no TLS handshake within {HANDSHAKE_TIMEOUT_S:g} s"
        log.warning("TLS handshake with %s refused: %s", address, reason)
        host, port = (address[0], address[1]) if isinstance(address, tuple) else (str(address), None)
        self.audit({"event": "tls-refused", "peer": host, "peer_port": port, "reason": reason, "code": str(code)})

    def application_entity(self) -> Any:
        """A pynetdicom AE offering every storage SOP class, explicit VR LE and common compressed syntaxes
        first (so signed bytes arrive as signed)."""
        from pydicom.uid import (
            DeflatedExplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
            JPEG2000Lossless,
            JPEGBaseline8Bit,
            JPEGLosslessSV1,
            RLELossless,
        )
        from pynetdicom import AE, StoragePresentationContexts
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.ae_title)
        syntaxes = [ExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEG2000Lossless,
                    DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian]
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        return ae

    def start(self, host: str = "127.0.0.1", port: int = 11112, block: bool = False,
              listening: Callable[[], None] | None = None) -> Any:
        """Listen on host:port (TLS only when the SCP has an ssl_context), one thread per association;
        non-blocking returns the server (call `stop()`), blocking serves until interrupted. `listening` is
        called once the socket is bound and listening (associations are then queued, not refused)."""
        from pynetdicom import evt

        ae = self.application_entity()
        handlers = [(evt.EVT_C_STORE, self.handle_store)]
        server = ae.make_server((host, port), evt_handlers=handlers, ssl_context=self.ssl_context,
                                server_class=_server_class())
        server.on_tls_refused = self.tls_refused
        ae._servers.append(server)  # as AE.start_server does: server.shutdown() takes it off this list
        self.server = server
        if listening is not None:
            listening()
        if block:
            try:
                server.serve_forever()
            finally:
                self.stop()
            return None
        threading.Thread(target=server.serve_forever, name="medsec-scp", daemon=True).start()
        return server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


_SERVER_CLASS: Any = None


def _server_class() -> Any:
    """pynetdicom's threaded association server, with the TLS handshake moved from the accepting thread
    (where pynetdicom does it, so one silent client would stall every other) into the association's own
    thread, bounded by HANDSHAKE_TIMEOUT_S, and refusals reported to `on_tls_refused`."""
    global _SERVER_CLASS
    if _SERVER_CLASS is not None:
        return _SERVER_CLASS
    from pynetdicom.transport import ThreadedAssociationServer

    class TLSHandshakeInThreadServer(ThreadedAssociationServer):  # type: ignore[misc]
        on_tls_refused: Callable[[Any, BaseException], None] | None = None

        def get_request(self) -> tuple[Any, Any]:
            client, address = self.socket.accept()  # type: ignore[union-attr]
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            return client, address

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see node.disable_nagle
            if isinstance(request, ssl.SSLSocket):
                try:
                    request.settimeout(HANDSHAKE_TIMEOUT_S)
                    request.do_handshake()
                    request.settimeout(None)
                except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                    if self.on_tls_refused is not None:
                        self.on_tls_refused(client_address, e)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)

    _SERVER_CLASS = TLSHandshakeInThreadServer
    return _SERVER_CLASS
