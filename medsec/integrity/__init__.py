"""DICOM digital signatures and the integrity gate in front of inference (see docs/integrity.md).

The gate's one entry point is `check(path, trust) -> Verdict` (`require_signed` raises on refusal);
`sign_file` and `keygen` make signed files; `verify_dicom` gives per-signature reports.
"""

from medsec.integrity.gate import (
    EXIT_CODES,
    AuditLog,
    Gate,
    RefusedError,
    Verdict,
    check,
    check_bytes,
    require_signed,
)
from medsec.integrity.keys import TrustStore, keygen, load_certificate, load_private_key
from medsec.integrity.signature import SignatureReport, sign_file, verify_dicom


def __getattr__(name: str) -> object:
    """The tamper demo (numpy, pydicom) is imported on first use, so `medsec verify` starts fast."""
    if name in ("tamper_demo", "tamper_demo_markdown"):
        from medsec.integrity import demo

        return getattr(demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXIT_CODES",
    "AuditLog",
    "Gate",
    "RefusedError",
    "SignatureReport",
    "TrustStore",
    "Verdict",
    "check",
    "check_bytes",
    "keygen",
    "load_certificate",
    "load_private_key",
    "require_signed",
    "sign_file",
    "tamper_demo",
    "tamper_demo_markdown",
    "verify_dicom",
]
