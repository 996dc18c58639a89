"""A small RFC 3161 Time Stamping Authority for the tests, built with asn1crypto and `cryptography`.

It answers a DER TimeStampReq with a DER TimeStampResp whose token is a CMS SignedData over a TSTInfo,
signed attributes content-type, signing-time, message-digest and ESS signing-certificate-v2 (what
OpenSSL, and so dcmsign, require), by a key whose certificate carries the critical timeStamping extended
key usage. `mutate` lets a test alter the token after signing (a tampered timestamp).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import cms, tsp
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medsec.integrity.timestamp import response_type

POLICY = "1.3.6.1.4.1.99999.1.1"  # a test policy OID (private arc, test only)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tsa(folder: Path, cn: str = "Test TSA", days: float = 30) -> LocalTSA:
    """A CA and a TSA certificate it issued; writes folder/tsa-ca.pem (to trust) and folder/tsa.pem."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(_name(f"{cn} CA")).issuer_name(_name(f"{cn} CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tsa-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "tsa.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tsa.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return LocalTSA(key, cert, folder / "tsa-ca.pem", folder / "tsa.pem", folder / "tsa.key")


@dataclass
class LocalTSA:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    serial: int = 1
    issued: list[int] = field(default_factory=list)

    def respond(self, tsq: bytes, *, status: str = "granted", gen_time: dt.datetime | None = None,
                nonce: int | None = None, mutate: Callable[[tsp.TSTInfo], None] | None = None) -> bytes:
        """A DER TimeStampResp for the DER request `tsq` (`nonce` overrides the request's)."""
        req = tsp.TimeStampReq.load(tsq)
        if status != "granted":
            return response_type()({"status": {"status": status, "status_string": ["refused by test TSA"]}}).dump()
        self.serial += 1
        info = tsp.TSTInfo({
            "version": "v1",
            "policy": req["req_policy"].native or POLICY,
            "message_imprint": req["message_imprint"],
            "serial_number": self.serial,
            "gen_time": (gen_time or dt.datetime.now(dt.UTC)).replace(microsecond=0),
            "accuracy": {"seconds": 1},
            "nonce": nonce if nonce is not None else req["nonce"].native,
        })
        econtent = info.dump()
        cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        acert = ax509.Certificate.load(cert_der)
        attrs = cms.CMSAttributes([
            {"type": "content_type", "values": ["tst_info"]},
            {"type": "signing_time", "values": [cms.Time({"utc_time": dt.datetime.now(dt.UTC)})]},
            {"type": "message_digest", "values": [hashlib.sha256(econtent).digest()]},
            {"type": "signing_certificate_v2",
             "values": [{"certs": [{"cert_hash": hashlib.sha256(cert_der).digest()}]}]},
        ])
        signature = self.key.sign(attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
        if mutate is not None:  # change the TSTInfo after the TSA signed it
            mutate(info)
            econtent = info.dump(force=True)
        signer = cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier({"issuer_and_serial_number": {
                "issuer": acert.issuer, "serial_number": acert.serial_number}}),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        })
        sd = cms.SignedData({
            "version": "v3",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": "tst_info", "content": tsp.TSTInfo.load(econtent)},
            "signer_infos": [signer],
        })
        if req["cert_req"].native:
            sd["certificates"] = [acert]
        token = cms.ContentInfo({"content_type": "signed_data", "content": sd})
        return response_type()({"status": {"status": "granted"}, "time_stamp_token": token}).dump()
