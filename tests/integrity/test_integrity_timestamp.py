"""Certified timestamps (RFC 3161) on DICOM signatures: request, insert, verify; bad input; dcmsign both ways.

The TSA is the tests' own (tests/integrity/tsa.py: asn1crypto + `cryptography`, a CA-issued TSA
certificate with the timeStamping EKU); one test also uses `openssl ts -reply` as an independent TSA.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.cli import app
from medsec.integrity import check
from medsec.integrity import rawdicom as rd
from medsec.integrity.errors import TimestampError
from medsec.integrity.gate import EXIT_CODES
from medsec.integrity.macstream import TIMESTAMP
from medsec.integrity.signature import der_trim, insert_timestamp, sign_file, timestamp_request
from tests.integrity.tsa import LocalTSA, make_tsa

runner = CliRunner()
needs_dcmsign = pytest.mark.skipif(shutil.which("dcmsign") is None, reason="DCMTK dcmsign is not on PATH")


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> LocalTSA:
    return make_tsa(tmp_path_factory.mktemp("tsa"))


@pytest.fixture(scope="module")
def other_tsa(tmp_path_factory: pytest.TempPathFactory) -> LocalTSA:
    return make_tsa(tmp_path_factory.mktemp("other-tsa"), cn="Unknown TSA")


@pytest.fixture()
def trust(tmp_path: Path, rsa_signer, tsa: LocalTSA) -> Path:
    """The signer's trust folder plus the TSA's CA."""
    d = tmp_path / "trust"
    shutil.copytree(rsa_signer.trust, d)
    shutil.copy(tsa.ca_pem, d)
    return d


@pytest.fixture()
def signed(nested_file: Path, tmp_path: Path, rsa_signer) -> Path:
    out = tmp_path / "signed.dcm"
    sign_file(nested_file, out, rsa_signer.key, rsa_signer.cert)
    return out


def stamp(path: Path, out: Path, tsa: LocalTSA, **respond) -> Path:
    q, _ = timestamp_request(path)
    insert_timestamp(path, out, tsa.respond(q, **respond), request=q)
    return out


def test_timestamp_round_trip(signed: Path, tmp_path: Path, tsa: LocalTSA, trust: Path) -> None:
    out = stamp(signed, tmp_path / "stamped.dcm", tsa)
    v = check(out, trust)
    assert v.ok, v.message
    ts = v.signatures[0].timestamp
    assert ts is not None and ts["valid"] and ts["tsa"] == "CN=Test TSA" and ts["hash"] == "sha256"
    # the timestamp is outside the signed bytes: the signature is unchanged and still valid
    assert v.signatures[0].status == "valid"
    assert rd.read(str(out)).dataset.find(0xFFFAFFFA) is not None
    assert check(out, None).reason == "untrusted"  # no trust store: the signer's trust is the first question


def test_untrusted_tsa_is_refused_with_the_timestamp_code(signed: Path, tmp_path: Path, other_tsa: LocalTSA,
                                                          trust: Path) -> None:
    out = stamp(signed, tmp_path / "stamped.dcm", other_tsa)
    v = check(out, trust)
    assert v.reason == "timestamp" and v.exit_code == EXIT_CODES["timestamp"] == 17
    assert "timestamp authority not trusted" in v.message and "Unknown TSA" in v.message


def test_tampered_timestamp_is_refused(signed: Path, tmp_path: Path, tsa: LocalTSA, trust: Path) -> None:
    # a TSTInfo changed after the TSA signed it (time moved by a year)
    def later(info):
        info["gen_time"] = info["gen_time"].native.replace(year=info["gen_time"].native.year + 1)

    out = stamp(signed, tmp_path / "later.dcm", tsa, mutate=later)
    v = check(out, trust)
    assert v.reason == "timestamp" and "altered" in v.message
    # one byte of the stored token flipped (inside the TSA's signature)
    good = stamp(signed, tmp_path / "good.dcm", tsa)
    el = rd.read(str(good)).dataset.find(0xFFFAFFFA).items[0].find(TIMESTAMP)
    data = bytearray(good.read_bytes())
    data[el.value_offset + len(el.value) - 10] ^= 0x01
    flipped = tmp_path / "flipped.dcm"
    flipped.write_bytes(bytes(data))
    v = check(flipped, trust)
    assert v.reason == "timestamp", v.message
    r = runner.invoke(app, ["verify", str(flipped), "--trust", str(trust)])
    assert r.exit_code == 17, r.output
    assert "certified timestamp: INVALID" in r.output


def test_timestamp_moved_to_another_signature_is_refused(signed: Path, nested_file: Path, tmp_path: Path,
                                                         rsa_signer, tsa: LocalTSA, trust: Path) -> None:
    stamped = stamp(signed, tmp_path / "stamped.dcm", tsa)
    other = tmp_path / "other.dcm"
    sign_file(nested_file, other, rsa_signer.key, rsa_signer.cert)
    token = rd.read(str(stamped)).dataset.find(0xFFFAFFFA).items[0].find(TIMESTAMP)
    df = rd.read(str(other))
    item = df.dataset.find(0xFFFAFFFA).items[0]
    rd.insert_element(item, rd.make_element(0x04000305, "CS", b"CMS_TSP"))
    rd.insert_element(item, token)
    moved = tmp_path / "moved.dcm"
    moved.write_bytes(rd.serialize(df))
    v = check(moved, trust)
    assert v.reason == "timestamp" and "issued for another signature" in v.message


def test_response_for_another_request_is_a_clear_error(signed: Path, nested_file: Path, tmp_path: Path,
                                                       rsa_signer, tsa: LocalTSA) -> None:
    other = tmp_path / "other.dcm"
    sign_file(nested_file, other, rsa_signer.key, rsa_signer.cert)
    q, _ = timestamp_request(signed)
    q_other, _ = timestamp_request(other)
    tsr_other = tsa.respond(q_other)
    out = tmp_path / "out.dcm"
    with pytest.raises(TimestampError, match="answers another request"):
        insert_timestamp(signed, out, tsr_other, request=q)
    with pytest.raises(TimestampError, match="is the one this timestamp was made for"):
        insert_timestamp(signed, out, tsr_other)
    assert not out.exists()  # nothing written
    with pytest.raises(TimestampError, match="nonce"):
        insert_timestamp(signed, out, tsa.respond(q, nonce=12345), request=q)
    with pytest.raises(TimestampError, match="did not grant"):
        insert_timestamp(signed, out, tsa.respond(q, status="rejection"), request=q)
    with pytest.raises(TimestampError, match="not an RFC 3161 TimeStampResp"):
        insert_timestamp(signed, out, b"\x30\x03\x02\x01\x00garbage", request=q)
    assert not out.exists()
    # the CLI: exit 25 and the reason, nothing written
    (tmp_path / "q.tsq").write_bytes(q)
    (tmp_path / "other.tsr").write_bytes(tsr_other)
    r = runner.invoke(app, ["timestamp", "insert", str(signed), str(out), "--tsr", str(tmp_path / "other.tsr"),
                            "--tsq", str(tmp_path / "q.tsq")])
    assert r.exit_code == 25 and "answers another request" in r.output and not out.exists()


def test_cli_request_insert_verify_json(signed: Path, tmp_path: Path, tsa: LocalTSA, trust: Path) -> None:
    tsq, uid_file, tsr, out = (tmp_path / n for n in ("s.tsq", "s.uid", "s.tsr", "s-ts.dcm"))
    r = runner.invoke(app, ["timestamp", "request", str(signed), str(tsq), "--uid-file", str(uid_file),
                            "--mac", "sha512", "--policy", "1.3.6.1.4.1.99999.1.2"])
    assert r.exit_code == 0, r.output
    tsr.write_bytes(tsa.respond(tsq.read_bytes()))
    r = runner.invoke(app, ["timestamp", "insert", str(signed), str(out), "--tsr", str(tsr), "--uid-file", str(uid_file)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(out), "--trust", str(trust), "--json"])
    assert r.exit_code == 0, r.output
    ts = json.loads(r.output)[0]["signatures"][0]["timestamp"]
    assert ts["valid"] and ts["hash"] == "sha512" and ts["policy"] == "1.3.6.1.4.1.99999.1.2"
    r = runner.invoke(app, ["timestamp", "request", str(tmp_path / "nope.dcm"), str(tsq)])
    assert r.exit_code == 10


def test_unsigned_file_cannot_be_timestamped(nested_file: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["timestamp", "request", str(nested_file), str(tmp_path / "q.tsq")])
    assert r.exit_code == 25 and "carries no digital signature" in r.output


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="the OpenSSL command line: openssl is not on PATH")


def openssl_ts_reply(query: bytes, cert: Path, key: Path, folder: Path) -> bytes:
    """An independent TSA implementation, `openssl ts -reply`, answering `query` with `cert` and `key`."""
    (folder / "q.tsq").write_bytes(query)
    (folder / "serial").write_text("01\n")
    cfg = folder / "tsa.cnf"
    cfg.write_text(f"""[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
serial = {folder / 'serial'}
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1.3
digests = sha256, sha384, sha512
accuracy = secs:1
ess_cert_id_alg = sha256
""")
    r = subprocess.run(["openssl", "ts", "-reply", "-config", str(cfg), "-queryfile", str(folder / "q.tsq"),
                        "-signer", str(cert), "-inkey", str(key), "-out", str(folder / "r.tsr")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return (folder / "r.tsr").read_bytes()


@needs_openssl
def test_openssl_ts_reply_token_verifies(signed: Path, tmp_path: Path, tsa: LocalTSA, trust: Path) -> None:
    """An independent TSA implementation: `openssl ts -reply` with the same TSA key and certificate."""
    q, _ = timestamp_request(signed)
    out = tmp_path / "stamped.dcm"
    insert_timestamp(signed, out, openssl_ts_reply(q, tsa.cert_pem, tsa.key_pem, tmp_path), request=q)
    v = check(out, trust)
    assert v.ok, v.message
    assert v.signatures[0].timestamp["policy"] == "1.3.6.1.4.1.99999.1.3"


@needs_openssl
def test_keygen_makes_a_tsa_certificate(signed: Path, tmp_path: Path, rsa_signer) -> None:
    """A site's own TSA from `medsec keygen`: a CA, a TSA certificate it issues (--purpose timestamping: the one
    critical timeStamping extended key usage), `openssl ts -reply` with it; the stamp passes --require-timestamp
    with that CA as --tsa-trust, and is refused without it."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from medsec.integrity.keys import load_certificate

    pki = tmp_path / "pki"
    for args in (["--name", "tsa-ca", "--ca"],
                 ["--name", "tsa", "--purpose", "timestamping", "--issuer-key", str(pki / "tsa-ca.key"),
                  "--issuer-cert", str(pki / "tsa-ca.pem")]):
        r = runner.invoke(app, ["keygen", str(pki), *args])
        assert r.exit_code == 0, r.output
    eku = load_certificate(pki / "tsa.pem").extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    q, _ = timestamp_request(signed)
    base = ["verify", "--trust", str(rsa_signer.trust), "--require-timestamp"]
    stamped = tmp_path / "stamped.dcm"
    insert_timestamp(signed, stamped, openssl_ts_reply(q, pki / "tsa.pem", pki / "tsa.key", tmp_path), request=q)
    r = runner.invoke(app, [*base, "--tsa-trust", str(pki / "tsa-ca.pem"), str(stamped)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*base, str(stamped)])  # that TSA is not trusted
    assert r.exit_code == 17, r.output


def dcmsign(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dcmsign", *map(str, args)], capture_output=True, text=True, timeout=60)


@needs_dcmsign
def test_dcmsign_timestamped_signature_verifies_in_medsec(nested_file: Path, tmp_path: Path, rsa_signer,
                                                          tsa: LocalTSA, trust: Path) -> None:
    """dcmsign signs and writes the query and UID file (+ts), our TSA answers, dcmsign inserts (+t)."""
    signed, tsq, uid, tsr, out = (tmp_path / n for n in ("d.dcm", "d.tsq", "d.uid", "d.tsr", "d-ts.dcm"))
    r = dcmsign("--sign", rsa_signer.key, rsa_signer.cert, "--mac-sha256", "+ts", tsq, uid, nested_file, signed)
    assert r.returncode == 0, r.stderr
    tsr.write_bytes(tsa.respond(tsq.read_bytes()))
    r = dcmsign("+t", tsq, tsr, uid, signed, out)
    assert r.returncode == 0, r.stderr
    v = check(out, trust)
    assert v.ok and v.signatures[0].timestamp["valid"], v.message
    # medsec inserts a response to dcmsign's query, finding the signature through dcmsign's UID file
    out2 = tmp_path / "m-ts.dcm"
    res = runner.invoke(app, ["timestamp", "insert", str(signed), str(out2), "--tsr", str(tsr), "--tsq", str(tsq),
                              "--uid-file", str(uid)])
    assert res.exit_code == 0, res.output
    assert check(out2, trust).ok
    r = dcmsign("--verify", "+tr", "+cf", rsa_signer.cert, "+cf", tsa.ca_pem, out2)
    assert r.returncode == 0, r.stderr


@needs_dcmsign
def test_medsec_timestamp_verifies_in_dcmsign(signed: Path, tmp_path: Path, rsa_signer, tsa: LocalTSA,
                                              other_tsa: LocalTSA) -> None:
    out = stamp(signed, tmp_path / "stamped.dcm", tsa)
    r = dcmsign("--verify", "+tr", "+cf", rsa_signer.cert, "+cf", tsa.ca_pem, out)
    assert r.returncode == 0, r.stderr
    assert "Timestamp Verification : OK" in r.stderr + r.stdout
    # both refuse an untrusted TSA and a tampered token
    untrusted = stamp(signed, tmp_path / "untrusted.dcm", other_tsa)
    assert dcmsign("--verify", "+cf", rsa_signer.cert, "+cf", tsa.ca_pem, untrusted).returncode != 0
    def later(info):
        info["serial_number"] = info["serial_number"].native + 1

    bad = stamp(signed, tmp_path / "bad.dcm", tsa, mutate=later)
    assert dcmsign("--verify", "+cf", rsa_signer.cert, "+cf", tsa.ca_pem, bad).returncode != 0
    # medsec's query and UID file drive dcmsign's insertion (+t)
    tsq, uid, tsr, out2 = (tmp_path / n for n in ("m.tsq", "m.uid", "m.tsr", "d-ts.dcm"))
    res = runner.invoke(app, ["timestamp", "request", str(signed), str(tsq), "--uid-file", str(uid)])
    assert res.exit_code == 0, res.output
    tsr.write_bytes(tsa.respond(tsq.read_bytes()))
    r = dcmsign("+t", tsq, tsr, uid, signed, out2)
    assert r.returncode == 0, r.stderr
    assert dcmsign("--verify", "+tr", "+cf", rsa_signer.cert, "+cf", tsa.ca_pem, out2).returncode == 0


def test_ecdsa_signature_timestamp_both_ways(nested_file: Path, tmp_path: Path, ec_signer, tsa: LocalTSA) -> None:
    """ECDSA signatures are DER, padded to even length in DICOM: the imprint covers the unpadded value."""
    trust = tmp_path / "trust"
    shutil.copytree(ec_signer.trust, trust)
    shutil.copy(tsa.ca_pem, trust)
    padded = 0
    for i in range(40):  # DER ECDSA signatures vary in length: until one odd-length (padded) one is seen
        signed = tmp_path / f"ec{i}.dcm"
        sign_file(nested_file, signed, ec_signer.key, ec_signer.cert, profile="none")
        sig = rd.read(str(signed)).dataset.find(0xFFFAFFFA).items[0].find(0x04000120).value
        padded += len(der_trim(sig)) < len(sig)
        out = stamp(signed, tmp_path / f"ec{i}-ts.dcm", tsa)
        v = check(out, trust)
        assert v.ok and v.signatures[0].timestamp["valid"], v.message
        if shutil.which("dcmsign"):
            r = dcmsign("--verify", "+tr", "+cf", ec_signer.cert, "+cf", tsa.ca_pem, out)
            assert r.returncode == 0, r.stderr
        if padded and i >= 2:
            break
    assert padded


def test_require_timestamp(signed: Path, tmp_path: Path, tsa: LocalTSA, trust: Path) -> None:
    log = tmp_path / "audit.jsonl"
    r = runner.invoke(app, ["verify", str(signed), "--trust", str(trust), "--require-timestamp",
                            "--audit-log", str(log)])
    assert r.exit_code == 17 and "certified timestamp is required" in r.output
    assert json.loads(log.read_text().splitlines()[-1])["reason"] == "timestamp"
    stamped = stamp(signed, tmp_path / "stamped.dcm", tsa)
    r = runner.invoke(app, ["verify", str(stamped), "--trust", str(trust), "--require-timestamp"])
    assert r.exit_code == 0, r.output


def test_flipped_token_bytes_never_crash_and_protected_parts_are_refused(signed: Path, tmp_path: Path,
                                                                         tsa: LocalTSA, trust: Path) -> None:
    """Every byte of the stored token flipped in turn: the gate never raises, and any change to the
    TSTInfo, the signed attributes or the TSA's signature is refused (exit 17). Unsigned framing (the
    SignedData's digest-algorithm list, versions, NULL parameters) may change without effect, as in CMS."""
    from asn1crypto import cms

    from medsec.integrity.gate import check_bytes
    from medsec.integrity.keys import TrustStore

    out = stamp(signed, tmp_path / "stamped.dcm", tsa)
    data = out.read_bytes()
    el = rd.read(str(out)).dataset.find(0xFFFAFFFA).items[0].find(TIMESTAMP)
    token = el.value
    sd = cms.ContentInfo.load(der_trim(token))["content"]
    si = sd["signer_infos"][0]
    protected = []
    for part in (sd["encap_content_info"]["content"].contents, si["signed_attrs"].contents, si["signature"].contents):
        start = token.find(part)
        assert start > 0
        protected.append(range(start, start + len(part)))
    store = TrustStore.load(trust)
    for i in range(len(token)):
        b = bytearray(data)
        b[el.value_offset + i] ^= 0x10
        v = check_bytes(bytes(b), store)
        assert v.reason in ("ok", "timestamp"), (i, v.reason, v.message)
        if any(i in r for r in protected):
            assert v.reason == "timestamp", (i, v.message)


def test_separate_tsa_trust(signed: Path, tmp_path: Path, rsa_signer, tsa: LocalTSA, other_tsa: LocalTSA,
                            trust: Path) -> None:
    """--tsa-trust: TSAs trusted for timestamps only (their CA then vouches for no signer), replacing --trust
    for timestamps."""
    out = stamp(signed, tmp_path / "stamped.dcm", tsa)
    r = runner.invoke(app, ["verify", str(out), "--trust", str(rsa_signer.trust), "--tsa-trust", str(tsa.ca_pem)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(out), "--trust", str(trust), "--tsa-trust", str(other_tsa.ca_pem)])
    assert r.exit_code == 17 and "timestamp authority not trusted" in r.output


@pytest.fixture()
def signed_image(tmp_path: Path, rsa_signer) -> Path:
    """A signed single-frame image (something `infer` and the node's model can read)."""
    import numpy as np

    from medsec.integrity.samples import write_image_dicom

    img = write_image_dicom(tmp_path / "img.dcm", np.random.default_rng(0).integers(0, 256, (1, 40, 40), np.uint8))
    out = tmp_path / "img-signed.dcm"
    sign_file(img, out, rsa_signer.key, rsa_signer.cert)
    return out


def test_infer_requires_timestamp(signed_image: Path, tmp_path: Path, tsa: LocalTSA, trust: Path,
                                  checkpoint: Path) -> None:
    """`infer --require-timestamp`: a signed file without a certified timestamp never reaches the model (exit 17),
    a stamped one does; the TSA may be trusted apart from the signers (--tsa-trust)."""
    log = tmp_path / "audit.jsonl"
    base = ["infer", "--model", str(checkpoint), "--require-signature", "--require-timestamp", "--json",
            "--audit-log", str(log)]
    r = runner.invoke(app, [*base, "--trust", str(trust), str(signed_image)])
    assert r.exit_code == 17 and "certified timestamp is required" in r.output
    (res,) = json.loads(r.stdout)
    assert res["refused"] and res["reason"] == "timestamp"
    stamped = stamp(signed_image, tmp_path / "img-stamped.dcm", tsa)
    r = runner.invoke(app, [*base, "--trust", str(trust), str(stamped)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["signature"]["verdict"] == "accepted"
    signer_only = tmp_path / "signer-only"
    shutil.copytree(trust, signer_only)
    (signer_only / tsa.ca_pem.name).unlink()
    r = runner.invoke(app, [*base, "--trust", str(signer_only), str(stamped)])
    assert r.exit_code == 17, r.output  # the TSA is not trusted: its timestamp does not count
    r = runner.invoke(app, [*base, "--trust", str(signer_only), "--tsa-trust", str(tsa.ca_pem), str(stamped)])
    assert r.exit_code == 0, r.output
    # the timestamp options act on the gate: without it they are a usage error, not a silent pass
    r = runner.invoke(app, ["infer", "--model", str(checkpoint), "--require-timestamp", str(stamped)])
    assert r.exit_code == 2 and "--require-signature" in r.output


def test_serve_requires_timestamp(signed_image: Path, tmp_path: Path, tsa: LocalTSA, trust: Path) -> None:
    """`medsec serve --require-timestamp`, run as a process: a signed instance without a certified timestamp is
    refused (0xC011) and quarantined, a stamped one is stored."""
    import pydicom
    from pynetdicom import AE

    from tests.integrity.node_burst_module import burst

    node = burst.Node(tmp_path, None, None, False, trust=trust, extra_args=["--require-timestamp"])
    node.start()
    try:
        stamped = stamp(signed_image, tmp_path / "img-stamped.dcm", tsa)
        sop_class = pydicom.dcmread(signed_image, stop_before_pixels=True).SOPClassUID
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(sop_class, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDSEC")
        assert assoc.is_established
        try:
            statuses = [int(assoc.send_c_store(f).Status) for f in (signed_image, stamped)]
        finally:
            assoc.release()
    finally:
        node.stop()
    out = (tmp_path / "node-1.log").read_text(errors="replace")
    assert statuses == [0xC000 + 17, 0x0000], out
    assert "certified timestamps required" in out
    assert len(list(node.quarantine.rglob("*.dcm"))) == 1 and len(list(node.store.rglob("*.dcm"))) == 1
