"""The countermeasure in action, for the security report: adversarial pixels planted in signed DICOM files.

An attacker inside the PACS (Levy et al.'s threat) can rewrite stored files but holds no signing key. The
demo writes each clean image into a DICOM file signed where it is made, then, in copies, overwrites the
Pixel Data bytes in place with the adversarial image (same size, every other byte kept, the signature left
as it was) and runs the integrity gate on every file. Untouched files must all pass; replaced ones must all
be refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medsec.errors import MedsecError
from medsec.integrity import rawdicom as rd
from medsec.integrity.gate import Gate
from medsec.integrity.keys import keygen, load_certificate, load_private_key
from medsec.integrity.samples import write_image_dicom
from medsec.integrity.signature import sign_file


def _as_uint8(images: np.ndarray, name: str) -> np.ndarray:
    """uint8 (N, C, H, W); float input in [0, 1] is rounded to 8 bits as a DICOM writer would."""
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise MedsecError(f"{name} must be (N, C, H, W) with C 1 or 3; got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        if a.size and (a.min() < 0 or a.max() > 1):
            raise MedsecError(f"{name}: float images must lie in [0, 1]")
        return np.round(a * 255.0).astype(np.uint8)
    raise MedsecError(f"{name} must be uint8 or float in [0, 1]; got {a.dtype}")


def replace_pixels_in_place(path: str | Path, pixels: np.ndarray, out: str | Path) -> Path:
    """Copy `path` to `out` with the native Pixel Data value overwritten by `pixels` (same byte count),
    as an attacker editing a stored file would: no other byte changes."""
    df = rd.read(str(path))
    el = df.find(rd.PIXEL_DATA)
    if el is None or el.fragments is not None or el.items is not None:
        raise MedsecError(f"{path}: in-place replacement needs native (uncompressed) Pixel Data")
    arr = np.asarray(pixels)
    new = (arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).astype(np.uint8).tobytes()
    if len(new) > el.length or el.length - len(new) > 1:
        raise MedsecError(f"{path}: replacement has {len(new)} bytes, Pixel Data holds {el.length}")
    data = bytearray(Path(path).read_bytes())
    data[el.value_offset : el.value_offset + len(new)] = new
    Path(out).write_bytes(bytes(data))
    return Path(out)


def tamper_demo(
    clean: np.ndarray,
    adversarial: np.ndarray,
    workdir: str | Path,
    key: str | Path | None = None,
    cert: str | Path | None = None,
    trust: str | Path | None = None,
    *,
    password: str | None = None,
    mac: str = "sha256",
) -> dict[str, Any]:
    """Sign the clean images as DICOM, plant the adversarial ones into copies, gate them all.

    `clean`, `adversarial`: (N, C, H, W) uint8 (or float in [0, 1]). Without key/cert/trust a throwaway
    RSA signer is made under `workdir/keys`. Returns counts and per-file verdicts; images the attack left
    unchanged are counted apart (identical bytes cannot and need not be refused)."""
    c8, a8 = _as_uint8(clean, "clean"), _as_uint8(adversarial, "adversarial")
    if c8.shape != a8.shape:
        raise MedsecError(f"clean {c8.shape} and adversarial {a8.shape} must have the same shape")
    work = Path(workdir)
    if (key is None) != (cert is None):
        raise MedsecError("tamper_demo: give both key and cert, or neither")
    if key is None or cert is None:
        # the demo's own throwaway signer: a rerun into the same folder replaces it (and its trust store)
        shutil.rmtree(work / "keys", ignore_errors=True)
        k = keygen(work / "keys", name="modality", common_name="Modality signer (tamper demo)")
        key, cert, trust = k.key, k.cert, k.trust_dir
    if trust is None:
        raise MedsecError("tamper_demo: a trust store is needed with your own key and cert")
    signing_key = load_private_key(key, password)  # once: loading (and checking) an RSA key costs ~0.1 s
    signing_cert = load_certificate(cert)
    for sub in ("signed", "replaced"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)
    audit = work / "audit.jsonl"
    audit.unlink(missing_ok=True)
    gate = Gate(trust, audit)
    from pydicom.uid import generate_uid

    study = generate_uid()  # one study, one series per run, as a modality would write them
    series = generate_uid()
    verdicts: list[dict[str, Any]] = []
    untouched_ok = replaced_refused = replaced_total = unchanged = 0
    for i, (c, a) in enumerate(zip(c8, a8, strict=True)):
        plain = write_image_dicom(work / "signed" / f"img{i:04d}.unsigned.dcm", c, instance_number=i + 1,
                                  study_uid=study, series_uid=series)
        signed = work / "signed" / f"img{i:04d}.dcm"
        sign_file(plain, signed, signing_key, signing_cert, mac=mac)
        plain.unlink()
        v = gate(signed)
        untouched_ok += v.ok
        verdicts.append({"file": str(signed), "kind": "untouched", "ok": v.ok, "reason": v.reason,
                         "exit_code": v.exit_code})
        if np.array_equal(c, a):
            unchanged += 1
            continue
        replaced = replace_pixels_in_place(signed, a, work / "replaced" / f"img{i:04d}.dcm")
        v = gate(replaced)
        replaced_total += 1
        replaced_refused += not v.ok
        verdicts.append({"file": str(replaced), "kind": "replaced", "ok": v.ok, "reason": v.reason,
                         "exit_code": v.exit_code,
                         "linf_change": int(np.abs(c.astype(int) - a.astype(int)).max())})
    n = len(c8)
    return {
        "n_images": n,
        "untouched_total": n,
        "untouched_passed": untouched_ok,
        "replaced_total": replaced_total,
        "replaced_refused": replaced_refused,
        "unchanged_by_attack": unchanged,
        "all_untouched_pass": untouched_ok == n,
        "all_replaced_refused": replaced_refused == replaced_total,
        "verdicts": verdicts,
        "audit_log": str(audit),
        "trust": str(trust),
    }


def tamper_demo_markdown(result: dict[str, Any]) -> str:
    """A short Markdown section for the security report from a `tamper_demo` result."""
    lines = [
        "## Signed DICOM against an attacker inside the PACS",
        "",
        "Each clean test image was written as a DICOM file and signed (PS3.15 digital signature, "
        "DCMTK-compatible); in copies, the Pixel Data was overwritten in place with the adversarial image, "
        "leaving the signature as it was. The integrity gate then checked every file.",
        "",
        "| files | gate result |",
        "|---|---|",
        f"| untouched signed files | {result['untouched_passed']} / {result['untouched_total']} accepted |",
        f"| files with adversarial pixels | {result['replaced_refused']} / {result['replaced_total']} refused |",
    ]
    if result.get("unchanged_by_attack"):
        lines.append(f"| images the attack left unchanged | {result['unchanged_by_attack']} (not counted) |")
    reasons: dict[str, int] = {}
    for v in result["verdicts"]:
        if v["kind"] == "replaced":
            reasons[v["reason"]] = reasons.get(v["reason"], 0) + 1
    lines += ["", "Refusal reasons: " + (", ".join(f"{k} {n}" for k, n in sorted(reasons.items())) or "none")
              + f". Audit log: `{result['audit_log']}`."]
    verdict = result["all_untouched_pass"] and result["all_replaced_refused"]
    lines += ["", "**The countermeasure holds.**" if verdict else "**The countermeasure did NOT hold on this run.**"]
    return "\n".join(lines) + "\n"
