"""The integrity gate: a DICOM file reaches a model only with a valid, trusted signature over its pixels.

`check(path, trust) -> Verdict` is the one entry point; `require_signed` raises `RefusedError` for a
refused file, and `Gate` keeps a trust store and an audit log for repeated use (inference, the Storage
SCP). A file passes only when some signature in its main data set is cryptographically valid, its signer
chains to the trust store, every certificate is inside its validity period now, and it covers Pixel Data,
the SOP/Study/Series Instance UIDs and the pixel interpretation attributes present (Rows, Columns,
Samples per Pixel, Photometric Interpretation, Bits Allocated/Stored, High Bit, Pixel Representation,
Planar Configuration, Number of Frames: unsigned, they would let an attacker rescale, invert or reshape
signed pixels); and no signature anywhere in the file fails to verify.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsec.integrity import rawdicom as rd
from medsec.integrity.errors import IntegrityError, UnreadableFileError
from medsec.integrity.keys import TrustStore
from medsec.integrity.signature import SignatureReport, verify_dicom

# Exit codes of `medsec verify` (and `medsec infer --require-signature`), one per reason.
EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "unreadable": 10,
    "unsigned": 11,
    "tampered": 12,
    "untrusted": 13,
    "cert-time": 14,
    "pixels-not-covered": 15,
    "unsupported": 16,
    "timestamp": 17,
}
REASON_TEXT: dict[str, str] = {
    "ok": "valid trusted signature covering Pixel Data and the SOP/Study/Series Instance UIDs",
    "unreadable": "not a readable DICOM file (not DICOM, truncated or malformed)",
    "unsigned": "the file carries no digital signature",
    "tampered": "a signature does not verify: signed content was changed, or the signature is malformed",
    "untrusted": "signatures verify but no signer is trusted by the trust store",
    "cert-time": "the trusted signer's certificate (or its CA) is expired or not yet valid",
    "pixels-not-covered": "valid trusted signature(s), but none covers Pixel Data, its interpretation "
    "attributes (Rows, Columns, bits, photometric interpretation, ...) and the SOP/Study/Series Instance UIDs",
    "unsupported": "a signature uses an algorithm this machine cannot check (e.g. RIPEMD-160 missing)",
    "timestamp": "a certified timestamp (RFC 3161) does not verify: altered, issued for another signature, "
    "or its timestamp authority is not trusted",
}


class RefusedError(IntegrityError):
    """Raised by `require_signed` for a file the gate refuses; carries the verdict."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"{verdict.file}: refused ({verdict.reason}): {verdict.message}")
        self.verdict = verdict
        self.exit_code = verdict.exit_code


@dataclass
class Verdict:
    """The gate's decision for one file."""

    file: str
    reason: str
    message: str
    sop_instance_uid: str | None = None
    signer: str | None = None
    signatures: list[SignatureReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason == "ok"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.reason]

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "verdict": "accepted" if self.ok else "refused",
            "reason": self.reason,
            "exit_code": self.exit_code,
            "message": self.message,
            "sop_instance_uid": self.sop_instance_uid,
            "signer": self.signer,
            "signatures": [s.as_dict() for s in self.signatures],
        }


def decide(reports: list[SignatureReport]) -> tuple[str, str, str | None]:
    """(reason, message, signer) from the per-signature reports (see the module docstring)."""
    if not reports:
        return "unsigned", REASON_TEXT["unsigned"], None
    for r in reports:
        if r.status in ("tampered", "malformed"):
            return "tampered", f"signature {r.uid or '?'} ({r.location}): {r.reason}", r.signer
    for r in reports:
        if r.status == "unsupported":
            return "unsupported", f"signature {r.uid or '?'} ({r.location}): {r.reason}", r.signer
    trusted = [r for r in reports if r.trusted]
    if not trusted:
        return "untrusted", reports[0].reason, reports[0].signer
    for r in reports:
        if r.timestamp is not None and not r.timestamp["valid"]:
            return "timestamp", f"signature {r.uid or '?'} ({r.location}): {r.timestamp['reason']}", r.signer
    in_time = [r for r in trusted if r.time_valid]
    if not in_time:
        return "cert-time", trusted[0].reason, trusted[0].signer
    covering = [r for r in in_time if r.covers_pixels_and_uids]
    if not covering:
        return "pixels-not-covered", REASON_TEXT["pixels-not-covered"], in_time[0].signer
    return "ok", f"signed by {covering[0].signer} at {covering[0].datetime} ({covering[0].mac})", covering[0].signer


def _trust(trust: TrustStore | str | Path | None) -> TrustStore | None:
    if trust is None or isinstance(trust, TrustStore):
        return trust
    return TrustStore.load(trust)


def check_parsed(df: rd.DicomFile, trust: TrustStore | None, at: dt.datetime | None = None,
                 tsa_trust: TrustStore | None = None) -> Verdict:
    """The verdict for an already-parsed file (certified timestamps checked against `tsa_trust`,
    default `trust`)."""
    reports = verify_dicom(df, trust, at, tsa_trust)
    reason, message, signer = decide(reports)
    return Verdict(df.source, reason, message, df.text(0x00080018), signer, reports)


def check_bytes(data: bytes, trust: TrustStore | str | Path | None, source: str = "<bytes>",
                at: dt.datetime | None = None, tsa_trust: TrustStore | str | Path | None = None) -> Verdict:
    """The verdict for a Part-10 file held in memory (e.g. received over the network)."""
    store = _trust(trust)
    try:
        df = rd.parse(data, source)
    except UnreadableFileError as e:
        return Verdict(source, "unreadable", str(e))
    return check_parsed(df, store, at, _trust(tsa_trust))


def check(path: str | Path, trust: TrustStore | str | Path | None, at: dt.datetime | None = None,
          tsa_trust: TrustStore | str | Path | None = None) -> Verdict:
    """THE gate: verify every signature of the DICOM file at `path` against `trust` (a TrustStore, a
    certificate file or a folder of them) and decide whether its pixels may be used. Certified timestamps
    are checked against `tsa_trust` when given, else `trust`. Never raises for a bad file: unreadable
    input gives reason 'unreadable'."""
    store = _trust(trust)
    try:
        df = rd.read(str(path))
    except UnreadableFileError as e:
        return Verdict(str(path), "unreadable", str(e))
    return check_parsed(df, store, at, _trust(tsa_trust))


def with_timestamp_required(v: Verdict) -> Verdict:
    """`v`, or when it accepts the file but no accepting signature (valid, trusted, covering the pixels)
    carries a valid certified timestamp, a refusal with reason 'timestamp' (dcmsign's --require-ts)."""
    if not v.ok or any(s.status == "valid" and s.covers_pixels_and_uids and s.timestamp and s.timestamp["valid"]
                       for s in v.signatures):
        return v
    return Verdict(v.file, "timestamp", "a certified timestamp is required and no accepted signature carries one",
                   v.sop_instance_uid, v.signer, v.signatures)


class AuditLog:
    """Append-only JSON-lines audit log: time, file, SOP Instance UID, verdict, reason, signer."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, verdict: Verdict, **extra: Any) -> dict[str, Any]:
        rec = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "file": verdict.file,
            "sop_instance_uid": verdict.sop_instance_uid,
            "verdict": "accepted" if verdict.ok else "refused",
            "reason": verdict.reason,
            "message": verdict.message,
            "signer": verdict.signer,
            **extra,
        }
        return self.append(rec)

    def append(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Append one record (a JSON object on one line; `time` is added when missing)."""
        if "time" not in rec:
            rec = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"), **rec}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:  # one write() of the whole line: concurrent writers (threads, processes) never interleave
                os.write(fd, (json.dumps(rec) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise IntegrityError(f"cannot write audit log {self.path}: {e.strerror or e}") from e
        return rec

    def read(self) -> list[dict[str, Any]]:
        """All records (for tests and reports)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Gate:
    """A trust store plus an optional audit log: call it on a path (or `check_bytes`) for a verdict."""

    def __init__(self, trust: TrustStore | str | Path, audit_log: str | Path | None = None,
                 require_timestamp: bool = False, tsa_trust: TrustStore | str | Path | None = None) -> None:
        store = _trust(trust)
        assert store is not None
        self.trust = store
        self.audit = AuditLog(audit_log) if audit_log is not None else None
        self.require_timestamp = require_timestamp
        self.tsa_trust = _trust(tsa_trust)  # TSAs of certified timestamps; None: the signers' trust store

    def __call__(self, path: str | Path) -> Verdict:
        v = check(path, self.trust, tsa_trust=self.tsa_trust)
        if self.require_timestamp:
            v = with_timestamp_required(v)
        if self.audit is not None:
            self.audit.write(v)
        return v

    def check_bytes(self, data: bytes, source: str) -> Verdict:
        v = self.verdict_bytes(data, source)
        if self.audit is not None:
            self.audit.write(v)
        return v

    def verdict_bytes(self, data: bytes, source: str) -> Verdict:
        """The gate's verdict on an encoded file (its trust stores and timestamp rule) without writing the audit
        line, for a caller that logs its own (the DICOM node records what it did with the instance too)."""
        v = check_bytes(data, self.trust, source, tsa_trust=self.tsa_trust)
        return with_timestamp_required(v) if self.require_timestamp else v


def require_signed(path: str | Path, trust: TrustStore | str | Path, audit_log: str | Path | None = None) -> Verdict:
    """Check `path`, log the verdict, and raise RefusedError unless it passes; returns the verdict."""
    v = Gate(trust, audit_log)(path)
    if not v.ok:
        raise RefusedError(v)
    return v
