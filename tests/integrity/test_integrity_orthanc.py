"""End to end with a real PACS: Orthanc stores signed images, an insider overwrites one, Orthanc sends them
to the gated Storage SCP. Runs our own Orthanc on loopback ports with its own config and storage, stopped by
its PID; skipped when Orthanc is not installed (.ci/run installs it)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from medsec.integrity import Gate
from medsec.integrity.demo import replace_pixels_in_place
from medsec.integrity.scp import GatedStorageSCP
from medsec.integrity.signature import sign_file
from tests.integrity.node_burst_module import burst

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
pytestmark = pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed")


def post(url: str, body: bytes) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_orthanc_sends_to_gated_scp(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    assert ORTHANC is not None
    signed = tmp_path / "signed.dcm"
    sign_file(nested_file, signed, rsa_signer.key, rsa_signer.cert)
    tampered = replace_pixels_in_place(signed, np.zeros((1, 16, 16), np.uint8), tmp_path / "tampered.dcm")
    http, dicom, scp_port = burst.free_port(), burst.free_port(), burst.free_port()
    cfg = {
        "Name": "medsec-test", "StorageDirectory": str(tmp_path / "db"), "IndexDirectory": str(tmp_path / "db"),
        "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHTEST", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [], "OverwriteInstances": True,
        "DicomModalities": {"medsec": ["MEDSEC", "127.0.0.1", scp_port]},
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(cfg))
    scp = GatedStorageSCP(Gate(rsa_signer.trust), tmp_path / "store", tmp_path / "quarantine")
    with open(tmp_path / "orthanc.log", "w") as logf:
        proc = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], stdout=logf, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{http}"
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/system", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        scp.start("127.0.0.1", scp_port)

        def upload_and_send(path: Path) -> int:
            code, info = post(base + "/instances", path.read_bytes())
            assert code == 200, info
            code, _ = post(base + "/modalities/medsec/store",
                           json.dumps({"Resources": [info["ID"]], "Synchronous": True}).encode())
            return code

        assert upload_and_send(signed) == 200
        assert upload_and_send(tampered) != 200  # an insider overwrote the stored instance: refused
        assert upload_and_send(nested_file) != 200  # an unsigned instance: refused
    finally:
        scp.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert [(r["verdict"], r["reason"]) for r in scp.results] == [
        ("accepted", "ok"), ("refused", "tampered"), ("refused", "unsigned")]
    assert [r["status"] for r in scp.results] == [0x0000, 0xC00C, 0xC00B]
