"""Reader tests run with an isolated medsec cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path / "medsec-cache"))
