"""Seeded fuzzing: single-byte changes across signed files.

Every change inside the value of a signed element (or of the signature's own protected elements) must be
refused as 'tampered' (exit 12); changes elsewhere may give any documented verdict, but never a crash, and
a file the reader cannot walk is 'unreadable' (exit 10), never confused with tampering.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsec.integrity import EXIT_CODES, check, check_bytes
from medsec.integrity import rawdicom as rd
from medsec.integrity.macstream import DIGITAL_SIGNATURES_SEQ, MAC_PARAMETERS_SEQ, SIGNATURE, is_signable
from medsec.integrity.signature import sign_file


def _value_ranges(el: rd.Element) -> list[tuple[int, int]]:
    """Byte ranges of the leaf values inside `el` (recursing into signable sequence content)."""
    if el.items is not None:
        return [r for it in el.items for e in it.elements if is_signable(e) for r in _value_ranges(e)]
    if el.fragments is not None:
        return [(f.value_offset, f.value_offset + len(f.data)) for f in el.fragments]
    return [(el.value_offset, el.value_offset + el.length)]


def protected_ranges(path: Path) -> list[tuple[int, int]]:
    """Value bytes the signatures protect: signed elements, the signature trailer and the Signature."""
    df = rd.read(str(path))
    mac_items = df.find(MAC_PARAMETERS_SEQ).items
    sig_items = df.find(DIGITAL_SIGNATURES_SEQ).items
    ranges: list[tuple[int, int]] = []
    for m in mac_items:
        at = m.find(0x04000020).value
        pairs = np.frombuffer(at, dtype="<u2").reshape(-1, 2)
        for g, e in pairs:
            ranges += _value_ranges(df.find((int(g) << 16) | int(e)))
    for s in sig_items:
        for t in (0x04000005, 0x04000100, 0x04000105, 0x04000110, SIGNATURE):
            ranges += _value_ranges(s.find(t))
    return [r for r in ranges if r[1] > r[0]]


@pytest.mark.parametrize("which,seed", [("nested", 1), ("rle", 2)])
def test_single_byte_changes(which: str, seed: int, sample_dir: Path, tmp_path: Path, rsa_signer, ec_signer) -> None:
    signed = tmp_path / "signed.dcm"
    sign_file(sample_dir / f"{which}.dcm", signed, rsa_signer.key, rsa_signer.cert)
    sign_file(signed, signed, ec_signer.key, ec_signer.cert, profile="none", mac="sha512")
    trust = tmp_path / "trust"
    trust.mkdir()
    for s in (rsa_signer, ec_signer):
        (trust / s.cert.name).write_bytes(s.cert.read_bytes())
    assert check(signed, trust).ok
    data = signed.read_bytes()
    protected = protected_ranges(signed)
    inside = np.zeros(len(data), bool)
    for a, b in protected:
        inside[a:b] = True
    rng = np.random.default_rng(seed)
    # half the probes inside protected values, half anywhere in the file
    probes = np.concatenate([rng.choice(np.flatnonzero(inside), 150), rng.integers(0, len(data), 150)])
    seen: dict[str, int] = {}
    for pos in probes:
        buf = bytearray(data)
        buf[pos] = (buf[pos] + int(rng.integers(1, 256))) % 256
        v = check_bytes(bytes(buf), trust, source=f"{which}@{pos}")
        assert v.reason in EXIT_CODES
        seen[v.reason] = seen.get(v.reason, 0) + 1
        if inside[pos]:
            assert v.reason == "tampered" and v.exit_code == 12, (int(pos), v.reason, v.message)
        if v.reason == "unreadable":
            assert v.exit_code == 10 and v.message.startswith(f"{which}@{pos}:"), v.message
    assert seen["tampered"] >= 150
    # the CLI's exit code is the verdict's: check a few mutated files end to end
    from typer.testing import CliRunner

    from medsec.cli import app

    runner = CliRunner()
    for k, pos in enumerate(probes[::30]):
        buf = bytearray(data)
        buf[pos] ^= 0xFF
        f = tmp_path / f"mut{k}.dcm"
        f.write_bytes(bytes(buf))
        expected = check(f, trust).exit_code
        r = runner.invoke(app, ["verify", str(f), "--trust", str(trust)])
        assert r.exit_code == expected and "Traceback" not in r.output
        if inside[pos]:
            assert r.exit_code == 12
    # header bytes (lengths, VRs) of the data set make some mutations unreadable, told apart from tampering
    assert seen.get("unreadable", 0) > 0, seen


def test_truncation_anywhere_is_never_accepted_as_signed(sample_dir: Path, tmp_path: Path, rsa_signer) -> None:
    signed = tmp_path / "signed.dcm"
    sign_file(sample_dir / "nested.dcm", signed, rsa_signer.key, rsa_signer.cert)
    data = signed.read_bytes()
    rng = np.random.default_rng(3)
    for cut in sorted(set(rng.integers(0, len(data) - 1, 60).tolist())):
        v = check_bytes(data[:cut], rsa_signer.trust)
        assert not v.ok
        assert v.reason in ("unreadable", "unsigned"), (cut, v.reason)
