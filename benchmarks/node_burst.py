"""Load and fault test of the medsec DICOM node in front of a real Orthanc, with and without TLS.

Signed instances (10% with tampered pixels, 2% signed by a signer the node does not trust) are sent by
several concurrent senders (pynetdicom SCUs that, like a modality, resend an instance until it is
answered). During the burst the node process is killed (SIGKILL) and restarted once, and Orthanc is
killed and started again once. Afterwards it checks that every valid instance is in Orthanc exactly once,
every tampered or untrusted one is in quarantine and never in Orthanc, and that the audit log has a
`received` line for every instance that reached the node (no more lines than deliveries). It prints the
throughput (instances answered per second, from the first send to the last answer, restart and outage
included), the C-STORE latency percentiles as the senders saw them, and the time until the archive held
everything (drain). Everything runs on loopback, in a temporary folder, with keys made for the run.

    PYTHONPATH=. python benchmarks/node_burst.py                      # 1000 instances, plain and TLS
    PYTHONPATH=. python benchmarks/node_burst.py -n 100 --no-archive-restart --modes tls

The node runs as its own process: the `medsec serve` command function (medsec.cli.integrity.serve),
started through typer directly so that a restart does not pay for importing the whole toolkit.
tests/integrity/test_integrity_node.py runs a reduced burst through `run_burst`.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsec.integrity.demo import replace_pixels_in_place
from medsec.integrity.keys import keygen, load_certificate, load_private_key
from medsec.integrity.node import disable_nagle
from medsec.integrity.samples import write_image_dicom
from medsec.integrity.signature import sign_file
from medsec.integrity.tls import TLSConfig

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
NODE_AET, ARCHIVE_AET = "MEDSEC", "ORTHANC"
SERVE = "import typer; from medsec.cli.integrity import serve; typer.run(serve)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pki:
    """Everything the run needs, made fresh: a hospital CA issuing the TLS certificates of the node,
    Orthanc and the modality; a rogue TLS client; the trusted DICOM signer and an untrusted one."""

    root: Path

    def __post_init__(self) -> None:
        r = self.root
        ca = keygen(r / "tls", name="ca", common_name="Hospital TLS CA", ca=True)
        self.ca, self.ca_key = ca.cert, ca.key
        self.trust = ca.trust_dir  # holds ca.pem: trusted by the node (and given to Orthanc)
        for name, purpose in (("node", "tls"), ("orthanc", "tls"), ("modality", "tls-client")):
            k = keygen(r / "tls", name=name, common_name=name, purpose=purpose,  # type: ignore[arg-type]
                       issuer_key_path=ca.key, issuer_cert_path=ca.cert)
            setattr(self, name, (k.cert, k.key))
        rogue = keygen(r / "rogue", name="rogue", common_name="rogue client", purpose="tls-client")
        self.rogue = (rogue.cert, rogue.key)
        rogue_node = keygen(r / "rogue", name="rogue-node", common_name="rogue node", purpose="tls")
        self.rogue_node = (rogue_node.cert, rogue_node.key)
        signer = keygen(r / "signer", name="ct", common_name="CT Scanner 3")
        self.signer, self.signer_trust = (signer.cert, signer.key), signer.trust_dir
        other = keygen(r / "other", name="other", common_name="Unknown Scanner")
        self.other_signer = (other.cert, other.key)

    def client_context(self, who: str = "modality") -> ssl.SSLContext:
        cert, key = getattr(self, who)
        return TLSConfig(cert, key, self.trust).client_context()


class Orthanc:
    """A real Orthanc on loopback ports with its own config and storage, stopped by its PID."""

    def __init__(self, workdir: Path, pki: Pki | None) -> None:
        assert ORTHANC is not None, "Orthanc is not installed"
        self.dir = workdir
        self.http, self.port = free_port(), free_port()
        cfg: dict[str, Any] = {
            "Name": "medsec-archive", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "HttpPort": self.http, "DicomPort": self.port, "DicomAet": ARCHIVE_AET, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [], "OverwriteInstances": False, "DicomScpTimeout": 30,
            "StorageCompression": False, "SaveJobs": False,
        }
        if pki is not None:
            cfg.update({"DicomTlsEnabled": True, "DicomTlsCertificate": str(pki.orthanc[0]),
                        "DicomTlsPrivateKey": str(pki.orthanc[1]), "DicomTlsTrustedCertificates": str(pki.ca),
                        "DicomTlsRemoteCertificateRequired": True})
        self.config = workdir / "orthanc.json"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(cfg, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        log = open(self.dir / "orthanc.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/system", timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited: see {self.dir / 'orthanc.log'}") from None
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (Orthanc finishes the associations in progress first), or SIGKILL (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def sop_instance_uids(self) -> collections.Counter[str]:
        """How many instances Orthanc holds per SOP Instance UID."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/instances?expand", timeout=120) as r:
            items = json.loads(r.read())
        return collections.Counter(i["MainDicomTags"]["SOPInstanceUID"] for i in items)


class Node:
    """The medsec node as its own process (`medsec serve`), killable and restartable."""

    def __init__(self, workdir: Path, pki: Pki | None, archive: Orthanc | None, tls: bool, *,
                 trust: Path | None = None, extra_args: Sequence[str] = ()) -> None:
        """archive None: no forwarding; trust: the signer trust (default the PKI's); extra_args: further
        `medsec serve` options (e.g. --require-timestamp). tls and the default trust need the PKI."""
        if pki is None and (tls or trust is None):
            raise ValueError("a node with TLS or without its own trust needs the PKI")
        self.dir, self.port = workdir, free_port()
        self.audit = workdir / "audit.jsonl"
        self.store, self.quarantine = workdir / "store", workdir / "quarantine"
        signer_trust = trust if trust is not None else pki.signer_trust  # type: ignore[union-attr]
        self.args = ["--trust", str(signer_trust), "--port", str(self.port), "--ae-title", NODE_AET,
                     "--store", str(self.store), "--quarantine", str(self.quarantine),
                     "--audit-log", str(self.audit), *extra_args]
        if archive is not None:
            self.args += ["--forward-to", f"{ARCHIVE_AET}@127.0.0.1:{archive.port}"]
        if tls:
            self.args += ["--tls-cert", str(pki.node[0]), "--tls-key", str(pki.node[1]), "--tls-trust", str(pki.trust)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 120) -> None:
        self.starts += 1
        logfile = self.dir / f"node-{self.starts}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
        with open(logfile, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVE, *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if b"listening on" in logfile.read_bytes():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited: {logfile.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("the node did not start")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut or the OOM killer would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def pending(self) -> int:
        return len(list((self.store / "outbox").glob("*.dcm"))) if (self.store / "outbox").exists() else 0


@dataclass
class Instance:
    path: Path
    uid: str
    kind: str  # valid, tampered, untrusted


def make_instances(folder: Path, n: int, pki: Pki, tampered: float = 0.10, untrusted: float = 0.02,
                   size: int = 64, seed: int = 0) -> list[Instance]:
    """n signed Secondary Capture instances; round(n*tampered) get pixels overwritten after signing and
    round(n*untrusted) are signed by the untrusted signer; shuffled with `seed`."""
    import pydicom

    rng = np.random.default_rng(seed)
    kinds = ["tampered"] * round(n * tampered) + ["untrusted"] * round(n * untrusted)
    kinds += ["valid"] * (n - len(kinds))
    rng.shuffle(kinds)
    folder.mkdir(parents=True, exist_ok=True)
    study = pydicom.uid.generate_uid()
    keys = {kind: (load_certificate(cert), load_private_key(key))  # loaded once, not per file
            for kind, (cert, key) in (("trusted", pki.signer), ("untrusted", pki.other_signer))}
    out = []
    for i, kind in enumerate(kinds):
        pixels = rng.integers(0, 256, (1, size, size), dtype=np.uint8)
        raw = write_image_dicom(folder / f"raw-{i}.dcm", pixels, study_uid=study, instance_number=i + 1)
        cert, key = keys["untrusted" if kind == "untrusted" else "trusted"]
        path = folder / f"{i:05d}-{kind}.dcm"
        sign_file(raw, path, key, cert)
        raw.unlink()
        if kind == "tampered":
            replace_pixels_in_place(path, 255 - pixels, path)
        out.append(Instance(path, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID), kind))
    return out


@dataclass
class SendLog:
    """What the senders saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    answered: int = 0
    first: float = 0.0
    last: float = 0.0
    gap: float = 0.0  # the longest time between two answers (to any sender): stalls show here
    lock: threading.Lock = field(default_factory=threading.Lock)


def sender(instances: list[Instance], port: int, ctx: ssl.SSLContext | None, out: SendLog,
           give_up_s: float = 300) -> None:
    """One modality: one association, each instance sent until answered (reconnecting with back-off when
    the node is down), as a modality's retry queue does."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, evt

    ae = AE(ae_title="MODALITY")  # like DCMTK's storescu: Nagle's algorithm off
    ae.network_timeout = ae.acse_timeout = 30
    ae.dimse_timeout = 10  # no answer within 10 s: abort and resend, as a modality's retry timer would
    ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = None
    for inst in instances:
        deadline = time.monotonic() + give_up_s
        delay = 0.05
        while True:
            if assoc is None or not assoc.is_established:
                kwargs: dict[str, Any] = {"evt_handlers": [(evt.EVT_CONN_OPEN, disable_nagle)]}
                if ctx is not None:
                    kwargs["tls_args"] = (ctx, "127.0.0.1")
                assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET, **kwargs)
                if not assoc.is_established:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the node did not answer for {give_up_s} s")
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
            t0 = time.perf_counter()
            with out.lock:
                out.attempts[inst.uid] += 1
                out.first = out.first or t0
            rsp = assoc.send_c_store(inst.path)
            if rsp and "Status" in rsp:
                t1 = time.perf_counter()
                with out.lock:
                    out.gap = max(out.gap, t1 - (out.last or t1))
                    out.latencies.append(t1 - t0)
                    out.statuses[inst.uid] = int(rsp.Status)
                    out.answered += 1
                    out.last = t1
                break
            assoc.abort()  # no answer: the node went away mid-store; resend on a new association
            assoc = None
    if assoc is not None and assoc.is_established:
        assoc.release()


def read_audit(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Audit records, and the number of lines that are not whole JSON (a line cut by SIGKILL)."""
    recs, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return recs, bad


def run_burst(workdir: Path, instances: list[Instance], pki: Pki, *, tls: bool, senders: int = 4,
              kill_node_at: float | None = 0.3, restart_archive_at: float | None = 0.6,
              archive_outage_s: float = 2.0, archive_kill: bool = True,
              drain_timeout_s: float = 300) -> dict[str, Any]:
    """Send `instances` through a fresh node into a fresh Orthanc with the faults; returns figures and checks."""
    workdir.mkdir(parents=True, exist_ok=True)
    archive = Orthanc(workdir / "orthanc", pki if tls else None)
    node = Node(workdir, pki, archive, tls)
    out = SendLog()
    events: list[str] = []
    archive.start()
    node.start()
    try:
        ctx = pki.client_context() if tls else None
        shares = [instances[i::senders] for i in range(senders)]
        errors: list[BaseException] = []

        def run(share: list[Instance]) -> None:
            try:
                sender(share, node.port, ctx, out)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in shares]
        n = len(instances)

        def at(fraction: float) -> bool:  # wait until that share of instances is answered
            while out.answered < fraction * n and any(t.is_alive() for t in threads):
                time.sleep(0.005)
            return any(t.is_alive() for t in threads)

        def kill_node() -> None:
            if kill_node_at is not None and at(kill_node_at):
                node.kill()
                events.append(f"{time.perf_counter() - t_start:.2f} s: node killed (SIGKILL) after {out.answered} "
                              f"answers, {node.pending()} waiting in its outbox")
                node.start()
                events.append(f"{time.perf_counter() - t_start:.2f} s: node restarted")

        def restart_archive() -> None:
            if restart_archive_at is not None and at(restart_archive_at):
                events.append(f"{time.perf_counter() - t_start:.2f} s: Orthanc stopping "
                              f"({'SIGKILL' if archive_kill else 'SIGTERM'}) after {out.answered} answers, "
                              f"{node.pending()} waiting in the node's outbox")
                archive.stop(kill=archive_kill)
                events.append(f"{time.perf_counter() - t_start:.2f} s: Orthanc stopped, {node.pending()} waiting")
                time.sleep(archive_outage_s)
                archive.start()
                events.append(f"{time.perf_counter() - t_start:.2f} s: Orthanc started")

        faults = [threading.Thread(target=f, daemon=True) for f in (kill_node, restart_archive)]
        t_start, wall_start = time.perf_counter(), time.time()
        for t in threads + faults:
            t.start()
        for t in threads + faults:
            t.join()
        if errors:
            raise errors[0]
        end = time.monotonic() + drain_timeout_s
        while node.pending() and time.monotonic() < end:
            time.sleep(0.05)
        node.stop()
        in_archive = archive.sop_instance_uids()
    finally:
        node.kill()
        archive.stop()
    audit, cut_lines = read_audit(node.audit)
    received = collections.Counter(r["sop_instance_uid"] for r in audit if r.get("event") == "received")
    forwarded = collections.Counter(r["sop_instance_uid"] for r in audit if r.get("event") == "forwarded")
    last_forward = max((dt.datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
                        for r in audit if r.get("event") == "forwarded"), default=wall_start)
    quarantined = {q.name.rsplit(".", 2)[0] for q in node.quarantine.glob("*.dcm")}  # UID.<random>.dcm
    valid = [i for i in instances if i.kind == "valid"]
    refused = [i for i in instances if i.kind != "valid"]
    lat = np.array(out.latencies) * 1000
    checks = {
        "every valid instance in Orthanc exactly once": all(in_archive[i.uid] == 1 for i in valid),
        "no tampered or untrusted instance in Orthanc": all(in_archive[i.uid] == 0 for i in refused),
        "every tampered or untrusted instance quarantined": all(i.uid in quarantined for i in refused),
        "nothing else in Orthanc": sum(in_archive.values()) == len(valid),
        "every sender got an answer for every instance": len(out.statuses) == n,
        "valid answered 0x0000, refused answered 0xC0xx": all(
            (out.statuses.get(i.uid) == 0) == (i.kind == "valid") for i in instances),
        "an audit line for every instance received, none without a delivery": all(
            1 <= received[i.uid] <= out.attempts[i.uid] for i in instances),
        "a forwarded audit line for every valid instance": all(forwarded[i.uid] >= 1 for i in valid),
        "nothing left in the outbox": node.pending() == 0,
    }
    return {
        "tls": tls, "protocols": sorted({r.get("tls", "plain") for r in audit if r.get("event") == "received"}),
        "instances": n, "valid": len(valid), "tampered": sum(i.kind == "tampered" for i in instances),
        "untrusted": sum(i.kind == "untrusted" for i in instances), "senders": senders, "events": events,
        "throughput_per_s": round(n / (out.last - out.first), 1),
        "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)}
        | {"max": round(float(lat.max()), 1)},
        "longest_gap_between_answers_s": round(out.gap, 2),
        "sends": sum(out.attempts.values()), "resent_by_senders": sum(out.attempts.values()) - n,
        "audit_received_lines": sum(received.values()), "audit_cut_lines": cut_lines,
        "forward_sends": sum(forwarded.values()),
        "forwarded_twice": sum(1 for c in forwarded.values() if c > 1),
        "seconds_sending": round(out.last - t_start, 2), "seconds_until_archived": round(last_forward - wall_start, 2),
        "archive_unreachable_events": sum(r.get("event") == "archive-unreachable" for r in audit),
        "checks": checks, "ok": all(checks.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1000, help="instances per run")
    p.add_argument("--senders", type=int, default=4, help="concurrent senders")
    p.add_argument("--modes", nargs="+", choices=["plain", "tls"], default=["plain", "tls"])
    p.add_argument("--no-archive-restart", action="store_true", help="do not stop and start Orthanc")
    p.add_argument("--archive-stop", choices=["kill", "term"], default="kill",
                   help="how Orthanc is stopped: SIGKILL (a crash, default) or SIGTERM (it first finishes the "
                        "node's associations in progress, which with a backlog can drain it)")
    p.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args()
    if ORTHANC is None:
        sys.exit("Orthanc is not installed (Debian: apt-get install orthanc)")
    root = a.workdir or Path(tempfile.mkdtemp(prefix="medsec-burst-"))
    t0 = time.perf_counter()
    pki = Pki(root / "pki")
    instances = make_instances(root / "instances", a.n, pki)
    print(f"{a.n} signed instances made in {time.perf_counter() - t0:.1f} s under {root}", flush=True)
    results = []
    for mode in a.modes:
        r = run_burst(root / mode, instances, pki, tls=mode == "tls", senders=a.senders,
                      restart_archive_at=None if a.no_archive_restart else 0.6, archive_kill=a.archive_stop == "kill")
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
    print("\n| transport | instances (valid/tampered/untrusted) | senders | instances/s | latency p50 / p90 / p99 / "
          "max (ms) | re-sent by senders | forwarded twice | until archived (s) | checks |")
    print("|---|---|---:|---:|---|---:|---:|---:|---|")
    for r in results:
        la = r["latency_ms"]
        print(f"| {'/'.join(r['protocols']) + ', mutual auth' if r['tls'] else 'plain TCP'} | {r['instances']} ({r['valid']}/"
              f"{r['tampered']}/{r['untrusted']}) | {r['senders']} | {r['throughput_per_s']} | {la['p50']} / "
              f"{la['p90']} / {la['p99']} / {la['max']} | {r['resent_by_senders']} | {r['forwarded_twice']} | "
              f"{r['seconds_until_archived']} | {'all pass' if r['ok'] else 'FAIL'} |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    if a.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
