"""The gate as inference uses it: audit log, require_signed, gated inference, and the tamper demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medsec.data.dicom_export import read_dicom_pixels
from medsec.errors import MedsecError
from medsec.integrity import AuditLog, Gate, RefusedError, check, require_signed
from medsec.integrity.demo import replace_pixels_in_place, tamper_demo, tamper_demo_markdown
from medsec.integrity.infer import infer_file, to_model_input
from medsec.integrity.samples import write_image_dicom
from medsec.integrity.signature import sign_file


def test_require_signed_and_audit_log(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    log = tmp_path / "audit.jsonl"
    signed = tmp_path / "s.dcm"
    sign_file(nested_file, signed, rsa_signer.key, rsa_signer.cert)
    v = require_signed(signed, rsa_signer.trust, log)
    assert v.ok and v.signer == "CN=RSA Signer"
    with pytest.raises(RefusedError) as exc:
        require_signed(nested_file, rsa_signer.trust, log)
    assert exc.value.verdict.reason == "unsigned" and exc.value.exit_code == 11
    recs = AuditLog(log).read()
    assert [r["verdict"] for r in recs] == ["accepted", "refused"]
    assert recs[0]["sop_instance_uid"] == v.sop_instance_uid and recs[0]["signer"] == "CN=RSA Signer"
    assert recs[1]["reason"] == "unsigned" and recs[1]["file"] == str(nested_file)
    assert {"time", "file", "sop_instance_uid", "verdict", "reason", "signer"} <= set(recs[1])
    for line in log.read_text().splitlines():
        json.loads(line)


class TinyNet(nn.Module):
    """Predicts class 1 when the image is bright, class 0 when dark."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1) * 20


def test_gated_inference(tmp_path: Path, rsa_signer) -> None:
    meta = {"task": "classification", "class_names": ["dark", "bright"], "image_size": 8, "channels": 1,
            "arch": "tiny", "dataset": "test"}
    bright = write_image_dicom(tmp_path / "b.dcm", np.full((1, 20, 20), 230, np.uint8))
    sign_file(bright, bright, rsa_signer.key, rsa_signer.cert)
    gate = Gate(rsa_signer.trust, tmp_path / "audit.jsonl")
    r = infer_file(bright, TinyNet(), meta, gate)
    assert r["prediction"] == "bright" and r["signature"]["verdict"] == "accepted"
    assert r["probabilities"]["bright"] > 0.9
    # the attacker darkens the pixels: the gate refuses, the model never runs
    dark = replace_pixels_in_place(bright, np.full((1, 20, 20), 10, np.uint8), tmp_path / "d.dcm")
    assert read_dicom_pixels(dark).max() == 10

    class Exploding(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the model must not see refused pixels")

    with pytest.raises(RefusedError, match="tampered"):
        infer_file(dark, Exploding(), meta, gate)
    assert [r["verdict"] for r in AuditLog(tmp_path / "audit.jsonl").read()] == ["accepted", "refused"]
    # without a gate the tampered file is predicted as the attacker wants
    assert infer_file(dark, TinyNet(), meta, None)["prediction"] == "dark"


def test_model_input_scaling() -> None:
    x = to_model_input(np.array([[[0, 255], [255, 0]]], np.uint8), 8, 4, 3)
    assert x.shape == (1, 3, 4, 4) and float(x.min()) >= 0 and float(x.max()) <= 1
    y = to_model_input(np.array([[[0, 4095]]], np.uint16), 12, (1, 2), 1)
    assert torch.allclose(y, torch.tensor([[[[0.0, 1.0]]]]))


def test_tamper_demo(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (5, 1, 12, 12), dtype=np.uint8)
    adv = np.clip(clean.astype(int) + rng.integers(-2, 3, clean.shape), 0, 255).astype(np.uint8)
    adv[2] = clean[2]  # an image the attack left unchanged
    res = tamper_demo(clean, adv, tmp_path / "demo")
    assert res["all_untouched_pass"] and res["untouched_passed"] == 5
    assert res["replaced_total"] == 4 and res["replaced_refused"] == 4 and res["all_replaced_refused"]
    assert res["unchanged_by_attack"] == 1
    replaced = [v for v in res["verdicts"] if v["kind"] == "replaced"]
    assert all(v["reason"] == "tampered" and v["exit_code"] == 12 for v in replaced)
    # the replaced files really carry the adversarial pixels, and nothing else changed
    for v in replaced:
        i = int(Path(v["file"]).stem[3:])
        assert np.array_equal(read_dicom_pixels(v["file"]), adv[i])
        orig = Path(v["file"]).parent.parent / "signed" / Path(v["file"]).name
        a, b = orig.read_bytes(), Path(v["file"]).read_bytes()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) <= clean[i].size
    assert len(AuditLog(res["audit_log"]).read()) == 9
    md = tamper_demo_markdown(res)
    assert "| 5 / 5 accepted |" in md and "| 4 / 4 refused |" in md and "tampered 4" in md and "holds" in md
    # RGB and float input work too
    rgb = rng.random((2, 3, 6, 6)).astype(np.float32)
    res2 = tamper_demo(rgb, np.clip(rgb + 0.02, 0, 1), tmp_path / "rgb")
    assert res2["all_untouched_pass"] and res2["all_replaced_refused"] and res2["replaced_total"] == 2
    assert check(res2["verdicts"][0]["file"], res2["trust"]).ok
    with pytest.raises(MedsecError, match="same shape"):
        tamper_demo(clean, adv[:2], tmp_path / "bad")


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    import pydicom

    from medsec.integrity.infer import decode_pixels

    p = write_image_dicom(tmp_path / "m1.dcm", np.array([[[0, 10], [200, 255]]], np.uint8), nested=False)
    ds = pydicom.dcmread(p)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(p)
    arr, bits = decode_pixels(p.read_bytes(), str(p))
    assert bits == 8 and arr.tolist() == [[[255, 245], [55, 0]]]
