"""`medsec infer --require-signature`: a real (tiny, untrained) victim checkpoint behind the gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from medsec.cli import app
from medsec.integrity import AuditLog
from medsec.integrity.demo import replace_pixels_in_place
from medsec.integrity.samples import write_image_dicom
from medsec.integrity.signature import sign_file

runner = CliRunner()


def test_infer_requires_signature(checkpoint: Path, tmp_path: Path, rsa_signer) -> None:
    img = write_image_dicom(tmp_path / "img.dcm", np.random.default_rng(0).integers(0, 256, (1, 40, 40), np.uint8))
    signed = tmp_path / "signed.dcm"
    sign_file(img, signed, rsa_signer.key, rsa_signer.cert)
    log = tmp_path / "audit.jsonl"
    base = ["infer", "--model", str(checkpoint), "--require-signature", "--trust", str(rsa_signer.trust),
            "--audit-log", str(log)]
    r = runner.invoke(app, [*base, str(signed), "--json"])
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)
    assert res["prediction"] in ("normal", "abnormal") and res["signature"]["verdict"] == "accepted"
    assert abs(sum(res["probabilities"].values()) - 1) < 1e-5
    tampered = replace_pixels_in_place(signed, np.zeros((1, 40, 40), np.uint8), tmp_path / "tampered.dcm")
    r = runner.invoke(app, [*base, str(tampered)])
    assert r.exit_code == 12 and "REFUSED" in r.output and "tampered" in r.output
    r = runner.invoke(app, [*base, str(img), str(signed)])
    assert r.exit_code == 11 and "normal" in r.output  # the signed file was still predicted
    recs = AuditLog(log).read()
    assert [x["reason"] for x in recs] == ["ok", "tampered", "unsigned", "ok"]
    assert recs[1]["sop_instance_uid"] and recs[1]["verdict"] == "refused"
    # asking for the gate without a trust store is a usage error, not a silent pass
    r = runner.invoke(app, ["infer", "--model", str(checkpoint), "--require-signature", str(signed)])
    assert r.exit_code == 2
