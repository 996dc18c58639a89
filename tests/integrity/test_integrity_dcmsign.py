"""Interoperability with DCMTK's dcmsign (Debian package dcmtk, installed on CI).

- files signed by medsec verify with `dcmsign --verify` (signer certificate or its CA trusted);
- files signed by dcmsign (base/creator profiles, SHA-256/RIPEMD-160, RSA/ECDSA) verify with medsec;
- a change to a signed element makes both refuse;
- the MAC byte stream medsec builds equals dcmsign's `--dump` byte for byte (nested sequences,
  encapsulated RLE and JPEG pixel data, signatures in sequence items, purpose codes).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medsec.integrity import check
from medsec.integrity import rawdicom as rd
from medsec.integrity.macstream import DIGITAL_SIGNATURES_SEQ, mac_available, mac_stream
from medsec.integrity.signature import resolve_item, sign_file, verify_dicom

pytestmark = pytest.mark.skipif(shutil.which("dcmsign") is None, reason="DCMTK dcmsign is not on PATH")


def dcmsign(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dcmsign", *map(str, args)], capture_output=True, text=True, timeout=60)


def dcm_verify(path: Path, trusted: Path) -> int:
    """dcmsign's verdict: 0 valid, 100 no signature, 101 failed; +rg: a missing signature fails."""
    return dcmsign("--verify", "+rg", "+cf", trusted, path).returncode


def flip_value_byte(src: Path, dst: Path, tag: int) -> None:
    df = rd.read(str(src))
    el = df.find(tag)
    assert el is not None
    pos = el.fragments[-1].value_offset if el.fragments else el.value_offset
    data = bytearray(src.read_bytes())
    data[pos] ^= 0x01
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def jpeg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("img2dcm") is None:
        pytest.skip("DCMTK img2dcm is not on PATH")
    from PIL import Image

    d = tmp_path_factory.mktemp("jpeg")
    img = (np.add.outer(np.arange(32), np.arange(32)) * 4 % 256).astype(np.uint8)
    Image.fromarray(img).save(d / "a.jpg", quality=90)
    subprocess.run(["img2dcm", str(d / "a.jpg"), str(d / "jpeg.dcm")], check=True, capture_output=True)
    return d / "jpeg.dcm"


@pytest.mark.parametrize("which", ["nested", "rle"])
def test_medsec_signed_verifies_with_dcmsign(which: str, sample_dir: Path, tmp_path: Path, rsa_signer,
                                             ec_signer, ca_signer) -> None:
    src = sample_dir / f"{which}.dcm"
    for signer, profile, mac in [(rsa_signer, "base", "sha256"), (rsa_signer, "creator", "ripemd160"),
                                 (ec_signer, "none", "sha384"), (ca_signer, "authorization", "sha512")]:
        if not mac_available(mac.upper()):
            continue
        out = tmp_path / "out.dcm"
        sign_file(src, out, signer.key, signer.cert, profile=profile, mac=mac)
        trusted = next(signer.trust.iterdir())  # the self-signed cert, or the CA for ca_signer
        r = dcmsign("--verify", "+rg", "+cf", trusted, out)
        assert r.returncode == 0, (profile, mac, r.stderr)
        assert check(out, signer.trust).ok
        bad = tmp_path / "bad.dcm"
        flip_value_byte(out, bad, 0x7FE00010)
        assert dcm_verify(bad, trusted) == 101
        assert check(bad, signer.trust).reason == "tampered"


def test_medsec_multi_and_item_signatures_verify_with_dcmsign(nested_file: Path, tmp_path: Path,
                                                              rsa_signer) -> None:
    out = tmp_path / "multi.dcm"
    sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert, item="ProcedureCodeSequence[0]")
    sign_file(out, out, rsa_signer.key, rsa_signer.cert)
    sign_file(out, out, rsa_signer.key, rsa_signer.cert, mac="sha1", tags=["PixelData", "PatientID"])
    r = dcmsign("--verify", "+rg", "+cf", rsa_signer.cert, out)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Signature Verification : OK") == 3


DCMSIGN_CASES = [
    # (key kind, dcmsign profile flag, dcmsign MAC flag, DICOM MAC name)
    ("rsa", "+pb", "+m2", "SHA256"),
    ("rsa", "+pb", "+mr", "RIPEMD160"),
    ("rsa", "+pc", "+m2", "SHA256"),
    ("rsa", "+pc", "+mr", "RIPEMD160"),
    ("rsa", "+pa", "+m5", "SHA512"),
    ("ec", "-pf", "+m2", "SHA256"),
    ("ec", "-pf", "+mr", "RIPEMD160"),
]


@pytest.mark.parametrize("kind,profile,macflag,mac", DCMSIGN_CASES)
@pytest.mark.parametrize("which", ["nested", "rle"])
def test_dcmsign_signed_verifies_with_medsec_and_streams_match(
    kind: str, profile: str, macflag: str, mac: str, which: str, sample_dir: Path, tmp_path: Path,
    rsa_signer, ec_signer,
) -> None:
    if not mac_available(mac):
        pytest.skip(f"local OpenSSL lacks {mac}")
    signer = rsa_signer if kind == "rsa" else ec_signer
    out, dump = tmp_path / "d.dcm", tmp_path / "dump.bin"
    r = dcmsign("--sign", signer.key, signer.cert, "-pw", profile, macflag, "+d", dump, sample_dir / f"{which}.dcm", out)
    assert r.returncode == 0, r.stderr
    v = check(out, signer.trust)
    assert v.ok, v.message
    (s,) = v.signatures
    assert s.mac == mac and s.key_algorithm.startswith("RSA" if kind == "rsa" else "ECDSA")
    df = rd.read(str(out))
    sig_item = df.find(DIGITAL_SIGNATURES_SEQ).items[0]
    assert mac_stream(df.dataset, s.signed_tags, sig_item) == dump.read_bytes()
    # dcmsign's file re-serialises byte-identically through the raw reader
    assert rd.serialize(df) == out.read_bytes()
    # tampering with a signed element: both refuse
    for tag in (0x7FE00010, 0x00100010):
        bad = tmp_path / "bad.dcm"
        flip_value_byte(out, bad, tag)
        assert check(bad, signer.trust).reason == "tampered"
        assert dcm_verify(bad, signer.cert) == 101


def test_stream_matches_dump_for_jpeg_item_and_purpose(jpeg_file: Path, nested_file: Path, tmp_path: Path,
                                                       rsa_signer) -> None:
    cases = [
        (jpeg_file, ["--sign", rsa_signer.key, rsa_signer.cert], None),
        (nested_file, ["--sign", rsa_signer.key, rsa_signer.cert, "+sp", "3"], None),
        (nested_file, ["--sign-item", rsa_signer.key, rsa_signer.cert,
                       "ProcedureCodeSequence[0].ConceptNameCodeSequence[0]"],
         "ProcedureCodeSequence[0].ConceptNameCodeSequence[0]"),
        (nested_file, ["--sign", rsa_signer.key, rsa_signer.cert, "-t", "PixelData", "-t", "0008,1032",
                       "-t", "SOPInstanceUID"], None),
    ]
    for src, args, item in cases:
        out, dump = tmp_path / "o.dcm", tmp_path / "dump.bin"
        r = dcmsign(*args, "-pw", "+m2", "+d", dump, src, out)
        assert r.returncode == 0, r.stderr
        df = rd.read(str(out))
        ds, _ = resolve_item(df, item)
        (rep,) = verify_dicom(df, None)
        assert rep.crypto_valid, rep.reason
        assert mac_stream(ds, rep.signed_tags, ds.find(DIGITAL_SIGNATURES_SEQ).items[0]) == dump.read_bytes()
    # the JPEG file itself: medsec signs it, dcmsign verifies it
    signed = tmp_path / "jpeg-signed.dcm"
    sign_file(jpeg_file, signed, rsa_signer.key, rsa_signer.cert)
    assert dcm_verify(signed, rsa_signer.cert) == 0
    assert check(signed, rsa_signer.trust).ok


def test_undefined_length_sequences(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    """Undefined-length sequences/items stay undefined; signing inside them keeps dcmsign happy."""
    df = rd.read(str(nested_file))
    outer = df.find(0x00081032)
    outer.length = rd.UNDEFINED
    for it in outer.items:
        it.undefined_length = True
        inner = it.find(0x0040A043)
        inner.length = rd.UNDEFINED
        for it2 in inner.items:
            it2.undefined_length = True
    src = tmp_path / "undef.dcm"
    src.write_bytes(rd.serialize(df))
    assert dcmsign("--verify", src).returncode == 0  # a well-formed file for DCMTK too
    df = rd.read(str(src))
    seq = df.find(0x00081032)
    assert seq.undefined_length and seq.items[0].undefined_length
    out = tmp_path / "signed.dcm"
    sign_file(src, out, rsa_signer.key, rsa_signer.cert, item="ProcedureCodeSequence[0].ConceptNameCodeSequence[0]")
    sign_file(out, out, rsa_signer.key, rsa_signer.cert)
    assert rd.read(str(out)).find(0x00081032).undefined_length
    r = dcmsign("--verify", "+rg", "+cf", rsa_signer.cert, out)
    assert r.returncode == 0 and r.stderr.count("Signature Verification : OK") == 2, r.stderr
    assert check(out, rsa_signer.trust).ok


def test_implicit_vr_files_both_ways(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    """An implicit VR little endian file: dcmsign signs it in place (MAC over the explicit VR encoding)
    and medsec verifies it; medsec re-encodes it to explicit VR LE, signs, and dcmsign verifies."""
    import pydicom

    ds = pydicom.dcmread(nested_file)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    imp = tmp_path / "implicit.dcm"
    ds.save_as(imp, implicit_vr=True, little_endian=True, enforce_file_format=True)
    by_dcmtk, dump = tmp_path / "dcmtk.dcm", tmp_path / "dump.bin"
    r = dcmsign("--sign", rsa_signer.key, rsa_signer.cert, "-pw", "+m2", "+d", dump, imp, by_dcmtk)
    assert r.returncode == 0, r.stderr
    assert pydicom.dcmread(by_dcmtk).file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    v = check(by_dcmtk, rsa_signer.trust)
    assert v.ok, v.message
    df = rd.read(str(by_dcmtk))
    assert mac_stream(df.dataset, v.signatures[0].signed_tags, df.find(DIGITAL_SIGNATURES_SEQ).items[0]) == (
        dump.read_bytes())
    by_medsec = tmp_path / "medsec.dcm"
    sign_file(imp, by_medsec, rsa_signer.key, rsa_signer.cert)
    assert dcm_verify(by_medsec, rsa_signer.cert) == 0
