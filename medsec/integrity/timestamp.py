"""Certified timestamps (RFC 3161) on DICOM signatures, as DCMTK's dcmsign makes and checks them (3.6.6+).

A timestamp proves that a signature existed at a time a Time Stamping Authority (TSA) vouches for:
- the request (`make_request`, a DER TimeStampReq, dcmsign's `.tsq`) carries a message imprint: the hash
  of the signature's Signature (0400,0120) value (for ECDSA without DICOM's even-length pad byte);
- the TSA answers with a TimeStampResp (`.tsr`); `token_from_response` checks it is granted and answers
  this request (same imprint, nonce and policy) and this signature, and returns its token;
- the token (a CMS SignedData over a TSTInfo) goes into the signature's item of the Digital Signatures
  Sequence as Certified Timestamp Type (0400,0305) "CMS_TSP" and Certified Timestamp (0400,0310);
  neither is part of the signed bytes, so the signature stays valid;
- `verify_token` checks, at verification time, that the token's imprint matches the signature, the token's
  CMS signature is valid (message digest and signed attributes), the TSA certificate carries the
  timeStamping extended key usage, chains to the trust store and was valid at the timestamp's time, and
  that the time lies inside the signer certificate's validity (as dcmsign does).

The ASN.1 is asn1crypto's `tsp`/`cms` modules; the cryptography is `cryptography`'s.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from medsec.integrity.errors import TimestampError
from medsec.integrity.keys import TrustStore

TIMESTAMP_TYPE_CMS = "CMS_TSP"
# DICOM MAC names (and dcmsign's +tm options) -> asn1crypto digest algorithm names
IMPRINT_HASHES: dict[str, str] = {
    "SHA256": "sha256",
    "SHA384": "sha384",
    "SHA512": "sha512",
    "SHA1": "sha1",
    "RIPEMD160": "ripemd160",
    "MD5": "md5",
}
_CRYPTO_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
NONCE_BYTES = 8  # as dcmsign


def _asn1() -> tuple[Any, Any, Any]:
    """asn1crypto's cms, core and tsp modules (imported on first use: `verify` without timestamps never
    pays for them)."""
    try:
        from asn1crypto import cms, core, tsp
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise TimestampError(f"certified timestamps need the asn1crypto package ({e})") from e
    return cms, core, tsp


@functools.cache
def response_type() -> Any:
    """RFC 3161's TimeStampResp, whose token is OPTIONAL (absent when the TSA refuses); asn1crypto's
    `tsp.TimeStampResp` requires it, so a refusal could not be read with it."""
    cms, core, tsp = _asn1()

    class TimeStampResp(core.Sequence):  # type: ignore[misc,name-defined]
        _fields = [("status", tsp.PKIStatusInfo), ("time_stamp_token", cms.ContentInfo, {"optional": True})]

    return TimeStampResp


def _digest(algorithm: str, data: bytes) -> bytes:
    try:
        return hashlib.new(algorithm, data).digest()
    except ValueError as e:
        raise TimestampError(f"this machine's hashlib/OpenSSL lacks {algorithm} ({e})") from e


def imprint_hash_name(mac: str) -> str:
    """'sha256', 'SHA-256', 'ripemd160' -> asn1crypto's name of the hash for the message imprint."""
    m = mac.upper().replace("-", "").replace("_", "")
    if m not in IMPRINT_HASHES:
        raise TimestampError(f"--mac {mac}: unknown hash for a timestamp (choose from {', '.join(IMPRINT_HASHES)})")
    return IMPRINT_HASHES[m]


# ----------------------------------------------------------------- request / response (the TSA round trip)


def make_request(signature_value: bytes, *, mac: str = "SHA256", nonce: bool = True, cert_req: bool = True,
                 policy: str | None = None) -> bytes:
    """A DER TimeStampReq (RFC 3161 2.4.1) for one DICOM signature, as `dcmsign --sign ... +ts` writes:
    version 1, the imprint over `signature_value`, an 8-byte random nonce, certReq, optional policy OID."""
    _, _, tsp = _asn1()
    alg = imprint_hash_name(mac)
    req: dict[str, Any] = {
        "version": 1,
        "message_imprint": {"hash_algorithm": {"algorithm": alg, "parameters": None},
                            "hashed_message": _digest(alg, signature_value)},
        "cert_req": cert_req,
    }
    if nonce:
        req["nonce"] = int.from_bytes(secrets.token_bytes(NONCE_BYTES), "big") or 1
    if policy:
        req["req_policy"] = policy
    try:
        return tsp.TimeStampReq(req).dump()
    except ValueError as e:
        raise TimestampError(f"--policy {policy}: not an object identifier ({e})") from e


def parse_request(der: bytes, source: str = "timestamp request") -> Any:
    """A parsed TimeStampReq; TimestampError naming `source` when it is not one."""
    _, _, tsp = _asn1()
    try:
        req = tsp.TimeStampReq.load(der, strict=True)
        _ = req.native  # parse everything now, so a broken field fails here
    except (ValueError, TypeError, KeyError) as e:
        raise TimestampError(f"{source} is not an RFC 3161 TimeStampReq ({e})") from e
    return req


def token_from_response(tsr: bytes, signature_value: bytes, request: bytes | None = None,
                        source: str = "timestamp response") -> tuple[bytes, str | None]:
    """Check a DER TimeStampResp and return its token (DER ContentInfo, for Certified Timestamp) and the
    time it vouches for (ISO 8601).

    The response must be granted, hold a TSTInfo, answer `request` when given (same imprint, nonce,
    policy) and carry the imprint of `signature_value`. The token's CMS signature and TSA certificate are
    checked at verification time (`verify_token`), against the verifier's trust store."""
    try:
        resp = response_type().load(tsr, strict=True)
        status = resp["status"]["status"].native
    except (ValueError, TypeError, KeyError) as e:
        raise TimestampError(f"{source} is not an RFC 3161 TimeStampResp ({e})") from e
    if status not in ("granted", "granted_with_mods"):
        text = "; ".join(resp["status"]["status_string"].native or []) if resp["status"]["status_string"] else ""
        fail = resp["status"]["fail_info"].native if resp["status"]["fail_info"] else None
        raise TimestampError(f"{source}: the TSA did not grant the timestamp (status {status}"
                             f"{': ' + text if text else ''}{'; ' + ', '.join(sorted(fail)) if fail else ''})")
    try:
        token = resp["time_stamp_token"]
        if not token:
            raise ValueError("the response has no timeStampToken")
        info = _tst_info(token, source)
    except (ValueError, TypeError, KeyError) as e:
        raise TimestampError(f"{source} holds no readable timestamp token ({e})") from e
    if request is not None:
        req = parse_request(request, "the timestamp request")
        if _imprint(req["message_imprint"]) != _imprint(info["message_imprint"]):
            raise TimestampError(f"{source} answers another request: its message imprint differs from the "
                                 "request's (a response for another signature or file)")
        if req["nonce"].native is not None and req["nonce"].native != info["nonce"].native:
            raise TimestampError(f"{source} answers another request: nonce {info['nonce'].native} "
                                 f"instead of the request's {req['nonce'].native}")
        if req["req_policy"].native is not None and req["req_policy"].native != info["policy"].native:
            raise TimestampError(f"{source}: policy {info['policy'].native} instead of the requested "
                                 f"{req['req_policy'].native}")
    problem = imprint_mismatch(info["message_imprint"], signature_value)
    if problem:
        raise TimestampError(f"{source} does not belong to this signature: {problem}")
    gen = info["gen_time"].native
    return bytes(token.dump()), gen.isoformat() if gen else None


def _tst_info(token: Any, source: str) -> Any:
    """The TSTInfo inside a token (ContentInfo -> SignedData -> eContent)."""
    if token["content_type"].native != "signed_data":
        raise TimestampError(f"{source}: the token is {token['content_type'].native}, not CMS SignedData")
    encap = token["content"]["encap_content_info"]
    if encap["content_type"].native != "tst_info":
        raise TimestampError(f"{source}: the token's content is {encap['content_type'].native}, not a TSTInfo")
    info = encap["content"].parsed
    _ = info.native  # parse every field now
    return info


def _imprint(message_imprint: Any) -> tuple[str, bytes]:
    """(hash algorithm name, hashed message) of a MessageImprint: compared by value, not by encoding (a
    TSA may drop the NULL hash parameters of the request)."""
    return message_imprint["hash_algorithm"]["algorithm"].native, message_imprint["hashed_message"].native


def imprint_mismatch(message_imprint: Any, signature_value: bytes) -> str | None:
    """None when a MessageImprint is the hash of `signature_value`, else why not."""
    alg, hashed = _imprint(message_imprint)
    if alg not in IMPRINT_HASHES.values():
        return f"the imprint uses {alg}, which dcmsign and medsec do not accept"
    if _digest(alg, signature_value) != hashed:
        return f"its {alg} message imprint is not the hash of the signature's Signature value"
    return None


def request_imprint_matches(request: bytes, signature_value: bytes) -> bool:
    """Whether a DER TimeStampReq was made for `signature_value` (used to find a request's signature)."""
    return imprint_mismatch(parse_request(request)["message_imprint"], signature_value) is None


def response_imprint_matches(tsr: bytes, signature_value: bytes) -> bool:
    """Whether a DER TimeStampResp carries a token issued for `signature_value` (finds its signature)."""
    try:
        info = _tst_info(response_type().load(tsr)["time_stamp_token"], "response")
        return imprint_mismatch(info["message_imprint"], signature_value) is None
    except (TimestampError, ValueError, TypeError, KeyError):
        return False


# ----------------------------------------------------------------- verification


@dataclass
class TimestampReport:
    """One certified timestamp's verification result (JSON-friendly through `as_dict`)."""

    valid: bool
    reason: str
    time: str | None = None
    tsa: str | None = None
    serial: int | None = None
    policy: str | None = None
    hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _find_signer_cert(signed_data: Any, signer_info: Any, extra: list[x509.Certificate]) -> x509.Certificate | None:
    """The certificate the SignerInfo names (issuer+serial or subject key identifier), from the token's
    certificates or else the trust store's (a TSA answering certReq=false sends none)."""
    certs = []
    for c in signed_data["certificates"] or []:
        if c.name == "certificate":
            try:
                certs.append(x509.load_der_x509_certificate(c.chosen.dump()))
            except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm):
                continue
    certs.extend(extra)
    sid = signer_info["sid"]
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            from asn1crypto import x509 as ax509

            issuer = ax509.Name.load(cert.issuer.public_bytes())
            if cert.serial_number == sid.chosen["serial_number"].native and issuer == sid.chosen["issuer"]:
                return cert
        else:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == sid.chosen.native:
                return cert
    return None


def _check_cms_signature(cert: x509.Certificate, signer_info: Any, econtent: bytes) -> str | None:
    """None when the SignerInfo's signed attributes hold the eContent's digest and its signature over
    them verifies with `cert`'s key, else why not."""
    attrs = signer_info["signed_attrs"]
    if not attrs:
        return "the token's SignerInfo has no signed attributes (RFC 3161 requires them)"
    digest_alg = signer_info["digest_algorithm"]["algorithm"].native
    if digest_alg not in _CRYPTO_HASHES:
        return f"the token is signed with {digest_alg}, which is not accepted"
    found = {a["type"].native: a["values"][0] for a in attrs}
    if found.get("content_type") is None or found["content_type"].native != "tst_info":
        return "the token's signed content-type attribute is not id-ct-TSTInfo"
    md = found.get("message_digest")
    if md is None or md.native != _digest(digest_alg, econtent):
        return "the token's message digest does not match its TSTInfo (the timestamp was altered)"
    for name, alg_name in (("signing_certificate_v2", None), ("signing_certificate", "sha1")):
        if name in found:  # ESS: the certificate the TSA meant to sign with
            ess = found[name]["certs"][0]
            h = alg_name or ess["hash_algorithm"]["algorithm"].native
            from cryptography.hazmat.primitives import serialization

            if _digest(h, cert.public_bytes(serialization.Encoding.DER)) != ess["cert_hash"].native:
                return "the token's signing-certificate attribute names another certificate than its signer's"
    signed_bytes = attrs.untag().dump()  # the received bytes, as a SET (RFC 5652 5.4)
    sig = signer_info["signature"].native
    algo = signer_info["signature_algorithm"].signature_algo
    h = _CRYPTO_HASHES[digest_alg]()
    pub = cert.public_key()
    try:
        if isinstance(pub, rsa.RSAPublicKey) and algo == "rsassa_pkcs1v15":
            pub.verify(sig, signed_bytes, padding.PKCS1v15(), h)
        elif isinstance(pub, rsa.RSAPublicKey) and algo == "rsassa_pss":
            pub.verify(sig, signed_bytes, padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h)
        elif isinstance(pub, ec.EllipticCurvePublicKey) and algo == "ecdsa":
            pub.verify(sig, signed_bytes, ec.ECDSA(h))
        else:
            return f"the token's signature algorithm {algo} does not fit the TSA's {type(pub).__name__}"
    except InvalidSignature:
        return "the token's signature does not verify with the TSA certificate (the timestamp was altered)"
    except (ValueError, UnsupportedAlgorithm) as e:
        return f"the token's signature cannot be checked ({e})"
    return None


def verify_token(token: bytes, signature_value: bytes, trust: TrustStore | None,
                 signer_cert: x509.Certificate | None = None) -> TimestampReport:
    """Verify a Certified Timestamp (DER token) against the signature it stamps; never raises for bad
    input (the report says what is wrong)."""
    try:
        return _verify_token(token, signature_value, trust, signer_cert)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, x509.InvalidVersion,
            UnsupportedAlgorithm) as e:  # asn1crypto parses lazily: a broken field fails where it is read
        return TimestampReport(False, f"the certified timestamp is not a readable RFC 3161 token ({e})")


def _verify_token(token: bytes, signature_value: bytes, trust: TrustStore | None,
                  signer_cert: x509.Certificate | None) -> TimestampReport:
    cms, _, _ = _asn1()
    try:
        ci = cms.ContentInfo.load(token, strict=True)
        info = _tst_info(ci, "the certified timestamp")
    except TimestampError as e:
        return TimestampReport(False, str(e))
    except (ValueError, TypeError, KeyError) as e:
        return TimestampReport(False, f"the certified timestamp is not a readable RFC 3161 token ({e})")
    gen = info["gen_time"].native
    rep = TimestampReport(False, "", gen.isoformat() if gen else None, serial=info["serial_number"].native,
                          policy=info["policy"].native, hash=info["message_imprint"]["hash_algorithm"]["algorithm"].native)
    problem = imprint_mismatch(info["message_imprint"], signature_value)
    if problem:
        rep.reason = f"the certified timestamp was issued for another signature: {problem}"
        return rep
    sd = ci["content"]
    if len(sd["signer_infos"]) != 1:
        rep.reason = f"the certified timestamp has {len(sd['signer_infos'])} signers, not one"
        return rep
    si = sd["signer_infos"][0]
    tsa = _find_signer_cert(sd, si, trust.certificates if trust is not None else [])
    if tsa is None:
        rep.reason = "the certified timestamp does not hold the TSA certificate and the trust store has none fitting"
        return rep
    rep.tsa = tsa.subject.rfc4514_string()
    econtent = sd["encap_content_info"]["content"].contents
    problem = _check_cms_signature(tsa, si, econtent)
    if problem:
        rep.reason = problem
        return rep
    try:
        eku = tsa.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        is_tsa = ExtendedKeyUsageOID.TIME_STAMPING in eku
    except x509.ExtensionNotFound:
        is_tsa = False
    if not is_tsa:
        rep.reason = f"the TSA certificate {rep.tsa} lacks the timeStamping extended key usage"
        return rep
    if trust is None:
        rep.reason = "no trust store given to check the TSA certificate"
        return rep
    at = gen if gen is not None else dt.datetime.now(dt.UTC)
    chain = trust.check(tsa, at)
    if not chain.trusted:
        rep.reason = (f"timestamp authority not trusted: neither {rep.tsa} nor a CA that issued its certificate "
                      "is in the trust store")
        return rep
    if not chain.time_valid:
        rep.reason = f"the TSA certificate was not valid at the timestamp's time {rep.time}: {chain.reason}"
        return rep
    if signer_cert is not None and not (signer_cert.not_valid_before_utc <= at <= signer_cert.not_valid_after_utc):
        rep.reason = (f"the timestamp's time {rep.time} lies outside the signer certificate's validity "
                      f"({signer_cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z to "
                      f"{signer_cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z)")
        return rep
    rep.valid, rep.reason = True, f"timestamp by {rep.tsa} at {rep.time}"
    return rep
