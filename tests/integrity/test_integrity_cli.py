"""`medsec keygen / sign / verify`: exit codes, one per reason, and no tracebacks for bad input."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.cli import app
from medsec.integrity import EXIT_CODES
from medsec.integrity.keys import keygen
from medsec.integrity.signature import sign_file

runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str]:
    r = runner.invoke(app, [str(a) for a in args])
    out = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert "Traceback" not in out, out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, out


def test_round_trip_through_the_cli(nested_file: Path, tmp_path: Path) -> None:
    code, out = run("keygen", tmp_path / "keys", "--cn", "Dr Sign", "--password", "pw")
    assert code == 0 and "trust store" in out
    key = tmp_path / "keys" / "signer.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    code, out = run("keygen", tmp_path / "keys")  # never silently replaces a key
    assert code == 24 and "already exists" in out and key.read_bytes() == before
    signed = tmp_path / "signed.dcm"
    code, out = run("sign", nested_file, signed, "--key", key, "--cert", tmp_path / "keys" / "signer.pem",
                    "--password", "pw", "--profile", "creator", "--mac", "sha384")
    assert code == 0, out
    code, out = run("verify", signed, "--trust", tmp_path / "keys" / "trust")
    assert code == 0 and "OK" in out and "CN=Dr Sign" in out
    code, out = run("verify", signed, "--trust", tmp_path / "keys" / "trust", "--json")
    doc = json.loads(out)
    assert doc[0]["verdict"] == "accepted" and doc[0]["signatures"][0]["mac"] == "SHA384"
    assert "(7FE0,0010)" in doc[0]["signatures"][0]["signed_tags"]


def test_ca_issued_signer_through_the_cli(nested_file: Path, tmp_path: Path) -> None:
    k = tmp_path / "pki"
    assert run("keygen", k, "--ca", "--name", "ca", "--cn", "Hospital CA")[0] == 0
    code, out = run("keygen", k, "--name", "tech", "--algorithm", "ecdsa",
                    "--issuer-key", k / "ca.key", "--issuer-cert", k / "ca.pem")
    assert code == 0, out
    signed = tmp_path / "s.dcm"
    assert run("sign", nested_file, signed, "--key", k / "tech.key", "--cert", k / "tech.pem",
               "--profile", "none")[0] == 0
    assert sorted(p.name for p in (k / "trust").iterdir()) == ["ca.pem"]
    assert run("verify", signed, "--trust", k / "trust")[0] == 0


def test_every_bad_input_has_its_own_code(nested_file: Path, tmp_path: Path, rsa_signer, other_signer) -> None:
    trust = rsa_signer.trust
    signed = tmp_path / "signed.dcm"
    sign_file(nested_file, signed, rsa_signer.key, rsa_signer.cert)
    files: dict[str, Path] = {}
    files["ok"] = signed
    (tmp_path / "text.dcm").write_text("this is not DICOM\n" * 20)
    files["unreadable"] = tmp_path / "text.dcm"
    data = signed.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) // 2])
    files["truncated"] = tmp_path / "trunc.dcm"
    files["unsigned"] = nested_file
    tampered = bytearray(data)
    idx = data.index(b"Anonymous^Patient")
    tampered[idx] = ord("a")
    (tmp_path / "tampered.dcm").write_bytes(bytes(tampered))
    files["tampered"] = tmp_path / "tampered.dcm"
    sign_file(nested_file, tmp_path / "nopix.dcm", rsa_signer.key, rsa_signer.cert,
              tags=["PatientName", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
    files["pixels-not-covered"] = tmp_path / "nopix.dcm"
    sign_file(nested_file, tmp_path / "stranger.dcm", other_signer.key, other_signer.cert)
    files["untrusted"] = tmp_path / "stranger.dcm"
    now = dt.datetime.now(dt.UTC)
    old = keygen(tmp_path / "old", name="old", days=1, not_before=now - dt.timedelta(days=3))
    sign_file(nested_file, tmp_path / "expired.dcm", old.key, old.cert, now=now - dt.timedelta(days=2, hours=12))
    files["expired"] = tmp_path / "expired.dcm"
    new = keygen(tmp_path / "new", name="new", days=5, not_before=now + dt.timedelta(days=1))
    sign_file(nested_file, tmp_path / "future.dcm", new.key, new.cert, now=now + dt.timedelta(days=2))
    files["not-yet-valid"] = tmp_path / "future.dcm"
    trust_all = tmp_path / "trust-all"
    trust_all.mkdir()
    for src in (rsa_signer.cert, old.cert, new.cert):
        (trust_all / src.name).write_bytes(src.read_bytes())
    expected = {"ok": 0, "unreadable": 10, "truncated": 10, "unsigned": 11, "tampered": 12, "untrusted": 13,
                "expired": 14, "not-yet-valid": 14, "pixels-not-covered": 15}
    for name, path in files.items():
        code, out = run("verify", path, "--trust", trust_all)
        assert code == expected[name], (name, out)
    # codes are distinct per reason and documented in one table
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    # several files: the first failing file's code
    assert run("verify", signed, files["untrusted"], files["tampered"], "--trust", trust)[0] == 13
    assert run("verify", tmp_path / "missing.dcm", "--trust", trust)[0] == 10
    # a folder stands for the files below it
    folder = tmp_path / "batch"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.dcm").write_bytes(signed.read_bytes())
    (folder / "sub" / "b.dcm").write_bytes(signed.read_bytes())
    code, out = run("verify", folder, "--trust", trust)
    assert code == 0 and out.count("OK ") == 2
    (folder / "sub" / "c.dcm").write_bytes(files["tampered"].read_bytes())
    assert run("verify", folder, "--trust", trust)[0] == 12
    (tmp_path / "empty").mkdir()
    assert run("verify", tmp_path / "empty", "--trust", trust)[0] == 10


def test_sign_time_errors(nested_file: Path, tmp_path: Path, rsa_signer, other_signer) -> None:
    out = tmp_path / "o.dcm"
    code, msg = run("sign", nested_file, out, "--key", rsa_signer.key, "--cert", other_signer.cert)
    assert code == 20 and "does not match" in msg
    enc = keygen(tmp_path / "enc", name="enc", password="right")
    code, msg = run("sign", nested_file, out, "--key", enc.key, "--cert", enc.cert, "--password", "wrong")
    assert code == 21 and "wrong password" in msg
    code, msg = run("sign", nested_file, out, "--key", enc.key, "--cert", enc.cert)
    assert code == 21 and "encrypted" in msg
    old = keygen(tmp_path / "old", name="old", days=1,
                 not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    code, msg = run("sign", nested_file, out, "--key", old.key, "--cert", old.cert)
    assert code == 22 and "expired" in msg
    code, msg = run("sign", nested_file, out, "--key", rsa_signer.key, "--cert", rsa_signer.cert, "--mac", "md4")
    assert code == 23 and "md4" in msg
    code, msg = run("sign", tmp_path / "nope.dcm", out, "--key", rsa_signer.key, "--cert", rsa_signer.cert)
    assert code == 10 and "nope.dcm" in msg
    code, msg = run("sign", nested_file, out, "--key", tmp_path / "nokey.pem", "--cert", rsa_signer.cert)
    assert code == 24 and "nokey.pem" in msg
    assert not out.exists()
    code, msg = run("verify", nested_file, "--trust", tmp_path / "no-such-dir")
    assert code == 24 and "no-such-dir" in msg


def test_module_entry_point_keeps_exit_codes(nested_file: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    r = subprocess.run([sys.executable, "-m", "medsec", "verify", str(nested_file), "--trust", str(nested_file)],
                       capture_output=True, text=True, env=env, timeout=120)
    # a DICOM file is not a certificate: a clear error, its own code, no traceback
    assert r.returncode == 24 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args", [["keygen", "x", "--algorithm", "dsa"], ["sign", "a", "b"]])
def test_usage_errors_are_not_tracebacks(args: list[str]) -> None:
    code, _ = run(*args)
    assert code == 2


def test_sign_to_unwritable_place(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    (tmp_path / "out").write_text("a file, not a folder")
    code, msg = run("sign", nested_file, tmp_path / "out" / "x.dcm", "--key", rsa_signer.key, "--cert", rsa_signer.cert)
    assert code == 2 and "cannot write" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nested.dcm", "out"]


def test_sign_into_an_existing_folder_keeps_the_name(nested_file: Path, tmp_path: Path, rsa_signer) -> None:
    (tmp_path / "out").mkdir()
    code, msg = run("sign", nested_file, tmp_path / "out", "--key", rsa_signer.key, "--cert", rsa_signer.cert)
    assert code == 0, msg
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["nested.dcm"]


def test_sign_and_verify_folders_in_one_call(sample_dir: Path, tmp_path: Path, rsa_signer) -> None:
    src = tmp_path / "in"
    (src / "series1").mkdir(parents=True)
    shutil.copy(sample_dir / "nested.dcm", src / "a.dcm")
    shutil.copy(sample_dir / "rle.dcm", src / "series1" / "b.dcm")
    (src / "series1" / "notes.txt").write_text("not DICOM")
    out = tmp_path / "signed"
    code, msg = run("sign", src, sample_dir / "rgb.dcm", out, "--key", rsa_signer.key, "--cert", rsa_signer.cert)
    assert code == 10 and "FAILED" in msg and "notes.txt" in msg  # the failing file's own code
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.dcm", "rgb.dcm", "series1/b.dcm"]  # mirrored; nothing for the bad file, no temp files
    r = runner.invoke(app, ["verify", str(out), "--trust", str(rsa_signer.trust), "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(Path(v["file"]).name for v in json.loads(r.output)) == ["a.dcm", "b.dcm", "rgb.dcm"]
    # two inputs that would land on the same output: refused before anything is written
    (tmp_path / "x").mkdir()
    shutil.copy(sample_dir / "rgb.dcm", tmp_path / "x" / "a.dcm")
    code, msg = run("sign", tmp_path / "x" / "a.dcm", src / "a.dcm", tmp_path / "o2", "--key", rsa_signer.key,
                    "--cert", rsa_signer.cert)
    assert code == 2 and "both be written" in msg and not (tmp_path / "o2").exists()
    # several inputs need a folder as OUT
    code, msg = run("sign", sample_dir / "nested.dcm", sample_dir / "rgb.dcm", src / "a.dcm", "--key",
                    rsa_signer.key, "--cert", rsa_signer.cert)
    assert code == 2 and "must be a folder" in msg
