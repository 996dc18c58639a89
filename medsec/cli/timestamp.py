"""`medsec timestamp request|insert`: certified timestamps (RFC 3161) on DICOM signatures, as dcmsign's
`+ts` (write a timestamp query for a signature) and `+t` (insert the TSA's response) do."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medsec.cli.integrity import _fail, console
from medsec.integrity.errors import IntegrityError, TimestampError

UidOpt = Annotated[str | None, typer.Option("--uid", help="Digital Signature UID of the signature.")]
UidFileOpt = Annotated[Path | None, typer.Option("--uid-file", help="dcmsign's UID file (a DICOM data set "
                                                 "holding Digital Signature UID (0400,0100)).")]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TimestampError(f"cannot read {what} {path}: {e.strerror or e}") from e


def read_uid_file(path: Path) -> str:
    """The Digital Signature UID from a dcmsign UID file (with or without file meta, any VR encoding)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        uid = dcmread(path, force=True).get("DigitalSignatureUID")
    except (OSError, InvalidDicomError, ValueError, EOFError) as e:
        raise TimestampError(f"cannot read UID file {path} ({e})") from e
    if not uid:
        raise TimestampError(f"UID file {path} holds no Digital Signature UID (0400,0100)")
    return str(uid)


def write_uid_file(path: Path, uid: str) -> None:
    """A UID file as dcmsign writes (Digital Signature UID, implicit VR little endian), atomically."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset

    from medsec.paths import atomic_path

    ds = Dataset()
    ds.DigitalSignatureUID = uid
    try:
        with atomic_path(path) as tmp:
            dcmwrite(tmp, ds, implicit_vr=True, little_endian=True)
    except OSError as e:
        raise TimestampError(f"cannot write {path}: {e.strerror or e}") from e


def _uid(uid: str | None, uid_file: Path | None) -> str | None:
    if uid and uid_file:
        raise typer.BadParameter("give --uid or --uid-file, not both", param_hint="--uid")
    return read_uid_file(uid_file) if uid_file else uid


def request(
    signed: Annotated[Path, typer.Argument(help="Signed DICOM file.")],
    tsq: Annotated[Path, typer.Argument(help="Timestamp query to write (DER TimeStampReq, .tsq).")],
    uid: UidOpt = None,
    uid_file: Annotated[Path | None, typer.Option("--uid-file", help="Also write dcmsign's UID file here "
                                                  "(for `dcmsign +t TSQ TSR UIDFILE`).")] = None,
    mac: Annotated[str, typer.Option(help="Imprint hash: sha256, sha384, sha512, sha1, ripemd160.")] = "sha256",
    nonce: Annotated[bool, typer.Option("--nonce/--no-nonce", help="Include a random nonce.")] = True,
    cert_request: Annotated[bool, typer.Option("--cert-request/--no-cert-request",
                                               help="Ask the TSA to include its certificate.")] = True,
    policy: Annotated[str | None, typer.Option(help="TSA policy OID to request.")] = None,
) -> None:
    """Write an RFC 3161 timestamp query for a signature (default: the newest of the main data set);
    send it to a TSA (e.g. `curl --data-binary @Q.tsq -H 'Content-Type: application/timestamp-query'`)."""
    from medsec.integrity.signature import timestamp_request
    from medsec.paths import write_bytes_atomic

    try:
        der, sig_uid = timestamp_request(signed, uid=uid, mac=mac, nonce=nonce, cert_req=cert_request,
                                         policy=policy)
        try:
            write_bytes_atomic(tsq, der)
        except OSError as e:
            raise TimestampError(f"cannot write {tsq}: {e.strerror or e}") from e
        if uid_file is not None:
            write_uid_file(uid_file, sig_uid)
    except IntegrityError as e:
        raise _fail(e) from None
    console.print(f"timestamp query {tsq} for signature {sig_uid} of {signed}"
                  f"{f'; UID file {uid_file}' if uid_file else ''}", markup=False)


def insert(
    infile: Annotated[Path, typer.Argument(help="Signed DICOM file.")],
    outfile: Annotated[Path, typer.Argument(help="Copy to write with the timestamp (may equal IN).")],
    tsr: Annotated[Path, typer.Option("--tsr", help="The TSA's timestamp response (DER TimeStampResp, .tsr).")],
    tsq: Annotated[Path | None, typer.Option("--tsq", help="The query it answers: checked to match "
                                             "(imprint, nonce, policy) and used to find the signature.")] = None,
    uid: UidOpt = None,
    uid_file: UidFileOpt = None,
) -> None:
    """Insert a TSA's response into its signature as a Certified Timestamp (CMS_TSP), like `dcmsign +t`.
    The signature is found by --uid/--uid-file, else by the query's (or the response's) imprint."""
    from medsec.integrity.signature import insert_timestamp

    try:
        r = insert_timestamp(infile, outfile, _read(tsr, "timestamp response"),
                             request=_read(tsq, "timestamp query") if tsq else None, uid=_uid(uid, uid_file))
    except IntegrityError as e:
        raise _fail(e) from None
    console.print(f"timestamped {infile} -> {r.output}: signature {r.uid} ({r.location} data set), "
                  f"time {r.time}", markup=False)


def register(app: typer.Typer) -> None:
    """Add the `timestamp` command group (request, insert) to `app`."""
    group = typer.Typer(help="Certified timestamps (RFC 3161) on DICOM signatures, interoperable with dcmsign.",
                        no_args_is_help=True)
    group.command("request")(request)
    group.command("insert")(insert)
    app.add_typer(group, name="timestamp")
