"""`medsec sign`/`verify`/`keygen` against DCMTK's `dcmsign`, in one run: wall time, CPU time, peak RSS.

Each command is a fresh process, as a PACS script would call it; the contenders alternate (the machine may
be shared) and the median of the repeats is reported, with the largest peak RSS (GNU time's maximum
resident set size). Then a folder of N files is signed and verified in one `medsec` call, beside `dcmsign`
called once per file (it takes one file per call).

    PYTHONPATH=. python benchmarks/integrity_speed.py                 # 9 repeats, 100-file folder
    PYTHONPATH=. python benchmarks/integrity_speed.py --repeats 15 --folder 200 --json out.json

The image is a synthetic 512 x 512 8-bit Secondary Capture (medsec.integrity.samples), signed with an
RSA-2048 key, SHA-256, every signable element. The limits checked: `medsec verify` on one file within
0.5 s and 100 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S, LIMIT_MIB = 0.5, 100.0
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, int]:
    """(wall s, user+sys CPU s, peak RSS MiB, exit code) of one child process.

    Through GNU time: a child forked straight from this (large) Python process would report this
    process's resident size as its own peak (Linux keeps the high-water mark across fork and exec)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as f:
        t0 = time.perf_counter()
        r = subprocess.run([TIME, "-f", "%U %S %M %x", "-o", f.name, *cmd], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - t0
        user, system, rss_kib, code = f.read().split()[-4:]
    return wall, float(user) + float(system), int(rss_kib) / 1024, int(code) if r.returncode == 0 else r.returncode


def measure(cases: dict[str, list[str]], repeats: int, env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Alternate the cases `repeats` times; per case the median wall and CPU time and the largest RSS."""
    runs: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            res = run_measured(cases[k], env)
            if res[3] != 0:
                sys.exit(f"{k} failed (exit {res[3]}): {' '.join(cases[k])}")
            runs[k].append(res)
    return {k: {"wall_s": statistics.median(x[0] for x in v), "cpu_s": statistics.median(x[1] for x in v),
                "rss_mib": max(x[2] for x in v)} for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--folder", type=int, default=100, help="files in the folder test (0: skip)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if shutil.which("dcmsign") is None:
        sys.exit("dcmsign is not on PATH: install DCMTK (Debian: apt-get install dcmtk)")
    if not os.access(TIME, os.X_OK):
        sys.exit(f"{TIME} is missing: install GNU time (Debian: apt-get install time)")

    from medsec.integrity.samples import write_image_dicom

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    medsec = [sys.executable, "-m", "medsec"]
    with tempfile.TemporaryDirectory(prefix="medsec-speed-") as tmp:
        d = Path(tmp)
        rng = np.random.default_rng(0)
        img = d / "image.dcm"
        write_image_dicom(img, rng.integers(0, 256, (args.size, args.size), dtype=np.uint8))
        subprocess.run([*medsec, "keygen", str(d / "keys")], check=True, env=env, capture_output=True)
        key, cert, trust = d / "keys" / "signer.key", d / "keys" / "signer.pem", d / "keys" / "trust"
        subprocess.run([*medsec, "sign", str(img), str(d / "m.dcm"), "--key", str(key), "--cert", str(cert)],
                       check=True, env=env, capture_output=True)
        subprocess.run(["dcmsign", "--sign", str(key), str(cert), "--mac-sha256", str(img), str(d / "d.dcm")],
                       check=True, capture_output=True)
        one = measure({
            "medsec verify": [*medsec, "verify", str(d / "m.dcm"), "--trust", str(trust)],
            "dcmsign --verify": ["dcmsign", "--verify", "+rg", "+cf", str(cert), str(d / "m.dcm")],
            "medsec sign": [*medsec, "sign", str(img), str(d / "m2.dcm"), "--key", str(key), "--cert", str(cert)],
            "dcmsign --sign": ["dcmsign", "--sign", str(key), str(cert), "--mac-sha256", str(img), str(d / "d2.dcm")],
            "medsec keygen": [*medsec, "keygen", str(d / "k2"), "--force"],
        }, args.repeats, env)
        folder: dict[str, dict[str, float]] = {}
        if args.folder:
            src = d / "series"
            for i in range(args.folder):
                write_image_dicom(src / f"{i:04d}.dcm", rng.integers(0, 256, (args.size, args.size), dtype=np.uint8))
            t = [run_measured([*medsec, "sign", str(src), str(d / "signed"), "--key", str(key), "--cert", str(cert)],
                              env)]
            t.append(run_measured([*medsec, "verify", str(d / "signed"), "--trust", str(trust)], env))
            loop = [run_measured(["dcmsign", "--verify", "+rg", "+cf", str(cert), str(f)], env)
                    for f in sorted((d / "signed").iterdir())]
            for name, (wall, cpu, rss, code) in zip(("medsec sign (one call)", "medsec verify (one call)"), t,
                                                    strict=True):
                if code != 0:
                    sys.exit(f"{name} on the folder failed (exit {code})")
                folder[name] = {"wall_s": wall, "cpu_s": cpu, "rss_mib": rss, "per_file_ms": 1000 * wall / args.folder}
            folder["dcmsign --verify (one call per file)"] = {
                "wall_s": sum(x[0] for x in loop), "cpu_s": sum(x[1] for x in loop),
                "rss_mib": max(x[2] for x in loop), "per_file_ms": 1000 * sum(x[0] for x in loop) / args.folder}

    where = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; Python {platform.python_version()}"
    print(f"One {args.size}x{args.size} file, median of {args.repeats} runs each ({where}):\n")
    print("| command | wall s | CPU s | peak RSS MiB |\n|---|---:|---:|---:|")
    for k, v in one.items():
        print(f"| `{k}` | {v['wall_s']:.3f} | {v['cpu_s']:.3f} | {v['rss_mib']:.1f} |")
    mv, dv = one["medsec verify"], one["dcmsign --verify"]
    print(f"\nmedsec verify / dcmsign --verify: {mv['wall_s'] / dv['wall_s']:.1f}x wall, "
          f"{mv['rss_mib'] / dv['rss_mib']:.1f}x RSS")
    ok = mv["wall_s"] <= LIMIT_S and mv["rss_mib"] <= LIMIT_MIB
    print(f"medsec verify within {LIMIT_S} s and {LIMIT_MIB:.0f} MiB: {'yes' if ok else 'NO'}")
    if folder:
        print(f"\nA folder of {args.folder} files:\n\n| command | wall s | per file ms | peak RSS MiB |\n|---|---:|---:|---:|")
        for k, v in folder.items():
            print(f"| `{k}` | {v['wall_s']:.2f} | {v['per_file_ms']:.1f} | {v['rss_mib']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "size": args.size, "repeats": args.repeats,
                                         "one_file": one, "folder": folder}, indent=2))


if __name__ == "__main__":
    main()
