"""CLI commands of the integrity area: keygen, sign, verify, infer (and serve, when pynetdicom is there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from medsec.cli.options import RequireTimestampOpt, TsaTrustOpt
from medsec.integrity.errors import IntegrityError, UnreadableFileError

if TYPE_CHECKING:
    from medsec.integrity.tls import TLSConfig

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

PasswordOpt = Annotated[
    str | None,
    typer.Option("--password", envvar="MEDSEC_KEY_PASSWORD", help="Password of the private key (or $MEDSEC_KEY_PASSWORD)."),
]


EXIT_UNREADABLE_EMPTY = 10  # `verify` on folders holding no file: nothing can be vouched for


def _fail(e: IntegrityError) -> SystemExit:
    """Print the error and give the SystemExit carrying its documented code.

    SystemExit rather than typer.Exit: `medsec.cli.main` runs the app with standalone_mode=False, where
    click turns typer.Exit into a return value and the exit code would be lost."""
    err_console.print(f"error: {e}", style="bold red", markup=False)
    return SystemExit(e.exit_code)


def keygen(
    out_dir: Annotated[Path, typer.Argument(help="Folder for NAME.key, NAME.pem and trust/.")],
    name: Annotated[str, typer.Option(help="File name stem of the key and certificate.")] = "signer",
    cn: Annotated[str | None, typer.Option("--cn", help="Certificate subject common name (default: NAME).")] = None,
    algorithm: Annotated[str, typer.Option(help="rsa or ecdsa.")] = "rsa",
    bits: Annotated[int, typer.Option(help="RSA key size.")] = 2048,
    curve: Annotated[str, typer.Option(help="ECDSA curve: P-256, P-384, P-521.")] = "P-256",
    days: Annotated[float, typer.Option(help="Validity in days.")] = 365,
    ca: Annotated[bool, typer.Option("--ca", help="Make a CA certificate (to issue signer certificates).")] = False,
    issuer_key: Annotated[Path | None, typer.Option(help="CA private key that issues this certificate.")] = None,
    issuer_cert: Annotated[Path | None, typer.Option(help="CA certificate that issues this certificate.")] = None,
    issuer_password: Annotated[str | None, typer.Option(help="Password of the CA private key.")] = None,
    password: PasswordOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing NAME.key/NAME.pem.")] = False,
    purpose: Annotated[str, typer.Option(help="signing (DICOM signatures), a TLS certificate for the node: "
                                         "tls-server, tls-client, tls (both), or timestamping (a time stamping "
                                         "authority's certificate, RFC 3161).")] = "signing",
    hosts: Annotated[list[str] | None, typer.Option("--host", help="TLS: DNS name or IP address the certificate "
                                                    "is for (repeat it; default localhost, 127.0.0.1, ::1).")] = None,
) -> None:
    """Make a key pair and certificate (self-signed, a CA, or issued by your CA) and a trust-store folder;
    for DICOM signatures, with --purpose for TLS between modalities, the medsec node and the archive, or for
    a site's own time stamping authority."""
    from medsec.integrity.keys import PURPOSES
    from medsec.integrity.keys import keygen as _keygen

    if algorithm not in ("rsa", "ecdsa"):
        raise typer.BadParameter("choose rsa or ecdsa", param_hint="--algorithm")
    if purpose not in PURPOSES:
        raise typer.BadParameter(f"choose one of {', '.join(PURPOSES)}", param_hint="--purpose")
    try:
        r = _keygen(out_dir, name=name, common_name=cn, kind=algorithm,  # type: ignore[arg-type]
                    bits=bits, curve=curve, days=days, ca=ca, issuer_key_path=issuer_key,
                    issuer_cert_path=issuer_cert, issuer_password=issuer_password, password=password,
                    force=force, purpose=purpose, hosts=hosts or ())  # type: ignore[arg-type]
    except IntegrityError as e:
        raise _fail(e) from None
    console.print(f"private key  {r.key} (mode 0600{', encrypted' if password else ''})", markup=False)
    console.print(f"certificate  {r.cert}", markup=False)
    console.print(f"trust store  {r.trust_dir}/ (holds {r.trusted_cert.name})", markup=False)


def sign(
    paths: Annotated[list[Path], typer.Argument(
        help="IN... OUT: the DICOM file(s) or folder(s) to sign, then OUT: the signed copy when IN is one file "
             "(may equal IN), else a folder the inputs are mirrored into.", metavar="PATHS")],
    key: Annotated[Path, typer.Option(help="Signer private key (PEM or DER).")],
    cert: Annotated[Path, typer.Option(help="Signer certificate (PEM or DER).")],
    profile: Annotated[str, typer.Option(help="none, base, creator or authorization (RSA profiles need RSA).")] = "base",
    mac: Annotated[str, typer.Option(help="sha256, sha384, sha512, sha1 or ripemd160.")] = "sha256",
    tags: Annotated[list[str] | None, typer.Option("--tags", "--tag", help="Sign only this element "
                    "(gggg,eeee or keyword); repeat it. Default: every signable element.")] = None,
    item: Annotated[str | None, typer.Option(help="Sign inside a sequence item, e.g. 'ProcedureCodeSequence[0]'.")] = None,
    password: PasswordOpt = None,
) -> None:
    """Add a DICOM digital signature (PS3.15 Annex C, dcmsign-compatible) and write the signed copy;
    several files or folders are signed in one call into an output folder (errors reported per file)."""
    from medsec.integrity import rawdicom as rd
    from medsec.integrity.keys import load_certificate, load_private_key
    from medsec.integrity.signature import required_coverage, sign_file

    if len(paths) < 2:
        raise typer.BadParameter("give IN... OUT: at least one input and the output", param_hint="IN... OUT")
    *inputs, out = paths
    split = [t for arg in tags or [] for t in arg.replace(" ", "").split(";") if t] if tags else None
    try:
        pairs = sign_targets(inputs, out)
        k, c = load_private_key(key, password), load_certificate(cert)
    except IntegrityError as e:
        raise _fail(e) from None
    failed: list[int] = []
    for src, dst in pairs:
        try:
            r = sign_file(src, dst, k, c, profile=profile, mac=mac, tags=split, item=item)
        except IntegrityError as e:
            if len(pairs) == 1:
                raise _fail(e) from None
            what = f"FAILED {e}" if str(src) in str(e) else f"FAILED {src}: {e}"
            err_console.print(f"{what} (exit {e.exit_code})", style="bold red", markup=False)
            failed.append(e.exit_code)
            continue
        console.print(f"signed {src} -> {r.output}: {r.profile} profile, {r.mac}, {len(r.signed_tags)} elements, "
                      f"{r.location} data set, signature UID {r.uid}", markup=False)
        covered = set(required_coverage(rd.read(str(r.output)).dataset)) - set(r.signed_tags)
        if covered and r.location == "main":
            err_console.print(f"note: the signature of {src} does not cover "
                              f"{', '.join(rd.tag_str(t) for t in sorted(covered))}: the gate will not accept "
                              "it alone", style="yellow", markup=False)
    if failed:
        err_console.print(f"{len(failed)} of {len(pairs)} file(s) failed; the others are signed in {out}",
                          style="bold red", markup=False)
        raise SystemExit(failed[0])


def expand_inputs(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(file, path relative to its output root) for every input: a file stands for itself (its name),
    a folder for every file below it (in name order, hidden files skipped)."""
    out: list[tuple[Path, Path]] = []
    for p in paths:
        if p.is_dir():
            out.extend((f, f.relative_to(p)) for f in sorted(p.rglob("*"))
                       if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append((p, Path(p.name)))
    return out


def sign_targets(inputs: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs for `medsec sign IN... OUT`: one input file and OUT not a folder ->
    OUT is the signed copy; else OUT is a folder mirroring the inputs. Checked before anything is
    written: missing inputs, nothing to sign, two inputs with the same output."""
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise UnreadableFileError(f"no such file or folder: {', '.join(missing)}")
    if len(inputs) == 1 and inputs[0].is_file() and not out.is_dir():
        return [(inputs[0], out)]
    if out.exists() and not out.is_dir():
        raise IntegrityError(f"{out} is a file: with several inputs or a folder, OUT must be a folder")
    pairs = [(src, out / rel) for src, rel in expand_inputs(inputs)]
    if not pairs:
        raise IntegrityError(f"no file to sign in {', '.join(map(str, inputs))}")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst in seen:
            raise IntegrityError(f"{src} and {seen[dst]} would both be written to {dst}: sign them separately")
        seen[dst] = src
    return pairs


def verify(
    files: Annotated[list[Path], typer.Argument(help="DICOM files (or folders of them) to verify.")],
    trust: Annotated[Path, typer.Option(help="Trusted certificate file or folder of certificates.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    audit_log: Annotated[Path | None, typer.Option(help="Append one JSON line per file to this log.")] = None,
    require_timestamp: RequireTimestampOpt = False,
    tsa_trust: TsaTrustOpt = None,
) -> None:
    """Verify signatures; exit 0 only if every file has a valid trusted signature covering Pixel Data
    and the SOP/Study/Series Instance UIDs (exit codes: see docs/integrity.md)."""
    from medsec.integrity import rawdicom as rd
    from medsec.integrity.gate import Gate

    expanded = [f for f, _ in expand_inputs(files)]  # a folder stands for every file below it
    if not expanded:
        err_console.print(f"error: no file to verify in {', '.join(map(str, files))}", style="bold red", markup=False)
        raise SystemExit(EXIT_UNREADABLE_EMPTY)
    try:
        gate = Gate(trust, audit_log, require_timestamp=require_timestamp, tsa_trust=tsa_trust)
        verdicts = [gate(f) for f in expanded]
    except IntegrityError as e:
        raise _fail(e) from None
    if as_json:
        print(json.dumps([v.as_dict() for v in verdicts], indent=2))
    else:
        for v in verdicts:
            console.print(f"{'OK' if v.ok else 'REFUSED'} {v.file}: {v.reason} (exit {v.exit_code}) - {v.message}",
                          style="bold green" if v.ok else "bold red", markup=False)
            for s in v.signatures:
                tags = ", ".join(rd.tag_str(t) for t in s.signed_tags[:6])
                more = f" +{len(s.signed_tags) - 6} more" if len(s.signed_tags) > 6 else ""
                console.print(f"    signature {s.uid} in {s.location} data set: {s.status}: {s.reason}\n"
                              f"      signer {s.signer} | {s.key_algorithm} {s.mac} | time {s.datetime}\n"
                              f"      covers {tags}{more}; pixels+UIDs covered: {s.covers_pixels_and_uids}",
                              markup=False)
                if s.timestamp is not None:
                    console.print(f"      certified timestamp: {'valid' if s.timestamp['valid'] else 'INVALID'}: "
                                  f"{s.timestamp['reason']}", markup=False)
    failing = [v for v in verdicts if not v.ok]
    if failing:
        raise SystemExit(failing[0].exit_code)


def infer(
    files: Annotated[list[Path], typer.Argument(help="DICOM files to classify/segment.")],
    model: Annotated[Path, typer.Option(help="Victim checkpoint (medsec.models.load_checkpoint).")],
    require_signature: Annotated[bool, typer.Option("--require-signature/--no-require-signature",
                                                    help="Run the integrity gate first; refuse what fails.")] = False,
    trust: Annotated[Path | None, typer.Option(help="Trusted certificate or folder (with --require-signature).")] = None,
    audit_log: Annotated[Path, typer.Option(help="JSON-lines audit log of the gate's verdicts.")] = Path(
        "medsec-audit.jsonl"),
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    require_timestamp: RequireTimestampOpt = False,
    tsa_trust: TsaTrustOpt = None,
) -> None:
    """Predict on DICOM files; with --require-signature only signed, untampered files reach the model
    (with --require-timestamp only those whose signature also carries a valid certified timestamp)."""
    from medsec.errors import MedsecError
    from medsec.integrity.gate import Gate, RefusedError
    from medsec.integrity.infer import infer_file

    if require_signature and trust is None:
        raise typer.BadParameter("--require-signature needs --trust CERT_OR_DIR", param_hint="--trust")
    if (require_timestamp or tsa_trust is not None) and not require_signature:
        raise typer.BadParameter("--require-timestamp and --tsa-trust act on the signature gate: add "
                                 "--require-signature --trust CERT_OR_DIR", param_hint="--require-signature")
    try:
        from medsec.models import load_checkpoint  # type: ignore[attr-defined,import-not-found,unused-ignore]
    except ImportError as e:
        raise MedsecError(f"medsec.models is not available in this installation ({e})") from e
    try:
        gate = (Gate(trust, audit_log, require_timestamp=require_timestamp, tsa_trust=tsa_trust)
                if require_signature and trust is not None else None)
    except IntegrityError as e:
        raise _fail(e) from None
    if gate is None:
        err_console.print("warning: signatures are not checked (use --require-signature --trust ...)",
                          style="yellow", markup=False)
    net, meta = load_checkpoint(model)
    results, first_code = [], 0
    for f in files:
        try:
            r = infer_file(f, net, meta, gate)
        except RefusedError as e:
            v = e.verdict
            results.append({"file": str(f), "refused": True, "reason": v.reason, "exit_code": v.exit_code,
                            "message": v.message})
            err_console.print(f"REFUSED {f}: {v.reason} (exit {v.exit_code}) - {v.message}; "
                              f"logged to {audit_log}", style="bold red", markup=False)
            first_code = first_code or v.exit_code
            continue
        except IntegrityError as e:  # unreadable pixels without a gate
            err_console.print(f"error: {e}", style="bold red", markup=False)
            results.append({"file": str(f), "refused": True, "reason": "unreadable", "exit_code": e.exit_code,
                            "message": str(e)})
            first_code = first_code or e.exit_code
            continue
        results.append(r)
        if not as_json:
            if r["task"] == "classification":
                top = ", ".join(f"{k} {p:.3f}" for k, p in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
                console.print(f"{f}: {r['prediction']} ({top}) [signature: {r['signature']['verdict']}]", markup=False)
            else:
                console.print(f"{f}: mask fractions {r['mask_fraction']} "
                              f"[signature: {r['signature']['verdict']}]", markup=False)
    if as_json:
        print(json.dumps(results, indent=2))
    if first_code:
        raise SystemExit(first_code)


def _tls_config(cert: Path | None, key: Path | None, trust: Path | None, password: str | None) -> TLSConfig | None:
    """The node's TLSConfig from serve's --tls-* options (all three or none), checked now."""
    from medsec.integrity.tls import TLSConfig

    given = [o for o, v in (("--tls-cert", cert), ("--tls-key", key), ("--tls-trust", trust)) if v is not None]
    if not given:
        return None
    if len(given) < 3:
        missing = sorted({"--tls-cert", "--tls-key", "--tls-trust"} - set(given))
        raise typer.BadParameter(f"TLS needs --tls-cert, --tls-key and --tls-trust together (missing "
                                 f"{', '.join(missing)})", param_hint=missing[0])
    assert cert is not None and key is not None and trust is not None
    cfg = TLSConfig(cert, key, trust, password)
    cfg.check("server")
    return cfg


def serve(
    trust: Annotated[Path, typer.Option(help="Trusted signer certificate or folder (for DICOM signatures).")],
    port: Annotated[int, typer.Option(help="DICOM port to listen on.")] = 11112,
    host: Annotated[str, typer.Option(help="Address to bind (default loopback only).")] = "127.0.0.1",
    ae_title: Annotated[str, typer.Option(help="This node's AE title.")] = "MEDSEC",
    store: Annotated[Path, typer.Option(help="Folder for accepted instances (and outbox/ when forwarding).")] = Path(
        "medsec-store"),
    quarantine: Annotated[Path, typer.Option(help="Folder for refused instances (+ verdict JSON).")] = Path(
        "medsec-quarantine"),
    model: Annotated[Path | None, typer.Option(help="Checkpoint to run on every accepted instance.")] = None,
    audit_log: Annotated[Path, typer.Option(help="JSON-lines audit log.")] = Path("medsec-audit.jsonl"),
    acknowledge_refused: Annotated[bool, typer.Option(help="Answer 0x0000 even for quarantined instances.")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="This node's TLS certificate (PEM); with --tls-key and "
                                                  "--tls-trust the node accepts TLS associations only.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key of --tls-cert (PEM).")] = None,
    tls_trust: Annotated[Path | None, typer.Option(help="Certificates (or CAs) of the peers allowed to connect "
                                                   "(modalities) and of the archive: a file or folder.")] = None,
    tls_password: Annotated[str | None, typer.Option(envvar="MEDSEC_TLS_KEY_PASSWORD",
                                                     help="Password of --tls-key (or $MEDSEC_TLS_KEY_PASSWORD).")] = None,
    forward_to: Annotated[str | None, typer.Option(help="Archive to forward accepted instances to: AET@host:port "
                                                   "(e.g. ORTHANC@127.0.0.1:4242).")] = None,
    forward_tls: Annotated[bool | None, typer.Option("--forward-tls/--forward-plain", help="Forward over TLS "
                                                     "(default: when the node has --tls-cert).")] = None,
    require_timestamp: RequireTimestampOpt = False,
    tsa_trust: TsaTrustOpt = None,
) -> None:
    """Run the medsec DICOM node: receive (C-STORE), verify signatures, quarantine what fails, store the rest
    durably, forward it to the archive and run inference on it (Ctrl-C stops it; see docs/integrity.md)."""
    from medsec.errors import MedsecError
    from medsec.integrity.gate import Gate
    from medsec.integrity.infer import infer_bytes
    from medsec.integrity.node import Archive, ArchiveUnavailable, Forwarder
    from medsec.integrity.scp import GatedStorageSCP

    try:
        gate = Gate(trust, audit_log, require_timestamp=require_timestamp, tsa_trust=tsa_trust)
        tls = _tls_config(tls_cert, tls_key, tls_trust, tls_password)
    except IntegrityError as e:
        raise _fail(e) from None
    use_tls_out = (tls is not None) if forward_tls is None else forward_tls
    if use_tls_out and tls is None:
        raise typer.BadParameter("--forward-tls needs the node's --tls-cert, --tls-key and --tls-trust",
                                 param_hint="--forward-tls")
    forwarder = None
    if forward_to is not None:
        archive = Archive.parse(forward_to)
        try:
            forwarder = Forwarder(store, archive, calling_ae_title=ae_title, tls=tls if use_tls_out else None,
                                  audit=gate.audit.append if gate.audit is not None else None)
        except IntegrityError as e:
            raise _fail(e) from None
        try:
            forwarder.echo()
            console.print(f"archive {archive} answers (C-ECHO{' over TLS' if use_tls_out else ''})", markup=False)
        except ArchiveUnavailable as e:
            err_console.print(f"warning: {e}; accepted instances wait in {forwarder.outbox} and are forwarded "
                              "when it answers", style="yellow", markup=False)
    on_accept = None
    if model is not None:
        try:
            from medsec.models import load_checkpoint  # type: ignore[attr-defined,import-not-found,unused-ignore]
        except ImportError as e:
            raise MedsecError(f"medsec.models is not available in this installation ({e})") from e
        net, meta = load_checkpoint(model)

        def on_accept(data: bytes, path: Path, verdict: object) -> dict:  # type: ignore[type-arg]
            r = infer_bytes(data, str(path), net, meta, None)  # these exact bytes were gated already
            console.print(f"{path}: {r.get('prediction', r.get('mask_fraction'))}", markup=False)
            return r

    scp = GatedStorageSCP(gate, store, quarantine, ae_title=ae_title, on_accept=on_accept,
                          refuse=not acknowledge_refused, forwarder=forwarder,
                          ssl_context=tls.server_context() if tls is not None else None)
    mode = f"TLS only (1.2+, BCP 195, client certificates from {tls.trust})" if tls is not None else "plain TCP"
    pending = len(forwarder.pending()) if forwarder is not None else 0
    ready = (f"listening on {host}:{port} as {ae_title}, {mode}; signer trust {trust}"
             + ("; certified timestamps required" if require_timestamp else "") + f"; audit log {audit_log}"
             + (f"; forwarding to {forward_to} ({pending} pending)" if forwarder is not None else ""))
    if forwarder is not None:
        forwarder.start()
    try:  # the line is printed once the port listens: a sender that waits for it is never refused
        scp.start(host, port, block=True, listening=lambda: console.print(ready, markup=False))
    except OSError as e:
        raise MedsecError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    except KeyboardInterrupt:
        pass
    finally:
        if forwarder is not None:
            forwarder.stop()


def register(app: typer.Typer) -> None:
    """Add keygen, sign, verify (and infer, serve) to `app`."""
    app.command("keygen")(keygen)
    app.command("sign")(sign)
    app.command("verify")(verify)
    app.command("infer")(infer)
    app.command("serve")(serve)
