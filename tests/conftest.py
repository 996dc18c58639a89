"""Shared test fixtures: a tiny registered synthetic dataset and an isolated cache."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from medsec.data.base import DatasetInfo, Split
from medsec.data.synthetic import GENERATORS, SyntheticSpec, register

torch.set_num_threads(1)


def _blobs(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """A tiny two-class toy: a bright blob in the centre (class 1) or not (class 0), plus noise."""
    y = rng.integers(0, 2, n)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 6) ** 2))
    x = rng.normal(0.45, 0.1 + 0.2 * difficulty, (n, 1, size, size)) + y[:, None, None, None] * blob * 0.4
    return Split((np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64),
                 patient_ids=np.array([f"toy{i}" for i in range(n)]))


TOY = SyntheticSpec(DatasetInfo("toy-blobs", "classification", ("no blob", "blob"), 1, "CR", True,
                                "test-only toy"), _blobs, 0.2)


@pytest.fixture(autouse=True)
def _toy_dataset():
    register(TOY)
    yield
    GENERATORS.pop(TOY.info.name, None)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MEDSEC_CACHE", str(d))
    return d


# ---------------------------------------------------------------- skipped interoperability tests
# The interoperability tests skip when their real peer program is missing. The run then ends by naming
# them and the one command that enables them (`make test` installs the peers itself where it can: as
# root with apt-get, see tests/install_peers.sh).
PEER_WORDS = re.compile(r"dcmtk|dcmsign|storescu|img2dcm|echoscu|findscu|orthanc|openssl is not", re.IGNORECASE)


def peers_command() -> str:
    """The one command that installs the tests' peer programs on this machine."""
    if shutil.which("apt-get"):
        return "sudo apt-get install -y --no-install-recommends dcmtk orthanc openssl   (then: make test)"
    return ("install DCMTK (https://dicom.offis.de/dcmtk), Orthanc (https://www.orthanc-server.com) and the "
            "OpenSSL command line so that dcmsign, storescu, Orthanc and openssl are on PATH, then: make test")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 - pytest's hook signature
    skipped = []
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if PEER_WORDS.search(reason):
            skipped.append((rep.nodeid, reason.removeprefix("Skipped: ")))
    if not skipped:
        return
    tr = terminalreporter
    tr.section("interoperability tests skipped: DCMTK / Orthanc / OpenSSL missing", yellow=True, bold=True)
    for nodeid, reason in skipped:
        tr.line(f"SKIPPED {nodeid}: {reason}")
    tr.line(f"{len(skipped)} test(s) need DCMTK, Orthanc or OpenSSL. Enable them with:", yellow=True, bold=True)
    tr.line(f"    {peers_command()}")
