"""Errors of the integrity area: each maps to its own documented exit code of `medsec sign`/`keygen`."""

from __future__ import annotations

from medsec.errors import MedsecError


class IntegrityError(MedsecError):
    """Base class; `exit_code` is what the CLI exits with (see docs/integrity.md)."""

    exit_code = 2


class UnreadableFileError(IntegrityError):
    """Not a DICOM file, truncated, or a structure this reader cannot walk."""

    exit_code = 10


class KeyPasswordError(IntegrityError):
    """The private key is encrypted and the password is missing or wrong."""

    exit_code = 21


class KeyCertMismatchError(IntegrityError):
    """The private key does not belong to the certificate's public key (a signer's or a TLS node's)."""

    exit_code = 20


class CertificateValidityError(IntegrityError):
    """The signer certificate is expired or not yet valid at signing time, or a TLS certificate now."""

    exit_code = 22


class ProfileError(IntegrityError):
    """The requested signature profile cannot be met (missing attributes, non-RSA key, bad algorithm)."""

    exit_code = 23


class KeyFileError(IntegrityError):
    """A key or certificate file that cannot be read or parsed."""

    exit_code = 24


class TimestampError(IntegrityError):
    """A timestamp request, response or token that cannot be used: unreadable, not granted, or answering
    another request or another signature (`medsec timestamp request/insert`)."""

    exit_code = 25
