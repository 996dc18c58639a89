"""Signing and verification in Python: round trips, content preservation, profiles, tampering."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest

from medsec.integrity import check
from medsec.integrity import rawdicom as rd
from medsec.integrity.errors import (
    CertificateValidityError,
    IntegrityError,
    KeyCertMismatchError,
    ProfileError,
)
from medsec.integrity.keys import keygen, load_certificate
from medsec.integrity.macstream import mac_available
from medsec.integrity.signature import sign_file, verify_dicom


def _flip_in_value(path: Path, tag: int, out: Path, delta: int = 1) -> None:
    """Change one byte inside the value of top-level element `tag` (a content edit, lengths untouched)."""
    df = rd.read(str(path))
    el = df.find(tag)
    assert el is not None
    pos = el.fragments[-1].value_offset if el.fragments else el.value_offset
    data = bytearray(path.read_bytes())
    data[pos] = (data[pos] + delta) % 256
    out.write_bytes(bytes(data))


@pytest.mark.parametrize("mac", ["sha256", "sha1", "sha384", "sha512", "ripemd160"])
def test_round_trip_every_mac(nested_file: Path, tmp_path: Path, rsa_signer, mac: str) -> None:
    if not mac_available(mac.upper()):
        pytest.skip(f"local OpenSSL lacks {mac}")
    out = tmp_path / "signed.dcm"
    res = sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, mac=mac)
    v = check(out, rsa_signer.trust)
    assert v.ok, v.message
    (s,) = v.signatures
    assert s.mac == mac.upper().replace("-", "") and s.uid == res.uid and s.signer == "CN=RSA Signer"
    assert 0x7FE00010 in s.signed_tags and 0x00081032 in s.signed_tags  # pixels and the nested sequence


def test_signing_keeps_content(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    out = tmp_path / "signed.dcm"
    sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert)
    a, b = pydicom.dcmread(nested_file), pydicom.dcmread(out)
    assert [e.tag for e in b if e.tag not in (0x4FFE0001, 0xFFFAFFFA)] == [e.tag for e in a]
    for e in a:
        assert b[e.tag] == e
    assert b.file_meta == a.file_meta
    # raw bytes of every original element survive unchanged
    ra, rb = rd.read(str(nested_file)), rd.read(str(out))
    for e in ra.elements:
        f = rb.find(e.tag)
        assert f is not None and rd.encode_element(f) == rd.encode_element(e)


def test_unsigned_file_reserialises_byte_identical(nested_file: Path, rle_file: Path) -> None:
    for p in (nested_file, rle_file):
        assert rd.serialize(rd.read(str(p))) == p.read_bytes()


def test_two_signatures_and_item_signature(nested_file: Path, tmp_path: Path, rsa_signer, ec_signer) -> None:
    one, two = tmp_path / "one.dcm", tmp_path / "two.dcm"
    sign_file(nested_file, one, ec_signer.key, ec_signer.cert, profile="none",
              item="ProcedureCodeSequence[0].ConceptNameCodeSequence[0]")
    sign_file(one, two, rsa_signer.key, rsa_signer.cert, mac="sha512")
    sign_file(two, two, rsa_signer.key, rsa_signer.cert, mac="sha384", tags=["PixelData"])
    reps = verify_dicom(rd.read(str(two)), None)
    assert [r.location for r in reps] == ["main", "main", "ProcedureCodeSequence[0].ConceptNameCodeSequence[0]"]
    assert [r.mac_id for r in reps] == [0, 1, 0]
    assert all(r.crypto_valid for r in reps)
    assert reps[2].key_algorithm == "ECDSA-secp256r1" and reps[2].signed_tags == [0x00080100, 0x00080102, 0x00080104]
    assert reps[1].signed_tags == [0x7FE00010]
    # both trust stores together: accepted; only the EC signer trusted: its item signature cannot cover pixels
    assert check(two, rsa_signer.trust).ok
    assert check(two, ec_signer.trust).reason == "pixels-not-covered"


def test_tag_list_and_profiles(nested_file: Path, tmp_path: Path, rsa_signer, ec_signer) -> None:
    out = tmp_path / "s.dcm"
    sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, tags=["PixelData", "(0008,0018)"])
    assert check(out, rsa_signer.trust).reason == "pixels-not-covered"
    uids_and_pixels = ["PixelData", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
    sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, tags=uids_and_pixels)
    # pixels and UIDs signed, but Rows/BitsStored/PhotometricInterpretation... could still be changed
    assert check(out, rsa_signer.trust).reason == "pixels-not-covered"
    interpretation = ["Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                      "BitsStored", "HighBit", "PixelRepresentation"]
    sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, tags=uids_and_pixels + interpretation)
    assert check(out, rsa_signer.trust).ok
    # the creator profile adds the UIDs, equipment and image pixel attributes to a short list
    res = sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, profile="creator", tags=["PatientID"])
    for t in (0x00100020, 0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00080070, 0x00200013, 0x00280010,
              0x7FE00010):
        assert t in res.signed_tags
    assert 0x00100010 not in res.signed_tags  # patient name is not part of the creator profile
    assert check(out, rsa_signer.trust).ok
    with pytest.raises(ProfileError, match="RSA"):
        sign_file(nested_file, out, ec_signer.key, ec_signer.cert, profile="base")
    with pytest.raises(ProfileError, match="MD5"):
        sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, mac="md5")
    with pytest.raises(IntegrityError, match="not in the data set"):
        sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, tags=["(0010,1010)"])
    with pytest.raises(IntegrityError, match="cannot be signed"):
        sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, tags=["(0002,0010)"])


def test_tampering_is_detected(nested_file: Path, rle_file: Path, tmp_path: Path, rsa_signer) -> None:
    for src in (nested_file, rle_file):
        signed = tmp_path / f"signed-{src.name}"
        sign_file(src, signed, rsa_signer.key, rsa_signer.cert)
        assert check(signed, rsa_signer.trust).ok
        for tag in (0x7FE00010, 0x00100010, 0x00080018):
            bad = tmp_path / "bad.dcm"
            _flip_in_value(signed, tag, bad)
            v = check(bad, rsa_signer.trust)
            assert v.reason == "tampered" and v.exit_code == 12, (src, hex(tag), v.message)
    # removing a signed element is tampering too
    ds = pydicom.dcmread(tmp_path / "signed-nested.dcm")
    del ds.PatientName
    ds.save_as(tmp_path / "removed.dcm")
    v = check(tmp_path / "removed.dcm", rsa_signer.trust)
    assert v.reason == "tampered" and "(0010,0010)" in v.message
    # adding an element the signature does not list leaves it valid (and reported as uncovered by nothing)
    ds = pydicom.dcmread(tmp_path / "signed-nested.dcm")
    ds.add_new(0x00181030, "LO", "added later")
    ds.save_as(tmp_path / "added.dcm")
    assert check(tmp_path / "added.dcm", rsa_signer.trust).ok


def test_implicit_vr_input_is_reencoded(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    ds = pydicom.dcmread(nested_file)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    imp = tmp_path / "implicit.dcm"
    ds.save_as(imp, implicit_vr=True, little_endian=True, enforce_file_format=True)
    out = tmp_path / "signed.dcm"
    sign_file(imp, out, rsa_signer.key, rsa_signer.cert)
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert check(out, rsa_signer.trust).ok


def test_sign_time_errors(nested_file: Path, tmp_path: Path, rsa_signer, other_signer) -> None:
    out = tmp_path / "s.dcm"
    with pytest.raises(KeyCertMismatchError):
        sign_file(nested_file, out, rsa_signer.key, other_signer.cert)
    old = keygen(tmp_path / "old", name="old", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5))
    with pytest.raises(CertificateValidityError, match="expired"):
        sign_file(nested_file, out, old.key, old.cert)
    # signing "in the past" is allowed while the certificate was valid; verification now then fails
    sign_file(nested_file, out, old.key, old.cert, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=4, hours=12))
    v = check(out, old.trust_dir)
    assert v.reason == "cert-time" and "expired" in v.message
    assert not out.with_name(".s.dcm.tmp").exists()
    assert load_certificate(old.cert).not_valid_after_utc < dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("mac", ["SHA1", "SHA256", "SHA384", "SHA512", "RIPEMD160", "MD5"])
def test_digest_info_fallback_table(mac: str) -> None:
    """The DigestInfo prefixes used when `cryptography` lacks a hash recover real PKCS#1 v1.5 signatures."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    from medsec.integrity.keys import public_key_verify_digest_rsa
    from medsec.integrity.macstream import MAC_ALGORITHMS
    from medsec.integrity.signature import _DIGEST_INFO_PREFIX, _hash_algorithm

    if not mac_available(mac):
        pytest.skip(f"local OpenSSL lacks {mac}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    digest = hashlib.new(MAC_ALGORITHMS[mac], b"pixels").digest()
    sig = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(_hash_algorithm(mac)))
    prefix = bytes.fromhex(_DIGEST_INFO_PREFIX[mac])
    assert public_key_verify_digest_rsa(key.public_key(), sig, prefix + digest)
    assert not public_key_verify_digest_rsa(key.public_key(), sig, prefix + bytes(len(digest)))
