"""Create and verify DICOM Digital Signatures (PS3.15 Annex C; PS3.3 C.12.1.1.3), interoperable with dcmsign.

Signing adds an item to the MAC Parameters Sequence (4FFE,0001) and to the Digital Signatures Sequence
(FFFA,FFFA) of the main data set or of a sequence item; nothing else in the file changes content (the
lengths of enclosing defined-length sequences/items are updated). RSA signatures are PKCS#1 v1.5 over the
MAC digest (DigestInfo), as the RSA profiles require; ECDSA signatures (DER), which DCMTK also creates and
accepts, are allowed only without a profile since PS3.15 defines no elliptic-curve profile.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import struct
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from medsec.integrity import rawdicom as rd
from medsec.integrity.errors import (
    CertificateValidityError,
    IntegrityError,
    ProfileError,
    TimestampError,
)
from medsec.integrity.keys import (
    PrivateKey,
    TrustStore,
    check_key_matches,
    check_time_valid,
    load_certificate,
    load_private_key,
    public_key_verify_digest_rsa,
)
from medsec.integrity.macstream import (
    CERTIFICATE_OF_SIGNER,
    CERTIFICATE_TYPE,
    DATA_ELEMENTS_SIGNED,
    DIGITAL_SIGNATURES_SEQ,
    MAC_ALGORITHM,
    MAC_ALGORITHMS,
    MAC_ID,
    MAC_PARAMETERS_SEQ,
    MAC_TS,
    SIGNATURE,
    SIGNATURE_DATETIME,
    SIGNATURE_UID,
    TIMESTAMP,
    TIMESTAMP_TYPE,
    is_signable,
    is_signable_tag,
    mac_available,
    mac_stream,
)

Profile = Literal["none", "base", "creator", "authorization"]
PROFILES: tuple[str, ...] = ("none", "base", "creator", "authorization")
SIGNABLE_MACS: tuple[str, ...] = ("SHA256", "SHA384", "SHA512", "SHA1", "RIPEMD160")

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
KEY_UIDS = (SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)
# Attributes that decide how the pixel bytes become an image (geometry, bit depth, sign, colour model,
# frames). The gate also requires those the data set has: with them unsigned, an attacker could rescale
# (BitsStored), invert (PhotometricInterpretation) or reshape (Rows/Columns) signed pixels.
PIXEL_INTERPRETATION_TAGS = (0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010, 0x00280011,
                             0x00280100, 0x00280101, 0x00280102, 0x00280103)

# Creator RSA profile (PS3.15 C.2): the UIDs, General Equipment, General Image, Image Pixel, overlay,
# curve/annotation and multi-frame attributes -- each included when the data set has it.
_GENERAL_EQUIPMENT = (0x00080070, 0x00080080, 0x00080081, 0x00081010, 0x00081040, 0x00081090, 0x00181000,
                      0x00181020, 0x00181050, 0x00181200, 0x00181201, 0x00280120)
_GENERAL_IMAGE = (0x00080008, 0x00080022, 0x00080023, 0x0008002A, 0x00080032, 0x00080033, 0x00082111,
                  0x00082112, 0x00200012, 0x00200013, 0x00200020, 0x00201002, 0x00204000, 0x00280300,
                  0x00280301, 0x00282110, 0x00282112, 0x00282114, 0x00880200)
_IMAGE_PIXEL = (0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280009, 0x00280010, 0x00280011,
                0x00280030, 0x00280034, 0x00280100, 0x00280101, 0x00280102, 0x00280103, 0x00280106,
                0x00280107, 0x00281101, 0x00281102, 0x00281103, 0x00281201, 0x00281202, 0x00281203,
                0x00287FE0, *PIXEL_TAGS)
_ANNOTATION = (0x00700001, 0x00081140)
_UIDS = (SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)


class _RIPEMD160(hashes.HashAlgorithm):
    """RIPEMD-160 for `Prehashed`: `cryptography` has no class for it, OpenSSL knows the name."""

    name = "ripemd160"
    digest_size = 20
    block_size = 64


def _hash_algorithm(mac: str) -> hashes.HashAlgorithm:
    return {
        "SHA1": hashes.SHA1(),
        "SHA256": hashes.SHA256(),
        "SHA384": hashes.SHA384(),
        "SHA512": hashes.SHA512(),
        "MD5": hashes.MD5(),
        "RIPEMD160": _RIPEMD160(),
    }[mac]


def normalize_mac(mac: str) -> str:
    """'sha256', 'SHA-256', 'ripemd-160' -> the DICOM defined term ('SHA256', 'RIPEMD160')."""
    m = mac.upper().replace("-", "").replace("_", "")
    if m not in MAC_ALGORITHMS:
        raise ProfileError(f"--mac {mac}: unknown MAC algorithm (choose from {', '.join(SIGNABLE_MACS)})")
    return m


def der_trim(b: bytes) -> bytes:
    """Strip the even-length pad DICOM adds after a DER structure (certificate, ECDSA signature)."""
    if len(b) < 2 or b[0] != 0x30:
        return b
    n = b[1]
    if n < 0x80:
        total = 2 + n
    else:
        k = n & 0x7F
        if k == 0 or len(b) < 2 + k:
            return b
        total = 2 + k + int.from_bytes(b[2 : 2 + k], "big")
    return b[:total] if total <= len(b) else b


def parse_tag(text: str) -> int:
    """'(0008,0018)', '0008,0018', '00080018' or a keyword such as 'SOPInstanceUID' -> 32-bit tag."""
    from pydicom.datadict import tag_for_keyword

    t = text.strip()
    m = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?", t)
    if m:
        return (int(m.group(1), 16) << 16) | int(m.group(2), 16)
    tag = tag_for_keyword(t)
    if tag is None:
        raise IntegrityError(f"--tags {text}: not a tag (gggg,eeee) or a DICOM keyword")
    return int(tag)


def resolve_item(df: rd.DicomFile, location: str | None) -> tuple[rd.Item, str]:
    """The data set at `location`: None/'' for the main data set, else 'Keyword[i].Keyword[j]' or
    '(gggg,eeee)[i]' (0-based item indexes, as in dcmsign --sign-item)."""
    if not location:
        return df.dataset, "main"
    current = df.dataset
    for part in location.split("."):
        m = re.fullmatch(r"\s*(.+?)\[(\d+)\]\s*", part)
        if not m:
            raise IntegrityError(f"--item {location}: each step must look like Keyword[index] or (gggg,eeee)[index]")
        tag = parse_tag(m.group(1))
        el = current.find(tag)
        if el is None or el.items is None:
            raise IntegrityError(f"--item {location}: no sequence {rd.tag_str(tag)} at that level")
        idx = int(m.group(2))
        if idx >= len(el.items):
            raise IntegrityError(f"--item {location}: sequence {rd.tag_str(tag)} has only {len(el.items)} item(s)")
        current = el.items[idx]
    return current, location


def _profile_tags(profile: str, dataset: rd.Item, is_main: bool) -> set[int]:
    """Tags a profile requires (when present); raises ProfileError when a mandatory one is missing.

    Authorization RSA (where PS3.15 only says 'what the authorising person can verify'): the UIDs plus
    the Image Pixel module (what a reader sees and approves); Creator RSA adds equipment, general image,
    overlay/annotation and multi-frame attributes."""
    if profile in ("none", "base"):
        return set()
    if not is_main:
        raise ProfileError(f"the {profile} profile signs the main data set, not a sequence item")
    present = {e.tag for e in dataset.elements}
    missing = [rd.tag_str(t) for t in _UIDS if t not in present]
    if missing:
        raise ProfileError(f"the {profile} profile needs SOP Class/Instance, Study and Series UIDs; missing {missing}")
    req = set(_UIDS) | set(_IMAGE_PIXEL)
    if profile == "creator":
        req |= set(_GENERAL_EQUIPMENT) | set(_GENERAL_IMAGE) | set(_ANNOTATION)
        req |= {t for t in present if 0x6000 <= (t >> 16) <= 0x601E and (t >> 16) % 2 == 0}
    return {t for t in req if t in present}


@dataclass
class SignResult:
    """What `sign_file` did."""

    output: Path
    location: str
    uid: str
    mac_id: int
    mac: str
    profile: str
    signed_tags: list[int]
    datetime: str


def uuid_uid() -> str:
    """A new UID derived from a random UUID (PS3.5 B.2: '2.25.' + the UUID as a decimal integer); needs
    no registered root and no pydicom import (so `medsec sign` starts fast)."""
    return f"2.25.{uuid.uuid4().int}"


def _us(v: int) -> bytes:
    return struct.pack("<H", v)


def _at(tags: Iterable[int]) -> bytes:
    return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)


def _dicom_datetime(now: dt.datetime) -> str:
    now = now.astimezone(dt.UTC)
    return now.strftime("%Y%m%d%H%M%S.%f") + "+0000"


def _sign_digest(key: PrivateKey, digest: bytes, mac: str) -> bytes:
    alg = utils.Prehashed(_hash_algorithm(mac))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), alg)
    return key.sign(digest, ec.ECDSA(alg))


def sign_dicom(
    df: rd.DicomFile,
    key: PrivateKey,
    cert: x509.Certificate,
    *,
    profile: str = "base",
    mac: str = "SHA256",
    tags: Sequence[int] | None = None,
    item: str | None = None,
    now: dt.datetime | None = None,
    uid: str | None = None,
) -> SignResult:
    """Add one signature to `df` in memory (main data set, or the item at `item`); see `sign_file`."""
    mac = normalize_mac(mac)
    if mac not in SIGNABLE_MACS:
        raise ProfileError(f"--mac {mac}: not offered for new signatures (choose from {', '.join(SIGNABLE_MACS)})")
    if not mac_available(mac):
        raise ProfileError(f"--mac {mac}: this machine's OpenSSL/hashlib does not offer {mac}")
    if profile not in PROFILES:
        raise ProfileError(f"--profile {profile}: choose from {', '.join(PROFILES)}")
    if profile != "none" and not isinstance(key, rsa.RSAPrivateKey):
        raise ProfileError(f"the {profile} RSA profile needs an RSA key (PS3.15 defines no ECDSA profile); "
                           "use --profile none for ECDSA")
    check_key_matches(key, cert)
    when = now or dt.datetime.now(dt.UTC)
    bad_time = check_time_valid(cert, when)
    if bad_time:
        raise CertificateValidityError(f"cannot sign: {bad_time}")
    dataset, location = resolve_item(df, item)
    present = {e.tag: e for e in dataset.elements}
    if tags:
        chosen = set()
        for t in tags:
            if not is_signable_tag(t):
                raise IntegrityError(f"--tags: element {rd.tag_str(t)} cannot be signed (PS3.15 C.1 excludes it)")
            if t not in present:
                raise IntegrityError(f"--tags: element {rd.tag_str(t)} is not in the data set being signed")
            if not is_signable(present[t]):
                raise IntegrityError(f"--tags: element {rd.tag_str(t)} cannot be signed (PS3.15 C.1 excludes it)")
            chosen.add(t)
    else:
        chosen = {t for t, e in present.items() if is_signable(e)}
    chosen |= _profile_tags(profile, dataset, location == "main")
    signed = sorted(chosen)
    if not signed:
        raise IntegrityError(f"{df.source}: nothing signable in the {location} data set")

    mac_seq = dataset.find(MAC_PARAMETERS_SEQ)
    sig_seq = dataset.find(DIGITAL_SIGNATURES_SEQ)
    used = set()
    for seq in (mac_seq, sig_seq):
        for it in (seq.items or []) if seq is not None else []:
            e = it.find(MAC_ID)
            if e is not None and len(e.value) >= 2:
                used.add(struct.unpack("<H", e.value[:2])[0])
    mac_id = max(used) + 1 if used else 0
    sig_uid = uid or uuid_uid()
    stamp = _dicom_datetime(when)
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    sig_elements = [
        rd.make_element(MAC_ID, "US", _us(mac_id)),
        rd.make_element(SIGNATURE_UID, "UI", sig_uid.encode()),
        rd.make_element(SIGNATURE_DATETIME, "DT", stamp.encode()),
        rd.make_element(CERTIFICATE_TYPE, "CS", b"X509_1993_SIG"),
        rd.make_element(CERTIFICATE_OF_SIGNER, "OB", cert_der),
    ]
    sig_item = rd.Item(0, 0, False, sig_elements)
    stream = mac_stream(dataset, signed, sig_item)
    digest = hashlib.new(MAC_ALGORITHMS[mac], stream).digest()
    try:
        signature = _sign_digest(key, digest, mac)
    except UnsupportedAlgorithm as e:
        raise ProfileError(f"--mac {mac}: the OpenSSL inside `cryptography` cannot sign with it ({e})") from e
    sig_item.elements.append(rd.make_element(SIGNATURE, "OB", signature))

    # like DCMTK: the file's own transfer syntax (explicit VR LE family), else explicit VR LE
    mac_ts = rd.EXPLICIT_VR_LE if df.reencoded else df.transfer_syntax
    mac_item = rd.Item(0, 0, False, [
        rd.make_element(MAC_ID, "US", _us(mac_id)),
        rd.make_element(MAC_TS, "UI", mac_ts.encode()),
        rd.make_element(MAC_ALGORITHM, "CS", mac.encode()),
        rd.make_element(DATA_ELEMENTS_SIGNED, "AT", _at(signed)),
    ])
    if mac_seq is None:
        mac_seq = rd.make_sequence(MAC_PARAMETERS_SEQ, [])
        rd.insert_element(dataset, mac_seq)
    if sig_seq is None:
        sig_seq = rd.make_sequence(DIGITAL_SIGNATURES_SEQ, [])
        rd.insert_element(dataset, sig_seq)
    assert mac_seq.items is not None and sig_seq.items is not None
    mac_seq.items.append(mac_item)
    sig_seq.items.append(sig_item)
    return SignResult(Path(), location, sig_uid, mac_id, mac, profile, signed, stamp)


def sign_file(
    in_path: str | Path,
    out_path: str | Path,
    key: str | Path | PrivateKey,
    cert: str | Path | x509.Certificate,
    *,
    profile: str = "base",
    mac: str = "SHA256",
    tags: Sequence[int | str] | None = None,
    item: str | None = None,
    password: str | None = None,
    now: dt.datetime | None = None,
) -> SignResult:
    """Write a signed copy of `in_path` to `out_path` (atomically; in == out is allowed).

    `tags`: sign only these elements (plus what the profile requires); default every signable element
    of the data set. `item`: sign inside a sequence item ('Keyword[i].Keyword[j]'). Files that are not
    explicit VR little endian are re-encoded to it first (the content stays the same)."""
    k = key if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else load_private_key(key, password)
    c = cert if isinstance(cert, x509.Certificate) else load_certificate(cert)
    df = rd.read(str(in_path))
    tag_ints = [parse_tag(t) if isinstance(t, str) else int(t) for t in tags] if tags else None
    res = sign_dicom(df, k, c, profile=profile, mac=mac, tags=tag_ints, item=item, now=now)
    res.output = _write(df, out_path)
    return res


def _write(df: rd.DicomFile, out_path: str | Path) -> Path:
    """Serialise `df` to `out_path` atomically (no reader ever sees a half-written file)."""
    from medsec.paths import write_bytes_atomic

    out = Path(out_path)
    try:
        write_bytes_atomic(out, rd.serialize(df))
    except OSError as e:
        raise IntegrityError(f"cannot write {out}: {e.strerror or e}") from e
    return out


# ---------------------------------------------------------------- verification

Status = Literal["valid", "tampered", "untrusted", "cert-time", "unsupported", "malformed"]


@dataclass
class SignatureReport:
    """One signature's verification result (JSON-friendly through `as_dict`)."""

    location: str
    mac_id: int | None
    uid: str | None
    datetime: str | None
    mac: str | None
    key_algorithm: str | None
    signer: str | None
    issuer: str | None
    signed_tags: list[int] = field(default_factory=list)
    missing_tags: list[int] = field(default_factory=list)
    crypto_valid: bool = False
    trusted: bool = False
    time_valid: bool = False
    covers_pixels_and_uids: bool = False
    status: Status = "malformed"
    reason: str = ""
    timestamp: dict[str, Any] | None = None  # the Certified Timestamp's TimestampReport, when there is one

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["signed_tags"] = [rd.tag_str(t) for t in self.signed_tags]
        d["missing_tags"] = [rd.tag_str(t) for t in self.missing_tags]
        return d


def _text(it: rd.Item, tag: int) -> str | None:
    e = it.find(tag)
    if e is None or e.items is not None:
        return None
    return e.value.decode("ascii", "replace").rstrip("\x00 ")


def _key_description(pub: Any) -> str:
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA-{pub.key_size}"
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return f"ECDSA-{pub.curve.name}"
    return type(pub).__name__


# DER DigestInfo prefixes (RFC 8017 9.2 note 1; RIPEMD-160 OID 1.3.36.3.2.1): lets RSA signatures be
# checked by recovering the DigestInfo when `cryptography`'s OpenSSL lacks the hash.
_DIGEST_INFO_PREFIX = {
    "MD5": "3020300c06082a864886f70d020505000410",
    "SHA1": "3021300906052b0e03021a05000414",
    "RIPEMD160": "3021300906052b2403020105000414",
    "SHA256": "3031300d060960864801650304020105000420",
    "SHA384": "3041300d060960864801650304020205000430",
    "SHA512": "3051300d060960864801650304020305000440",
}


def _verify_crypto(pub: Any, signature: bytes, digest: bytes, mac: str) -> bool:
    alg = utils.Prehashed(_hash_algorithm(mac))
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            sig = signature[: (pub.key_size + 7) // 8]
            try:
                pub.verify(sig, digest, padding.PKCS1v15(), alg)
            except UnsupportedAlgorithm:
                expected = bytes.fromhex(_DIGEST_INFO_PREFIX[mac]) + digest
                return public_key_verify_digest_rsa(pub, sig, expected)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(der_trim(signature), digest, ec.ECDSA(alg))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def required_coverage(dataset: rd.Item) -> list[int]:
    """Tags a signature must cover for the gate: the SOP/Study/Series Instance UIDs, every pixel data
    element present, and the pixel interpretation attributes present. Empty when there are no pixels."""
    pixels = [t for t in PIXEL_TAGS if dataset.find(t) is not None]
    if not pixels:
        return []
    interp = [t for t in PIXEL_INTERPRETATION_TAGS if dataset.find(t) is not None]
    return sorted({*KEY_UIDS, *pixels, *interp})


def _covers(dataset: rd.Item, signed: set[int]) -> bool:
    need = required_coverage(dataset)
    return bool(need) and all(t in signed for t in need)


def verify_dataset(dataset: rd.Item, location: str, trust: TrustStore | None,
                   at: dt.datetime | None = None, tsa_trust: TrustStore | None = None) -> list[SignatureReport]:
    """Verify every signature held directly by `dataset` (not those in its sequence items); certified
    timestamps against `tsa_trust` (default: `trust`)."""
    sig_seq = dataset.find(DIGITAL_SIGNATURES_SEQ)
    if sig_seq is None or not sig_seq.items:
        return []
    mac_seq = dataset.find(MAC_PARAMETERS_SEQ)
    params: dict[int, rd.Item] = {}
    for it in (mac_seq.items or []) if mac_seq is not None else []:
        e = it.find(MAC_ID)
        if e is not None and len(e.value) >= 2:
            params[struct.unpack("<H", e.value[:2])[0]] = it
    reports = []
    for sig_item in sig_seq.items:
        rep = SignatureReport(location, None, _text(sig_item, SIGNATURE_UID), _text(sig_item, SIGNATURE_DATETIME),
                              None, None, None, None)
        reports.append(rep)
        id_el = sig_item.find(MAC_ID)
        if id_el is None or len(id_el.value) < 2:
            rep.reason = "signature item has no MAC ID Number (0400,0005)"
            continue
        rep.mac_id = struct.unpack("<H", id_el.value[:2])[0]
        p = params.get(rep.mac_id)
        if p is None:
            rep.reason = f"no MAC Parameters item with MAC ID {rep.mac_id}"
            continue
        rep.mac = _text(p, MAC_ALGORITHM)
        ts = _text(p, MAC_TS)
        if not ts:
            rep.reason = "MAC Parameters item has no MAC Calculation Transfer Syntax UID"
            continue
        if ts in (rd.IMPLICIT_VR_LE, rd.EXPLICIT_VR_BE):
            # DCMTK writes the file's own syntax when it is of the explicit VR LE family (e.g. JPEG)
            rep.status, rep.reason = "unsupported", f"MAC Calculation Transfer Syntax {ts} is not explicit VR LE"
            continue
        at_el = p.find(DATA_ELEMENTS_SIGNED)
        if at_el is None or len(at_el.value) % 4:
            rep.reason = "MAC Parameters item has no valid Data Elements Signed (0400,0020)"
            continue
        pairs = struct.unpack(f"<{len(at_el.value) // 2}H", at_el.value)
        rep.signed_tags = [(pairs[i] << 16) | pairs[i + 1] for i in range(0, len(pairs), 2)]
        rep.missing_tags = [t for t in rep.signed_tags if dataset.find(t) is None]
        cert_el = sig_item.find(CERTIFICATE_OF_SIGNER)
        sig_el = sig_item.find(SIGNATURE)
        if _text(sig_item, CERTIFICATE_TYPE) != "X509_1993_SIG" or cert_el is None or sig_el is None:
            rep.reason = "signature item lacks an X509_1993_SIG certificate or the Signature"
            continue
        try:
            with warnings.catch_warnings():  # e.g. a non-positive serial number: still parsed, then judged
                warnings.simplefilter("ignore")
                cert = x509.load_der_x509_certificate(der_trim(cert_el.value))
            pub = cert.public_key()
            rep.signer = cert.subject.rfc4514_string()
            rep.issuer = cert.issuer.rfc4514_string()
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as e:
            rep.reason = f"Certificate of Signer cannot be parsed ({e})"
            continue
        rep.key_algorithm = _key_description(pub)
        if rep.mac not in MAC_ALGORITHMS:
            rep.reason = f"MAC Algorithm {rep.mac!r} is not a DICOM defined term"
            continue
        if not mac_available(rep.mac):
            rep.status = "unsupported"
            rep.reason = f"this machine's OpenSSL/hashlib lacks {rep.mac}: the signature cannot be checked"
            continue
        rep.covers_pixels_and_uids = location == "main" and _covers(dataset, set(rep.signed_tags))
        if rep.missing_tags:
            rep.status = "tampered"
            rep.reason = f"signed element(s) removed: {', '.join(rd.tag_str(t) for t in rep.missing_tags)}"
            continue
        stream = mac_stream(dataset, rep.signed_tags, sig_item)
        digest = hashlib.new(MAC_ALGORITHMS[rep.mac], stream).digest()
        try:
            rep.crypto_valid = _verify_crypto(pub, sig_el.value, digest, rep.mac)
        except UnsupportedAlgorithm as e:
            rep.status, rep.reason = "unsupported", f"cannot verify {rep.mac} with {rep.key_algorithm}: {e}"
            continue
        if not rep.crypto_valid:
            rep.status, rep.reason = "tampered", "signature does not match the signed elements (content changed)"
            continue
        if sig_item.find(TIMESTAMP_TYPE) is not None or sig_item.find(TIMESTAMP) is not None:
            rep.timestamp = _check_timestamp(sig_item, cert, tsa_trust or trust).as_dict()
        if trust is None:
            rep.status, rep.reason = "untrusted", "no trust store given"
            continue
        chain = trust.check(cert, at)
        rep.trusted, rep.time_valid = chain.trusted, chain.time_valid
        if not chain.trusted:
            rep.status, rep.reason = "untrusted", chain.reason
        elif not chain.time_valid:
            rep.status, rep.reason = "cert-time", chain.reason
        else:
            rep.status, rep.reason = "valid", "signature valid, signer trusted"
    return reports


Path_ = tuple[tuple[int, int], ...]  # (sequence tag, item index) steps from the main data set


def _walk(dataset: rd.Item, path: Path_ = ()) -> Iterable[tuple[rd.Item, Path_]]:
    """The data set and every sequence item below it (signature sequences excluded), with their path."""
    yield dataset, path
    for el in dataset.elements:
        if el.items is None or el.tag in (MAC_PARAMETERS_SEQ, DIGITAL_SIGNATURES_SEQ):
            continue
        for i, it in enumerate(el.items):
            yield from _walk(it, (*path, (el.tag, i)))


def _location(path: Path_) -> str:
    """'main', or 'Keyword[i].Keyword[j]' (pydicom's dictionary is loaded only for item signatures)."""
    if not path:
        return "main"
    from pydicom.datadict import keyword_for_tag

    return ".".join(f"{keyword_for_tag(t) or rd.tag_str(t)}[{i}]" for t, i in path)


def verify_dicom(df: rd.DicomFile, trust: TrustStore | None, at: dt.datetime | None = None,
                 tsa_trust: TrustStore | None = None) -> list[SignatureReport]:
    """Verify every signature in the file: main data set and sequence items, in file order; certified
    timestamps against `tsa_trust` (default: `trust`)."""
    out: list[SignatureReport] = []
    for ds, path in _walk(df.dataset):
        if ds.find(DIGITAL_SIGNATURES_SEQ) is not None:
            out.extend(verify_dataset(ds, _location(path), trust, at, tsa_trust))
    return out



# ---------------------------------------------------------------- certified timestamps (RFC 3161)


def stamped_value(sig_item: rd.Item) -> bytes:
    """The bytes a certified timestamp's message imprint covers: the Signature (0400,0120) value, for
    ECDSA without the even-length pad byte (as dcmsign)."""
    sig_el = sig_item.find(SIGNATURE)
    if sig_el is None or len(sig_el.value) < 4:
        raise TimestampError("the signature item holds no Signature (0400,0120) to timestamp")
    cert_el = sig_item.find(CERTIFICATE_OF_SIGNER)
    is_rsa = True
    if cert_el is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                is_rsa = isinstance(x509.load_der_x509_certificate(der_trim(cert_el.value)).public_key(),
                                    rsa.RSAPublicKey)
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion):
            is_rsa = True
    return sig_el.value if is_rsa else der_trim(sig_el.value)


def _check_timestamp(sig_item: rd.Item, cert: x509.Certificate, trust: TrustStore | None) -> Any:
    from medsec.integrity.timestamp import TIMESTAMP_TYPE_CMS, TimestampReport, verify_token

    kind, token = _text(sig_item, TIMESTAMP_TYPE), sig_item.find(TIMESTAMP)
    if kind != TIMESTAMP_TYPE_CMS:
        return TimestampReport(False, f"Certified Timestamp Type {kind!r} is not {TIMESTAMP_TYPE_CMS}")
    if token is None or not token.value:
        return TimestampReport(False, "Certified Timestamp Type is set but the Certified Timestamp is missing")
    return verify_token(der_trim(token.value), stamped_value(sig_item), trust, cert)


@dataclass
class SignatureRef:
    """One signature of a file: the data set holding it, where that is, and its Digital Signatures item."""

    dataset: rd.Item
    location: str
    item: rd.Item

    @property
    def uid(self) -> str | None:
        return _text(self.item, SIGNATURE_UID)


def signatures(df: rd.DicomFile) -> list[SignatureRef]:
    """Every signature item of the file (main data set and sequence items), in file order."""
    out: list[SignatureRef] = []
    for ds, path in _walk(df.dataset):
        seq = ds.find(DIGITAL_SIGNATURES_SEQ)
        if seq is not None:
            out.extend(SignatureRef(ds, _location(path), it) for it in seq.items or [])
    return out


def find_signature(df: rd.DicomFile, uid: str | None = None, matches: Any = None) -> SignatureRef:
    """The signature with Digital Signature UID `uid`; else the one whose Signature value `matches`
    accepts (a predicate on `stamped_value`); else the file's only (or newest main data set) signature."""
    sigs = signatures(df)
    if not sigs:
        raise TimestampError(f"{df.source} carries no digital signature to timestamp")
    if uid:
        found = [s for s in sigs if s.uid == uid]
        if not found:
            raise TimestampError(f"{df.source} has no signature with UID {uid} "
                                 f"(it has {', '.join(str(s.uid) for s in sigs)})")
        return found[0]
    if matches is not None:
        found = [s for s in sigs if matches(stamped_value(s.item))]
        if not found:
            raise TimestampError(f"no signature of {df.source} is the one this timestamp was made for "
                                 "(a request or response for another signature or file)")
        return found[0]
    main = [s for s in sigs if s.location == "main"]
    return (main or sigs)[-1]


def timestamp_request(path: str | Path, *, uid: str | None = None, mac: str = "SHA256", nonce: bool = True,
                      cert_req: bool = True, policy: str | None = None) -> tuple[bytes, str]:
    """(DER TimeStampReq, signature UID) for a signature of the signed file at `path` (by `uid`, else
    the newest signature of the main data set), as `dcmsign --sign ... +ts` writes it."""
    from medsec.integrity.timestamp import make_request

    df = rd.read(str(path))
    ref = find_signature(df, uid)
    return make_request(stamped_value(ref.item), mac=mac, nonce=nonce, cert_req=cert_req, policy=policy), \
        str(ref.uid)


@dataclass
class TimestampInsertResult:
    """What `insert_timestamp` did."""

    output: Path
    uid: str
    location: str
    time: str | None


def insert_timestamp(in_path: str | Path, out_path: str | Path, response: bytes, *,
                     request: bytes | None = None, uid: str | None = None) -> TimestampInsertResult:
    """Put the token of a TSA's response into its signature's item (Certified Timestamp Type CMS_TSP,
    Certified Timestamp) and write the file to `out_path` atomically, like `dcmsign +t`.

    The signature is the one with `uid`, else the one `request` (or the response) was made for. The
    response must be granted, answer `request` when given, and carry that signature's imprint
    (TimestampError otherwise: nothing is written). Its TSA is checked against a trust store by `verify`."""
    from medsec.integrity.timestamp import (
        TIMESTAMP_TYPE_CMS,
        request_imprint_matches,
        response_imprint_matches,
        token_from_response,
    )

    df = rd.read(str(in_path))
    if uid:
        ref = find_signature(df, uid)
    elif request is not None:
        ref = find_signature(df, matches=lambda v: request_imprint_matches(request, v))
    else:
        ref = find_signature(df, matches=lambda v: response_imprint_matches(response, v))
    token, time = token_from_response(response, stamped_value(ref.item), request)
    rd.insert_element(ref.item, rd.make_element(TIMESTAMP_TYPE, "CS", TIMESTAMP_TYPE_CMS.encode()))
    rd.insert_element(ref.item, rd.make_element(TIMESTAMP, "OB", token))
    return TimestampInsertResult(_write(df, out_path), str(ref.uid), ref.location, time)
