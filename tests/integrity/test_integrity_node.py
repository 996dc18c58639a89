"""The medsec DICOM node: TLS (BCP 195, mutual authentication), durable store-and-forward into a real Orthanc
with DicomTlsEnabled, DCMTK's storescu +tls as the modality, and a reduced load-and-fault burst. Loopback
only; tests needing Orthanc or DCMTK are skipped where they are not installed."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
import typer
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from medsec.integrity import AuditLog, Gate
from medsec.integrity.errors import CertificateValidityError, KeyCertMismatchError, KeyFileError
from medsec.integrity.keys import keygen, load_certificate
from medsec.integrity.node import Archive, ArchiveUnavailable, Forwarder
from medsec.integrity.scp import GatedStorageSCP
from medsec.integrity.tls import BCP195_CIPHERS, TLSConfig
from tests.integrity.node_burst_module import burst


def dcmtk_storescu() -> str | None:
    """DCMTK's storescu on PATH, passing over pynetdicom's console script of the same name (which an activated
    virtual environment puts first and which speaks no TLS options)."""
    import os

    for d in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("storescu", path=d) if d else None
        if found and b"pynetdicom" not in Path(found).read_bytes()[:4096]:
            return found
    return None


STORESCU = dcmtk_storescu()
needs_orthanc = pytest.mark.skipif(burst.ORTHANC is None, reason="Orthanc is not installed")
needs_dcmtk = pytest.mark.skipif(STORESCU is None, reason="DCMTK (storescu) is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return burst.Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> dict[str, Any]:
    """One valid, one tampered and one untrusted signed instance, by kind."""
    made = burst.make_instances(tmp_path_factory.mktemp("inst"), 3, pki, tampered=1 / 3, untrusted=1 / 3, size=16)
    return {i.kind: i for i in made}


def node(tmp_path: Path, pki: Any, *, tls: bool = True, forwarder: Forwarder | None = None) -> GatedStorageSCP:
    ctx = TLSConfig(pki.node[0], pki.node[1], pki.trust).server_context() if tls else None
    return GatedStorageSCP(Gate(pki.signer_trust, tmp_path / "audit.jsonl"), tmp_path / "store",
                           tmp_path / "quarantine", forwarder=forwarder, ssl_context=ctx)


def send(path: Path, port: int, ctx: ssl.SSLContext | None) -> int | None:
    """C-STORE one file; the status, or None when no association was made."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEC",
                         **({"tls_args": (ctx, "127.0.0.1")} if ctx is not None else {}))
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_keygen_makes_tls_certificates(pki: Any) -> None:
    node_cert, client_cert = load_certificate(pki.node[0]), load_certificate(pki.modality[0])
    eku = node_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert list(client_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = node_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.content_commitment
    san = node_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    signer = load_certificate(pki.signer[0])  # a signing certificate stays a signing certificate
    assert signer.extensions.get_extension_for_class(x509.KeyUsage).value.content_commitment


def test_tls_config_refuses_bad_identity(tmp_path: Path, pki: Any) -> None:
    with pytest.raises(KeyCertMismatchError, match="does not match"):
        TLSConfig(pki.node[0], pki.orthanc[1], pki.trust).server_context()
    old = keygen(tmp_path, name="old", purpose="tls", days=1,
                 not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10))
    with pytest.raises(CertificateValidityError, match="expired"):
        TLSConfig(old.cert, old.key, pki.trust).server_context()
    with pytest.raises(KeyFileError, match="not for a TLS server"):
        TLSConfig(pki.modality[0], pki.modality[1], pki.trust).server_context()
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError, match="holds no certificate"):
        TLSConfig(pki.node[0], pki.node[1], tmp_path / "empty").server_context()
    ctx = TLSConfig(pki.node[0], pki.node[1], pki.trust).server_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_REQUIRED
    assert {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"} <= set(BCP195_CIPHERS.split(":"))


def test_serve_command_reports_bad_tls_input(tmp_path: Path, pki: Any) -> None:
    from medsec.cli.integrity import serve

    app = typer.Typer()
    app.command()(serve)
    base = ["--trust", str(pki.signer_trust), "--store", str(tmp_path / "s"), "--audit-log", str(tmp_path / "a")]
    r = CliRunner().invoke(app, [*base, "--tls-cert", str(pki.node[0]), "--tls-key", str(pki.rogue[1]),
                                 "--tls-trust", str(pki.trust)])
    assert r.exit_code == KeyCertMismatchError.exit_code and "does not match" in r.output
    r = CliRunner().invoke(app, [*base, "--tls-cert", str(pki.node[0])])
    assert r.exit_code == 2 and "--tls-key" in r.output
    r = CliRunner().invoke(app, [*base, "--forward-to", "nonsense"])
    assert r.exit_code != 0 and "AET@host:port" in str(r.exception or r.output)


def test_tls_mutual_auth_and_refusals(tmp_path: Path, pki: Any, instances: dict[str, Any]) -> None:
    scp, port = node(tmp_path, pki), burst.free_port()
    scp.start("127.0.0.1", port)
    try:
        assert send(instances["valid"].path, port, pki.client_context()) == 0x0000
        assert send(instances["valid"].path, port, None) is None  # plaintext association: refused
        assert send(instances["valid"].path, port, pki.client_context("rogue")) is None  # untrusted client
        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS without a client certificate
        anonymous.load_verify_locations(cafile=str(pki.ca))
        assert send(instances["valid"].path, port, anonymous) is None
        expired = keygen(tmp_path / "exp", name="exp", purpose="tls-client", days=1, issuer_key_path=pki.ca_key,
                         issuer_cert_path=pki.ca, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10))
        late = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # a modality whose certificate expired
        late.load_verify_locations(cafile=str(pki.ca))
        late.load_cert_chain(str(expired.cert), str(expired.key))
        assert send(instances["valid"].path, port, late) is None
        tls12 = pki.client_context()  # TLS 1.2 is accepted (1.3 is what both sides attempt first)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert send(instances["valid"].path, port, tls12) == 0x0000
        with warnings.catch_warnings():  # a client that speaks TLS 1.1 at most: refused by the node
            warnings.simplefilter("ignore", DeprecationWarning)
            old = pki.client_context()
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        assert send(instances["valid"].path, port, old) is None
    finally:
        scp.stop()
    log = AuditLog(tmp_path / "audit.jsonl").read()
    received = [r for r in log if r["event"] == "received"]
    assert [(r["tls"], r["action"], r["peer_cert"]) for r in received] == [
        ("TLSv1.3", "stored", "commonName=modality"), ("TLSv1.2", "duplicate", "commonName=modality")]
    refusals = [r["reason"] for r in log if r["event"] == "tls-refused"]
    assert refusals[0].startswith("not a TLS handshake")
    assert refusals[1].startswith("the client certificate is not trusted")
    assert refusals[2] == "the client presented no certificate" and "expired" in refusals[3]
    # (an OpenSSL built without TLS 1.1 cannot even offer it: then the client fails before the node sees it)
    assert refusals[4:] == (["the client offers only TLS versions below 1.2"] if ssl.HAS_TLSv1_1 else [])
    stored = pydicom.dcmread(tmp_path / "store" / f"{instances['valid'].uid}.dcm")
    assert stored == pydicom.dcmread(instances["valid"].path)  # the data set exactly as signed


@needs_dcmtk
def test_storescu_tls_interop(tmp_path: Path, pki: Any, instances: dict[str, Any]) -> None:
    assert STORESCU is not None
    scp, port = node(tmp_path, pki), burst.free_port()
    scp.start("127.0.0.1", port)

    def storescu(*tls: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STORESCU, *tls, "-aec", "MEDSEC", "127.0.0.1", str(port),
                               str(instances["valid"].path), str(instances["tampered"].path)],
                              capture_output=True, text=True, timeout=60)

    try:
        ok = storescu("+tls", str(pki.modality[1]), str(pki.modality[0]), "+cf", str(pki.ca))
        plain = storescu()
        rogue = storescu("+tls", str(pki.rogue[1]), str(pki.rogue[0]), "+cf", str(pki.ca))
    finally:
        scp.stop()
    assert "Association Request Failed" not in ok.stderr, ok.stderr
    assert "Association Request Failed" in plain.stderr and "Association Request Failed" in rogue.stderr
    assert [(r["verdict"], r["reason"], r["peer_cert"]) for r in scp.results] == [
        ("accepted", "ok", "commonName=modality"), ("refused", "tampered", "commonName=modality")]
    assert all(r["tls"] in ("TLSv1.2", "TLSv1.3") for r in scp.results)
    assert len(list((tmp_path / "quarantine").glob("*.dcm"))) == 1


@needs_orthanc
@needs_dcmtk
def test_node_forwards_valid_once_and_quarantines_the_rest(tmp_path: Path, pki: Any,
                                                          instances: dict[str, Any]) -> None:
    """storescu +tls -> medsec node -> Orthanc (DicomTlsEnabled): what is valid arrives once, sent twice or
    not; what is tampered or untrusted is quarantined and never reaches Orthanc; every step is audited."""
    assert STORESCU is not None
    archive = burst.Orthanc(tmp_path / "orthanc", pki)
    archive.start()
    fwd = Forwarder(tmp_path / "store", Archive("ORTHANC", "127.0.0.1", archive.port),
                    tls=TLSConfig(pki.node[0], pki.node[1], pki.trust))
    scp, port = node(tmp_path, pki, forwarder=fwd), burst.free_port()
    fwd.audit = scp.audit
    try:
        fwd.echo()
        fwd.start()
        scp.start("127.0.0.1", port)
        files = [instances[k].path for k in ("valid", "tampered", "untrusted", "valid")]
        run = subprocess.run([STORESCU, "-nh", "+tls", str(pki.modality[1]), str(pki.modality[0]), "+cf", str(pki.ca),
                              "-aec", "MEDSEC", "127.0.0.1", str(port), *map(str, files)],
                             capture_output=True, text=True, timeout=60)
        assert "Association Request Failed" not in run.stderr, run.stderr
        assert fwd.wait_idle(60)
        in_archive = archive.sop_instance_uids()
        target = Archive("ORTHANC", "127.0.0.1", archive.port)  # misconfigured nodes get told why
        with pytest.raises(ArchiveUnavailable, match="does it expect TLS"):
            Forwarder(tmp_path / "s2", target).echo()
        with pytest.raises(ArchiveUnavailable, match="certificate this node does not accept"):
            Forwarder(tmp_path / "s3", target, tls=TLSConfig(pki.node[0], pki.node[1], pki.rogue[0])).echo()
        with pytest.raises(ArchiveUnavailable, match="not the association"):  # Orthanc does not trust rogue
            Forwarder(tmp_path / "s4", target, tls=TLSConfig(pki.rogue_node[0], pki.rogue_node[1], pki.trust)).echo()
    finally:
        scp.stop()
        fwd.stop()
        archive.stop()
    assert in_archive == {instances["valid"].uid: 1}
    log = AuditLog(tmp_path / "audit.jsonl").read()
    assert [(r["action"], r["reason"]) for r in log if r["event"] == "received"] == [
        ("queued", "ok"), ("quarantined", "tampered"), ("quarantined", "untrusted"), ("duplicate", "ok")]
    assert [r["sop_instance_uid"] for r in log if r["event"] == "forwarded"] == [instances["valid"].uid]
    assert (tmp_path / "store" / f"{instances['valid'].uid}.dcm").exists()
    assert not list((tmp_path / "store" / "outbox").glob("*.dcm"))


@needs_orthanc
def test_forwarding_survives_archive_outage_and_node_restart(tmp_path: Path, pki: Any,
                                                             instances: dict[str, Any]) -> None:
    archive = burst.Orthanc(tmp_path / "orthanc", None)  # not started yet: the archive is down
    target = Archive("ORTHANC", "127.0.0.1", archive.port)
    audit = AuditLog(tmp_path / "audit.jsonl")
    fwd = Forwarder(tmp_path / "store", target, audit=audit.append, retry_max_s=0.5)
    with pytest.raises(ArchiveUnavailable, match="unreachable"):
        fwd.echo()
    scp, port = node(tmp_path, pki, tls=False, forwarder=fwd), burst.free_port()
    scp.start("127.0.0.1", port)
    fwd.start()
    try:
        assert send(instances["valid"].path, port, None) == 0x0000  # acknowledged: safely in the outbox
        time.sleep(1.0)
    finally:
        scp.stop()
        fwd.stop()  # the node goes down with the instance still pending
    assert [p.stem for p in (tmp_path / "store" / "outbox").glob("*.dcm")] == [instances["valid"].uid]
    assert any(r["event"] == "archive-unreachable" for r in audit.read())
    archive.start()
    try:
        restarted = Forwarder(tmp_path / "store", target, audit=audit.append)  # a new node process
        restarted.start()
        assert restarted.wait_idle(60)
        restarted.stop()
        assert archive.sop_instance_uids() == {instances["valid"].uid: 1}
    finally:
        archive.stop()
    assert [r["event"] for r in audit.read() if r["event"] == "forwarded"] == ["forwarded"]


@needs_orthanc
def test_reduced_burst_with_node_restart(tmp_path: Path, pki: Any) -> None:
    """100 signed instances (10 tampered, 2 untrusted), 3 concurrent TLS senders, the node killed with
    SIGKILL and restarted once: every valid one in Orthanc exactly once, the rest quarantined."""
    made = burst.make_instances(tmp_path / "inst", 100, pki, size=16)
    r = burst.run_burst(tmp_path / "run", made, pki, tls=True, senders=3, kill_node_at=0.4, restart_archive_at=None)
    assert any("node killed" in e for e in r["events"]) and any("node restarted" in e for e in r["events"])
    assert r["checks"] == {k: True for k in r["checks"]}, r
    assert (r["valid"], r["tampered"], r["untrusted"]) == (88, 10, 2)


def test_transfer_cut_mid_instance_stores_nothing(tmp_path: Path, pki: Any, instances: dict[str, Any]) -> None:
    """A sender whose connection dies in the middle of an instance gets no acknowledgement and the node keeps
    nothing of it (no C-STORE happened); a file cut in half and sent whole is quarantined."""
    import socket

    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, evt

    scp, port = node(tmp_path, pki, tls=False), burst.free_port()
    scp.start("127.0.0.1", port)
    sent: list[int] = []

    def cut_after_two_pdus(event: Any) -> None:
        sent.append(len(event.data))
        if len(sent) == 4:  # the A-ASSOCIATE-RQ, the command, then two P-DATA fragments of the data set
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    big = burst.make_instances(tmp_path / "big", 1, pki, tampered=0, untrusted=0, size=256)[0]  # 64 KiB: 4+ PDUs
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEC",
                             evt_handlers=[(evt.EVT_DATA_SENT, cut_after_two_pdus)])
        assert assoc.is_established
        rsp = assoc.send_c_store(big.path)
        assert not rsp or "Status" not in rsp  # never acknowledged: the modality keeps it and resends
        assoc.abort()
        time.sleep(0.5)
        assert scp.results == [] and not (tmp_path / "store").exists()
        half = tmp_path / "half.dcm"
        data = instances["valid"].path.read_bytes()
        half.write_bytes(data[: len(data) // 2])
        # cut in half and sent whole: what arrives has lost its end (the signature sits after Pixel Data)
        assert send(half, port, None) in (0xC000 + 10, 0xC000 + 11)
        assert send(instances["valid"].path, port, None) == 0x0000  # and the node goes on
    finally:
        scp.stop()
    assert [r["action"] for r in scp.results] == ["quarantined", "stored"]
    assert scp.results[0]["reason"] in ("unreadable", "unsigned")


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str | None, str]:
    """TLS version and cipher of a handshake between the two contexts over a socket pair."""
    import socket
    import threading

    a, b = socket.socketpair()
    result: list[Any] = []

    def serve() -> None:
        with server.wrap_socket(a, server_side=True) as s:
            result.append(s.version())

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(b, server_hostname="localhost") as c:
        cipher = c.cipher()[0]  # type: ignore[index]
    t.join(10)
    return result[0], cipher


def test_ecdsa_and_encrypted_tls_identities(tmp_path: Path, pki: Any) -> None:
    from medsec.integrity.errors import KeyPasswordError

    ec = keygen(tmp_path, name="ecnode", kind="ecdsa", purpose="tls", password="s3cret",
                issuer_key_path=pki.ca_key, issuer_cert_path=pki.ca)
    with pytest.raises(KeyPasswordError):
        TLSConfig(ec.cert, ec.key, pki.trust).server_context()
    server = TLSConfig(ec.cert, ec.key, pki.trust, password="s3cret").server_context()
    assert _handshake(server, pki.client_context())[0] == "TLSv1.3"
    tls12 = pki.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher = _handshake(server, tls12)
    assert version == "TLSv1.2" and cipher in BCP195_CIPHERS.split(":") and cipher.startswith("ECDHE-ECDSA")


@needs_orthanc
def test_orthanc_sends_to_the_node_over_tls(tmp_path: Path, pki: Any, instances: dict[str, Any]) -> None:
    """Orthanc as the TLS client (its per-modality UseDicomTls): the node accepts its certificate (issued by
    the trusted CA) and gates what it sends."""
    archive = burst.Orthanc(tmp_path / "orthanc", pki)
    scp, port = node(tmp_path, pki), burst.free_port()
    cfg = json.loads(archive.config.read_text())
    cfg["DicomModalities"] = {"medsec": {"AET": "MEDSEC", "Host": "127.0.0.1", "Port": port, "UseDicomTls": True}}
    archive.config.write_text(json.dumps(cfg))
    archive.start()
    scp.start("127.0.0.1", port)
    try:
        base = f"http://127.0.0.1:{archive.http}"
        for kind in ("valid", "tampered"):
            req = urllib.request.Request(base + "/instances", data=instances[kind].path.read_bytes(), method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                orthanc_id = json.loads(r.read())["ID"]
            body = json.dumps({"Resources": [orthanc_id], "Synchronous": True}).encode()
            try:
                urllib.request.urlopen(urllib.request.Request(base + "/modalities/medsec/store", data=body,
                                                              method="POST"), timeout=60).close()
            except urllib.error.HTTPError:
                assert kind == "tampered"  # the node refused it: Orthanc reports the failed C-STORE
    finally:
        scp.stop()
        archive.stop()
    assert [(r["reason"], r["action"], r["peer_cert"], r["source"].split("#")[0]) for r in scp.results] == [
        ("ok", "stored", "commonName=orthanc", "ORTHANC"), ("tampered", "quarantined", "commonName=orthanc", "ORTHANC")]


def test_silent_client_blocks_nobody(tmp_path: Path, pki: Any, instances: dict[str, Any],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that connects and never starts TLS does not hold up others, and is cut off after the
    handshake time limit."""
    import socket

    from medsec.integrity import scp as scp_module

    monkeypatch.setattr(scp_module, "HANDSHAKE_TIMEOUT_S", 1.0)
    scp, port = node(tmp_path, pki), burst.free_port()
    scp.start("127.0.0.1", port)
    try:
        with socket.create_connection(("127.0.0.1", port)) as silent:
            assert send(instances["valid"].path, port, pki.client_context()) == 0x0000
            silent.settimeout(5)
            assert silent.recv(1) == b""  # the node closed it
    finally:
        scp.stop()
    log = AuditLog(tmp_path / "audit.jsonl").read()
    assert [r["event"] for r in log] == ["received", "tls-refused"]  # served while the silent one waited
    assert log[1]["reason"] == "no TLS handshake within 1 s"
