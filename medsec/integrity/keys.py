"""Keys, certificates and trust stores for DICOM signatures.

RSA or ECDSA keys, self-signed signer certificates, a small CA of the user's own that issues signer
certificates, and a trust-store folder. Private keys are written owner-only (0600), optionally
encrypted with a password (PKCS#8, best available encryption).

notBefore is backdated (5 minutes by default): DCMTK's dcmsign rejects a signature made in the same
second as the certificate's notBefore ("certificate not yet valid"), and small clock skews between the
machine that signs and the one that verifies would do the same.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medsec.integrity.errors import KeyCertMismatchError, KeyFileError, KeyPasswordError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
KeyKind = Literal["rsa", "ecdsa"]
# What a certificate is for: signing DICOM (digitalSignature + nonRepudiation), a TLS server, a TLS client,
# or a TLS node that is both (an SCP that also forwards as an SCU): digitalSignature (+ keyEncipherment for
# RSA) and the matching extended key usages (RFC 5280 4.2.1.12), as OpenSSL checks them in a handshake; or a
# time stamping authority (RFC 3161 2.3: the single, critical extended key usage id-kp-timeStamping).
Purpose = Literal["signing", "tls-server", "tls-client", "tls", "timestamping"]
PURPOSES: tuple[str, ...] = ("signing", "tls-server", "tls-client", "tls", "timestamping")
DEFAULT_TLS_HOSTS = ("localhost", "127.0.0.1", "::1")

CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
DEFAULT_BACKDATE = dt.timedelta(minutes=5)
CERT_SUFFIXES = (".pem", ".crt", ".cer", ".der")


def generate_key(kind: KeyKind = "rsa", bits: int = 2048, curve: str = "P-256") -> PrivateKey:
    """A new private key: RSA with `bits` (>= 2048) or ECDSA on a NIST curve (P-256/384/521)."""
    if kind == "rsa":
        if bits < 2048:
            raise KeyFileError(f"--bits {bits}: RSA keys shorter than 2048 bits are not accepted")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ecdsa":
        if curve not in CURVES:
            raise KeyFileError(f"--curve {curve}: unknown curve (choose from {', '.join(CURVES)})")
        return ec.generate_private_key(CURVES[curve]())
    raise KeyFileError(f"--algorithm {kind}: unknown key algorithm (choose rsa or ecdsa)")


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _validity(
    days: float, not_before: dt.datetime | None, backdate: dt.timedelta
) -> tuple[dt.datetime, dt.datetime]:
    start = not_before if not_before is not None else dt.datetime.now(dt.UTC) - backdate
    return start, start + dt.timedelta(days=days) + (backdate if not_before is None else dt.timedelta())


def make_certificate(
    key: PrivateKey,
    common_name: str,
    *,
    days: float = 365,
    is_ca: bool = False,
    issuer_key: PrivateKey | None = None,
    issuer_cert: x509.Certificate | None = None,
    organization: str | None = None,
    not_before: dt.datetime | None = None,
    backdate: dt.timedelta = DEFAULT_BACKDATE,
    purpose: Purpose = "signing",
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    """An X.509 v3 certificate for `key`: self-signed unless `issuer_key`/`issuer_cert` (a CA) are given.

    Signer certificates carry digitalSignature + nonRepudiation key usage; CA certificates carry
    basicConstraints CA:TRUE and keyCertSign. TLS certificates (`purpose` tls-server, tls-client or tls)
    carry digitalSignature (+ keyEncipherment for RSA), the serverAuth/clientAuth extended key usages and
    a subjectAltName with `hosts` (DNS names or IP addresses; a TLS server without hosts gets
    localhost, 127.0.0.1 and ::1). A TSA certificate (`purpose` timestamping) carries digitalSignature +
    nonRepudiation and the one critical extended key usage timeStamping RFC 3161 requires, so `openssl ts
    -reply` (or any RFC 3161 server) can answer `medsec timestamp request`'s queries with it for a site's own
    TSA. `not_before` (UTC) overrides the backdated start, which lets tests make
    expired or not-yet-valid certificates."""
    if (issuer_key is None) != (issuer_cert is None):
        raise KeyFileError("an issuing CA needs both its key and its certificate")
    if purpose not in PURPOSES:
        raise KeyFileError(f"--purpose {purpose}: choose one of {', '.join(PURPOSES)}")
    tls = purpose not in ("signing", "timestamping") and not is_ca
    subject = _name(common_name, organization)
    start, end = _validity(days, not_before, backdate)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=not is_ca and not tls,
                key_encipherment=tls and isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if purpose == "timestamping" and not is_ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
    if tls:
        usages = {"tls-server": [ExtendedKeyUsageOID.SERVER_AUTH], "tls-client": [ExtendedKeyUsageOID.CLIENT_AUTH],
                  "tls": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]}[purpose]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        names = list(hosts) or (list(DEFAULT_TLS_HOSTS) if purpose != "tls-client" else [])
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in names]),
                                            critical=False)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    signing_key = issuer_key if issuer_key is not None else key
    if issuer_cert is not None and issuer_key is not None:
        check_key_matches(issuer_key, issuer_cert, "issuer")
    return builder.sign(signing_key, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    """A subjectAltName entry: an IP address when `host` parses as one, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c.isspace() for c in host):
            raise KeyFileError(f"--host {host!r}: not a DNS name or IP address") from None
        return x509.DNSName(host)


def check_key_matches(key: PrivateKey, cert: x509.Certificate, what: str = "signer") -> None:
    """Raise KeyCertMismatchError unless `key` is the private half of `cert`'s public key."""
    pub = cert.public_key()
    same = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not same:
        raise KeyCertMismatchError(
            f"the {what} private key does not match the certificate of {cert.subject.rfc4514_string()}"
        )


def _write_owner_only(path: Path, data: bytes) -> None:
    """Write `data` to `path` created with mode 0600 (replacing an existing file atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_private_key(path: str | Path, key: PrivateKey, password: str | None = None) -> Path:
    """Write `key` as PKCS#8 PEM, owner-only (0600), encrypted when `password` is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    p = Path(path)
    _write_owner_only(p, data)
    return p


def save_certificate(path: str | Path, cert: x509.Certificate) -> Path:
    """Write `cert` as PEM."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return p


def load_private_key(path: str | Path, password: str | None = None) -> PrivateKey:
    """Read a PEM or DER private key (RSA or EC); a clear error for a missing/wrong password."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read private key {p}: {e.strerror or e}") from e
    pw = password.encode() if password else None
    loader = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        key = loader(data, password=pw)
    except TypeError as e:
        if pw is None:
            raise KeyPasswordError(f"private key {p} is encrypted: give its password (--password)") from e
        raise KeyPasswordError(f"private key {p} is not encrypted but a password was given") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        if b"ENCRYPTED" in data and pw is not None:
            raise KeyPasswordError(f"wrong password for private key {p}") from e
        raise KeyFileError(f"{p} is not a readable private key ({e})") from e
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"private key {p}: only RSA and ECDSA keys are supported")
    return key


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """All certificates in one PEM (possibly several) or DER file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read certificate {p}: {e.strerror or e}") from e
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise KeyFileError(f"{p} is not a readable X.509 certificate ({e})") from e


def load_certificate(path: str | Path) -> x509.Certificate:
    """The first certificate of a PEM or DER file."""
    certs = load_certificates(path)
    if not certs:
        raise KeyFileError(f"{path} holds no certificate")
    return certs[0]


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer`'s key signed `cert` and the names chain."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


@dataclass
class ChainResult:
    """The outcome of checking a signer certificate against a trust store."""

    trusted: bool
    time_valid: bool
    reason: str
    chain: list[x509.Certificate]


@dataclass
class TrustStore:
    """Trusted certificates: self-signed signer certificates trusted directly, or CA certificates
    whose issued signer certificates are trusted (chains up to 4 deep, every CA with CA:TRUE)."""

    certificates: list[x509.Certificate]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> TrustStore:
        """A trust store from one certificate file or a folder of .pem/.crt/.cer/.der files."""
        p = Path(path)
        if p.is_dir():
            certs: list[x509.Certificate] = []
            for f in sorted(p.iterdir()):
                if f.is_file() and f.suffix.lower() in CERT_SUFFIXES:
                    certs.extend(load_certificates(f))
            if not certs:
                raise KeyFileError(f"trust store folder {p} holds no certificate (*.pem, *.crt, *.cer, *.der)")
            return cls(certs, str(p))
        if not p.exists():
            raise KeyFileError(f"trust store {p} does not exist")
        return cls(load_certificates(p), str(p))

    def check(self, cert: x509.Certificate, at: dt.datetime | None = None, max_depth: int = 4) -> ChainResult:
        """Build a chain from `cert` to a trusted certificate and check every validity period at `at`."""
        now = at or dt.datetime.now(dt.UTC)
        chain = [cert]
        trusted = False
        current = cert
        for _ in range(max_depth + 1):
            if any(current == t for t in self.certificates):
                trusted = True
                break
            issuers = [t for t in self.certificates if _is_ca(t) and verify_issued_by(current, t)]
            if not issuers:
                break
            current = issuers[0]
            chain.append(current)
            if any(current == t for t in self.certificates):
                trusted = True
                break
        if not trusted:
            return ChainResult(False, True, f"signer {cert.subject.rfc4514_string()} is not in the trust store "
                               "and no trusted CA issued its certificate", chain)
        for c in chain:
            if now < c.not_valid_before_utc:
                return ChainResult(True, False, f"certificate {c.subject.rfc4514_string()} is not yet valid "
                                   f"(notBefore {c.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z)", chain)
            if now > c.not_valid_after_utc:
                return ChainResult(True, False, f"certificate {c.subject.rfc4514_string()} expired "
                                   f"(notAfter {c.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z)", chain)
        return ChainResult(True, True, "trusted", chain)


def check_time_valid(cert: x509.Certificate, at: dt.datetime | None = None) -> str | None:
    """None when `cert` is valid at `at` (default now), else a sentence saying why not."""
    now = at or dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        return f"certificate {cert.subject.rfc4514_string()} is not yet valid (notBefore {cert.not_valid_before_utc}Z)"
    if now > cert.not_valid_after_utc:
        return f"certificate {cert.subject.rfc4514_string()} expired (notAfter {cert.not_valid_after_utc}Z)"
    return None


def public_key_verify_digest_rsa(pub: rsa.RSAPublicKey, signature: bytes, digest_info: bytes) -> bool:
    """RSA PKCS#1 v1.5: True when `signature` recovers exactly `digest_info` (DER DigestInfo)."""
    try:
        recovered = pub.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return False
    return recovered == digest_info


@dataclass
class KeygenResult:
    """Paths written by `keygen`."""

    key: Path
    cert: Path
    trust_dir: Path
    trusted_cert: Path


def keygen(
    out_dir: str | Path,
    *,
    name: str = "signer",
    common_name: str | None = None,
    kind: KeyKind = "rsa",
    bits: int = 2048,
    curve: str = "P-256",
    days: float = 365,
    ca: bool = False,
    issuer_key_path: str | Path | None = None,
    issuer_cert_path: str | Path | None = None,
    issuer_password: str | None = None,
    password: str | None = None,
    not_before: dt.datetime | None = None,
    force: bool = False,
    purpose: Purpose = "signing",
    hosts: Sequence[str] = (),
) -> KeygenResult:
    """Write OUT/NAME.key (0600) and OUT/NAME.pem, and put the certificate to trust into OUT/trust/.

    Three shapes: a self-signed signer (trust its own certificate), a CA (`ca=True`: trust the CA), or
    a signer issued by a CA (`issuer_key_path`/`issuer_cert_path`: the CA certificate goes to trust/).
    `purpose`/`hosts` make a TLS certificate instead of a signing one (see `make_certificate`). An existing NAME.key/NAME.pem is never overwritten unless `force`."""
    out = Path(out_dir)
    if not force:
        for existing in (out / f"{name}.key", out / f"{name}.pem"):
            if existing.exists():
                raise KeyFileError(f"{existing} already exists: choose another --name or folder, or --force")
    key = generate_key(kind, bits, curve)
    issuer_key = issuer_cert = None
    if (issuer_key_path is None) != (issuer_cert_path is None):
        raise KeyFileError("--issuer-key and --issuer-cert go together")
    if issuer_key_path is not None and issuer_cert_path is not None:
        if ca:
            raise KeyFileError("--ca makes a root CA; it cannot also be issued by another CA here")
        issuer_key = load_private_key(issuer_key_path, issuer_password)
        issuer_cert = load_certificate(issuer_cert_path)
        if not _is_ca(issuer_cert):
            raise KeyFileError(f"{issuer_cert_path} is not a CA certificate (basicConstraints CA:TRUE missing)")
    cert = make_certificate(
        key,
        common_name or name,
        days=days,
        is_ca=ca,
        issuer_key=issuer_key,
        issuer_cert=issuer_cert,
        not_before=not_before,
        purpose=purpose,
        hosts=hosts,
    )
    key_path = save_private_key(out / f"{name}.key", key, password)
    cert_path = save_certificate(out / f"{name}.pem", cert)
    trust_dir = out / "trust"
    trusted = issuer_cert if issuer_cert is not None else cert
    trusted_name = Path(issuer_cert_path).stem if issuer_cert_path is not None else name
    trusted_path = save_certificate(trust_dir / f"{trusted_name}.pem", trusted)
    return KeygenResult(key_path, cert_path, trust_dir, trusted_path)
