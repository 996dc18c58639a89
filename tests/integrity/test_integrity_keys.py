"""Keys, certificates and trust stores."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from medsec.integrity.errors import KeyCertMismatchError, KeyFileError, KeyPasswordError
from medsec.integrity.keys import (
    TrustStore,
    check_key_matches,
    keygen,
    load_certificate,
    load_private_key,
)


def test_keygen_self_signed_rsa_is_owner_only_and_trusted(tmp_path: Path) -> None:
    r = keygen(tmp_path, name="me", common_name="Dr Me")
    assert stat.S_IMODE(r.key.stat().st_mode) == 0o600
    key = load_private_key(r.key)
    cert = load_certificate(r.cert)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    check_key_matches(key, cert)
    # backdated so that dcmsign does not see a "not yet valid" certificate when signing right away
    assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC) - dt.timedelta(minutes=4)
    res = TrustStore.load(r.trust_dir).check(cert)
    assert res.trusted and res.time_valid


def test_keygen_ecdsa_encrypted_key_needs_password(tmp_path: Path) -> None:
    r = keygen(tmp_path, name="ec", kind="ecdsa", curve="P-384", password="s3cret")
    assert b"ENCRYPTED" in r.key.read_bytes()
    assert stat.S_IMODE(r.key.stat().st_mode) == 0o600
    key = load_private_key(r.key, "s3cret")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    with pytest.raises(KeyPasswordError, match="wrong password"):
        load_private_key(r.key, "nope")
    with pytest.raises(KeyPasswordError, match="encrypted"):
        load_private_key(r.key)


def test_ca_issues_signer_and_trust_store_chains(tmp_path: Path) -> None:
    ca = keygen(tmp_path, name="ca", common_name="Hospital CA", ca=True)
    tech = keygen(tmp_path, name="tech", issuer_key_path=ca.key, issuer_cert_path=ca.cert)
    store = TrustStore.load(tmp_path / "trust")
    assert [c.subject.rfc4514_string() for c in store.certificates] == ["CN=Hospital CA"]
    res = store.check(load_certificate(tech.cert))
    assert res.trusted and res.time_valid and len(res.chain) == 2
    # a self-signed signer not in the store is not trusted
    stranger = keygen(tmp_path / "x", name="x")
    assert not store.check(load_certificate(stranger.cert)).trusted
    # a signer certificate (CA:FALSE) cannot act as an issuer
    fake = keygen(tmp_path / "y", name="y")
    with pytest.raises(KeyFileError, match="not a CA"):
        keygen(tmp_path / "z", name="z", issuer_key_path=fake.key, issuer_cert_path=fake.cert)


def test_validity_windows(tmp_path: Path) -> None:
    old = keygen(tmp_path / "old", name="old", days=1,
                 not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10))
    future = keygen(tmp_path / "future", name="future", days=10,
                    not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    r1 = TrustStore.load(old.trust_dir).check(load_certificate(old.cert))
    r2 = TrustStore.load(future.trust_dir).check(load_certificate(future.cert))
    assert r1.trusted and not r1.time_valid and "expired" in r1.reason
    assert r2.trusted and not r2.time_valid and "not yet valid" in r2.reason


def test_mismatched_key_and_bad_files(tmp_path: Path) -> None:
    a = keygen(tmp_path / "a", name="a")
    b = keygen(tmp_path / "b", name="b")
    with pytest.raises(KeyCertMismatchError):
        check_key_matches(load_private_key(a.key), load_certificate(b.cert))
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(KeyFileError, match="junk.pem"):
        load_private_key(junk)
    with pytest.raises(KeyFileError, match="junk.pem"):
        load_certificate(junk)
    with pytest.raises(KeyFileError, match="does not exist"):
        TrustStore.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError, match="no certificate"):
        TrustStore.load(tmp_path / "empty")
