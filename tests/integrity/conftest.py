"""Shared fixtures for the integrity tests: keys (RSA, ECDSA, a CA and its signer), small DICOM files and a tiny
victim checkpoint."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medsec.integrity.keys import keygen
from medsec.integrity.samples import write_image_dicom


@dataclass
class Signer:
    key: Path
    cert: Path
    trust: Path


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def rsa_signer(keydir: Path) -> Signer:
    r = keygen(keydir / "rsa", name="rsa", common_name="RSA Signer")
    return Signer(r.key, r.cert, r.trust_dir)


@pytest.fixture(scope="session")
def ec_signer(keydir: Path) -> Signer:
    r = keygen(keydir / "ec", name="ec", common_name="EC Signer", kind="ecdsa")
    return Signer(r.key, r.cert, r.trust_dir)


@pytest.fixture(scope="session")
def ca_signer(keydir: Path) -> Signer:
    """A signer certificate issued by a CA; the trust store holds only the CA certificate."""
    ca = keygen(keydir / "ca", name="ca", common_name="Hospital CA", ca=True)
    r = keygen(keydir / "ca", name="tech", common_name="CT Technologist",
               issuer_key_path=ca.key, issuer_cert_path=ca.cert)
    return Signer(r.key, r.cert, r.trust_dir)


@pytest.fixture(scope="session")
def other_signer(keydir: Path) -> Signer:
    r = keygen(keydir / "other", name="other", common_name="Someone Else")
    return Signer(r.key, r.cert, r.trust_dir)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    write_image_dicom(d / "nested.dcm", rng.integers(0, 256, (1, 16, 16), dtype=np.uint8))
    write_image_dicom(d / "rle.dcm", rng.integers(0, 256, (1, 12, 10), dtype=np.uint8), compressed=True)
    write_image_dicom(d / "rgb.dcm", rng.integers(0, 256, (3, 8, 8), dtype=np.uint8), nested=False)
    return d


@pytest.fixture()
def nested_file(sample_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(sample_dir / "nested.dcm", tmp_path / "nested.dcm"))


@pytest.fixture()
def rle_file(sample_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(sample_dir / "rle.dcm", tmp_path / "rle.dcm"))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny, untrained) victim checkpoint for `medsec infer` and `medsec serve --model`."""
    import torch

    from medsec.models import build_model, save_checkpoint

    torch.manual_seed(0)
    build = {"arch": "resnet20", "in_channels": 1, "num_outputs": 2, "task": "classification", "width": 0.25,
             "depth": 0.34, "mean": [0.5], "std": [0.25]}
    model = build_model(**build)
    path = tmp_path_factory.mktemp("ckpt") / "victim.pt"
    save_checkpoint(model, path, {**build, "dataset": "test", "class_names": ["normal", "abnormal"],
                                  "image_size": 16, "channels": 1})
    return path
