"""A test run that skips interoperability tests (DCMTK or Orthanc missing) ends by naming them and the
command that enables them (tests/conftest.py: pytest_terminal_summary)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_skipped_interop_tests_are_listed_with_the_command(tmp_path: Path) -> None:
    (tmp_path / "test_peer.py").write_text(
        "import pytest\n"
        "@pytest.mark.skipif(True, reason='DCMTK dcmsign is not on PATH')\n"
        "def test_needs_dcmsign():\n    pass\n"
        "def test_plain():\n    pytest.skip('needs a GPU')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
                        str(tmp_path / "test_peer.py")], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = r.stdout.split("interoperability tests skipped")[-1]
    assert "test_needs_dcmsign: DCMTK dcmsign is not on PATH" in summary
    assert "test_plain" not in summary  # only the ones a peer program would enable
    assert "1 test(s) need DCMTK, Orthanc or OpenSSL" in summary and ("apt-get install" in summary or "install DCMTK" in summary)
