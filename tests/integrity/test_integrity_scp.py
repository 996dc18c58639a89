"""The gated Storage SCP on loopback, fed by a pynetdicom SCU."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from medsec.data.dicom_export import read_dicom_pixels
from medsec.integrity import AuditLog, Gate
from medsec.integrity.demo import replace_pixels_in_place
from medsec.integrity.scp import GatedStorageSCP
from medsec.integrity.signature import sign_file
from tests.integrity.node_burst_module import burst


def send(paths: list[Path], port: int) -> list[int]:
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage, [RLELossless])
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEC")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def test_scp_gates_every_instance(nested_file: Path, rle_file: Path, tmp_path: Path, rsa_signer) -> None:
    signed, signed_rle = tmp_path / "s.dcm", tmp_path / "s-rle.dcm"
    sign_file(nested_file, signed, rsa_signer.key, rsa_signer.cert)
    sign_file(rle_file, signed_rle, rsa_signer.key, rsa_signer.cert)
    tampered = replace_pixels_in_place(signed, 255 - read_dicom_pixels(signed), tmp_path / "t.dcm")
    seen: list[str] = []

    def on_accept(data: bytes, path: Path, verdict) -> dict:
        seen.append(verdict.sop_instance_uid)
        return {"bytes": len(data)}

    scp = GatedStorageSCP(Gate(rsa_signer.trust, tmp_path / "audit.jsonl"), tmp_path / "store",
                          tmp_path / "quarantine", on_accept=on_accept)
    port = burst.free_port()
    scp.start("127.0.0.1", port)
    try:
        statuses = send([signed, nested_file, tampered, signed_rle], port)
    finally:
        scp.stop()
    assert statuses == [0x0000, 0xC000 + 11, 0xC000 + 12, 0x0000]
    assert [r["verdict"] for r in scp.results] == ["accepted", "refused", "refused", "accepted"]
    stored = sorted((tmp_path / "store").glob("*.dcm"))
    assert len(stored) == 2 and len(seen) == 2
    quarantined = sorted((tmp_path / "quarantine").glob("*.verdict.json"))
    assert len(list((tmp_path / "quarantine").glob("*.dcm"))) == 2
    assert sorted(json.loads(q.read_text())["reason"] for q in quarantined) == ["tampered", "unsigned"]
    assert [r["reason"] for r in AuditLog(tmp_path / "audit.jsonl").read()] == ["ok", "unsigned", "tampered", "ok"]
    # what was stored is byte-for-byte the signed instance's data set
    ds = pydicom.dcmread(tmp_path / "store" / f"{pydicom.dcmread(signed).SOPInstanceUID}.dcm")
    assert ds.PixelData == pydicom.dcmread(signed).PixelData


def test_scp_can_acknowledge_quarantined(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    scp = GatedStorageSCP(Gate(rsa_signer.trust), tmp_path / "store", tmp_path / "q", refuse=False)
    port = burst.free_port()
    scp.start("127.0.0.1", port)
    try:
        assert send([nested_file], port) == [0x0000]
    finally:
        scp.stop()
    assert scp.results[0]["verdict"] == "refused" and not (tmp_path / "store").exists()
