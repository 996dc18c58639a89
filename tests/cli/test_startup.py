"""The top-level `medsec` command imports only the module of the command it runs.

`medsec sign`, `verify` and `keygen` must start like command-line tools: never torch, MONAI, matplotlib
or scikit-learn (checked in a fresh interpreter with `python -X importtime`, which lists every module
imported). And COMMANDS, the table the lazy dispatch reads, names exactly the commands the modules
register.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsec.cli import COMMANDS, module_commands

HEAVY = ("torch", "monai", "matplotlib", "sklearn", "scipy", "torchvision")
ROOT = Path(__file__).resolve().parents[2]


def imported_modules(*args: str, cwd: Path) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run `python -X importtime -m medsec ARGS` and return the top-level packages it imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "medsec", *args], capture_output=True,
                       text=True, cwd=cwd, env=env, timeout=120)
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in r.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return names, r


@pytest.fixture(scope="module")
def signed_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from medsec.integrity.keys import keygen
    from medsec.integrity.samples import write_image_dicom
    from medsec.integrity.signature import sign_file

    d = tmp_path_factory.mktemp("startup")
    k = keygen(d / "keys")
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image_dicom(d / "in" / f"{i}.dcm", rng.integers(0, 256, (8, 8), dtype=np.uint8))
        sign_file(d / "in" / f"{i}.dcm", d / "signed" / f"{i}.dcm", k.key, k.cert)
    return d, k.trust_dir


@pytest.mark.parametrize("command", ["verify", "sign", "keygen", "timestamp"])
def test_integrity_commands_do_not_import_the_imaging_stack(command: str, signed_folder, tmp_path: Path) -> None:
    d, trust = signed_folder
    args = {
        "verify": ["verify", str(d / "signed"), "--trust", str(trust)],
        "sign": ["sign", str(d / "in"), str(tmp_path / "out"), "--key", str(d / "keys" / "signer.key"),
                 "--cert", str(d / "keys" / "signer.pem")],
        "keygen": ["keygen", str(tmp_path / "k"), "--algorithm", "ecdsa"],
        "timestamp": ["timestamp", "request", str(d / "signed" / "0.dcm"), str(tmp_path / "q.tsq")],
    }[command]
    names, r = imported_modules(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "medsec" in names
    assert not names & set(HEAVY), f"medsec {command} imported {sorted(names & set(HEAVY))}"


def test_help_lists_every_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medsec.cli import app

    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0, r.output
    for name in COMMANDS:
        assert name in r.output


def test_command_table_matches_what_the_modules_register() -> None:
    registered: dict[str, str] = {}
    for module in dict.fromkeys(COMMANDS.values()):
        for name in module_commands(module):
            assert name not in registered, f"{name} registered by {registered.get(name)} and {module}"
            registered[name] = module
    assert registered == COMMANDS


def test_unknown_command_is_a_usage_error() -> None:
    from typer.testing import CliRunner

    from medsec.cli import app

    r = CliRunner().invoke(app, ["verfiy"])
    assert r.exit_code == 2


# Run medsec in this interpreter and report, at exit, its own peak resident size since exec (VmHWM; the
# rusage high-water mark would include the pytest process it was forked from) and its CPU time.
_PROBE = """
import atexit, os, resource, runpy, sys
def report():
    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    os.write(2, f'PROBE {int(hwm) / 1024:.1f} {ru.ru_utime + ru.ru_stime:.3f}\\n'.encode())
atexit.register(report)
sys.argv = ['medsec', *sys.argv[1:]]
runpy.run_module('medsec', run_name='__main__')
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_verify_stays_within_the_memory_budget(signed_folder, tmp_path: Path) -> None:
    """`medsec verify` on one file: peak RSS under 100 MiB; CPU time well under a second (the 0.5 s wall
    figure is measured on an idle machine by benchmarks/integrity_speed.py; CPU time is what a loaded test
    machine can check)."""
    d, trust = signed_folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _PROBE, "verify", str(d / "signed" / "0.dcm"), "--trust", str(trust)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    rss_mib, cpu_s = map(float, r.stderr.split("PROBE")[-1].split())
    assert rss_mib < 100, f"medsec verify peaked at {rss_mib} MiB"
    assert cpu_s < 1.5, f"medsec verify used {cpu_s} s of CPU"
