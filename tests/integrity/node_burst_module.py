"""benchmarks/node_burst.py (the node as a process, the PKI, Orthanc) loaded once for the tests that use it
(benchmarks/ is a folder of scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "node_burst", Path(__file__).resolve().parents[2] / "benchmarks" / "node_burst.py")
assert _spec is not None and _spec.loader is not None
burst = sys.modules.get("node_burst") or importlib.util.module_from_spec(_spec)
if "node_burst" not in sys.modules:
    sys.modules["node_burst"] = burst
    _spec.loader.exec_module(burst)
