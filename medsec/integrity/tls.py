"""TLS for the DICOM node as PS3.15 Annex B asks: the BCP 195 secure transport connection profile.

- TLS 1.2 is the minimum; TLS 1.3 is attempted (OpenSSL negotiates the highest version both peers have).
- TLS 1.2 cipher suites: the four BCP 195 (RFC 7525 4.2, kept by RFC 9325) recommends, which PS3.15 B.9
  lists (ECDHE/DHE key exchange, RSA authentication, AES-GCM), plus their ECDSA-authenticated twins so
  that EC certificates work too (as DCMTK's BCP 195 profiles do). TLS 1.3 uses its own suites, all AEAD.
- Mutual authentication: both sides present a certificate and both require the peer's to chain to the
  trust folder (self-signed peer certificates put there are trusted directly; so are CA certificates,
  which trust what they issued). A client also checks the server's name against its certificate's
  subjectAltName (`check_hostname`, on by default).

The node's own certificate and key are checked before anything listens or connects: a key that does not
belong to the certificate, or a certificate outside its validity period, is a clear error here rather
than a handshake failure on the first association. Make TLS certificates with `medsec keygen --purpose`.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from medsec.integrity.errors import CertificateValidityError, KeyFileError
from medsec.integrity.keys import (
    TrustStore,
    check_key_matches,
    check_time_valid,
    load_certificates,
    load_private_key,
)

BCP195_CIPHERS = ":".join([
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
])
_ROLE_EKU = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True)
class TLSConfig:
    """A node's TLS identity (certificate + private key) and the folder of certificates it trusts."""

    cert: Path
    key: Path
    trust: Path
    password: str | None = None
    check_hostname: bool = True

    def check(self, role: str, at: dt.datetime | None = None) -> x509.Certificate:
        """Validate the identity for `role` ('server' or 'client'): readable files, the key matching the
        certificate, the certificate valid at `at` (default now) and, when it lists extended key usages,
        allowed for `role`; a trust folder holding certificates. Returns the node's certificate."""
        certs = load_certificates(self.cert)
        if not certs:
            raise KeyFileError(f"TLS certificate {self.cert} holds no certificate")
        cert = certs[0]
        check_key_matches(load_private_key(self.key, self.password), cert, f"TLS ({self.key})")
        problem = check_time_valid(cert, at)
        if problem is not None:
            raise CertificateValidityError(f"TLS certificate {self.cert}: {problem}")
        try:
            ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            ekus = None
        if ekus is not None and _ROLE_EKU[role] not in ekus:
            raise KeyFileError(f"TLS certificate {self.cert} is not for a TLS {role} (its extended key usage "
                               f"lacks {'serverAuth' if role == 'server' else 'clientAuth'}): make one with "
                               f"`medsec keygen --purpose tls`")
        TrustStore.load(self.trust)  # a clear error for a missing or empty trust folder
        return cert

    def _trusted_pem(self) -> str:
        store = TrustStore.load(self.trust)
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in store.certificates)

    def _context(self, protocol: int, role: str) -> ssl.SSLContext:
        self.check(role)
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
        ctx.set_ciphers(BCP195_CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a trusted leaf needs no CA above it
        ctx.load_verify_locations(cadata=self._trusted_pem())
        try:
            ctx.load_cert_chain(str(self.cert), str(self.key), password=self.password)
        except ssl.SSLError as e:  # check() passed, so this is a format OpenSSL refuses (e.g. a DER file)
            raise KeyFileError(f"OpenSSL cannot load TLS certificate {self.cert} / key {self.key}: {e}") from e
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """For the node's SCP: BCP 195, and a client certificate from the trust folder required."""
        return self._context(ssl.PROTOCOL_TLS_SERVER, "server")

    def client_context(self) -> ssl.SSLContext:
        """For the node's SCU (forwarding to the archive): BCP 195, our certificate offered, the server's
        certificate checked against the trust folder (and its name, with `check_hostname`)."""
        ctx = self._context(ssl.PROTOCOL_TLS_CLIENT, "client")
        ctx.check_hostname = self.check_hostname
        return ctx


def describe(sock: object) -> dict[str, str]:
    """Protocol version, cipher and peer subject of an established TLS socket (for the audit log);
    empty for a plain socket."""
    if not isinstance(sock, ssl.SSLSocket):
        return {}
    out = {"tls": sock.version() or "?", "cipher": (sock.cipher() or ("?",))[0]}
    peer = sock.getpeercert()
    if peer:
        pairs = [pair for rdn in peer.get("subject", ()) for pair in rdn]
        out["peer_cert"] = ",".join(f"{pair[0]}={pair[1]}" for pair in pairs)
    return out
