"""A gated DICOM Storage SCP (`medsec serve`): every received C-STORE instance passes the integrity gate.

The instance's bytes are taken exactly as the peer encoded them (`event.encoded_dataset()`), so the
signature is checked over what arrived. Accepted instances are stored under `store_dir` (and, with a model,
handed to inference); refused ones go to `quarantine_dir` with a JSON sidecar holding the verdict, and the
peer gets a failure status 0xC000 + the gate's exit code (e.g. 0xC00C tampered, 0xC00B unsigned; the
"Cannot understand" range of PS3.4 GG.4). With `refuse=False` a quarantined instance is acknowledged with
0x0000 instead (for peers that retry failures forever).

Signatures survive the network only in an explicit VR little endian transfer syntax (or a compressed one,
which is explicit VR LE too): the SCP offers those first. A peer that insists on implicit VR gets its data
re-encoded for verification, which keeps values but may not reproduce the signed bytes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsec.integrity.gate import Gate, Verdict

log = logging.getLogger(__name__)

OnAccept = Callable[[bytes, Path, Verdict], dict[str, Any] | None]


def _safe_name(uid: str | None, fallback: str) -> str:
    s = "".join(ch for ch in (uid or "") if ch.isdigit() or ch == ".")
    return s or fallback


class GatedStorageSCP:
    """Storage SCP whose C-STORE handler runs the gate; see the module docstring."""

    def __init__(self, gate: Gate, store_dir: str | Path, quarantine_dir: str | Path, *,
                 ae_title: str = "MEDSEC", on_accept: OnAccept | None = None, refuse: bool = True) -> None:
        self.gate = gate
        self.store_dir = Path(store_dir)
        self.quarantine_dir = Path(quarantine_dir)
        self.ae_title = ae_title
        self.on_accept = on_accept
        self.refuse = refuse
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counter = 0
        self.server: Any = None

    def handle_store(self, event: Any) -> int:
        """pynetdicom EVT_C_STORE handler: gate, then store or quarantine; returns the DIMSE status."""
        data = event.encoded_dataset(include_meta=True)
        peer = getattr(event.assoc.requestor, "ae_title", "?")
        peer = peer.decode(errors="replace") if isinstance(peer, bytes) else str(peer)
        with self._lock:
            self._counter += 1
            n = self._counter
        source = f"{peer.strip()}#{n}"
        verdict = self.gate.check_bytes(data, source)
        name = _safe_name(verdict.sop_instance_uid, f"instance-{n}") + ".dcm"
        record: dict[str, Any] = {"source": source, "sop_instance_uid": verdict.sop_instance_uid,
                                  "verdict": "accepted" if verdict.ok else "refused", "reason": verdict.reason}
        if verdict.ok:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            path = self.store_dir / name
            path.write_bytes(data)
            record["file"] = str(path)
            if self.on_accept is not None:
                try:
                    record["inference"] = self.on_accept(data, path, verdict)
                except Exception as e:  # inference trouble must not kill the association
                    log.exception("inference failed for %s", path)
                    record["inference_error"] = str(e)
            status = 0x0000
        else:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            path = self.quarantine_dir / f"{name[:-4]}.{n}.dcm"  # the same UID may arrive tampered many times
            path.write_bytes(data)
            path.with_suffix(".verdict.json").write_text(json.dumps(verdict.as_dict(), indent=2))
            record["file"] = str(path)
            status = 0xC000 + verdict.exit_code if self.refuse else 0x0000
            log.warning("refused C-STORE from %s: %s (%s)", peer, verdict.reason, verdict.message)
        record["status"] = status
        with self._lock:
            self.results.append(record)
        return status

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

    def start(self, host: str = "127.0.0.1", port: int = 11112, block: bool = False) -> Any:
        """Listen on host:port; non-blocking returns the server (call `stop()`)."""
        from pynetdicom import evt

        ae = self.application_entity()
        handlers = [(evt.EVT_C_STORE, self.handle_store)]
        self.server = ae.start_server((host, port), block=block, evt_handlers=handlers)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
