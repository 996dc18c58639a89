"""Gated inference on DICOM files: the model sees pixels only after the integrity gate accepted the file.

The file is read ONCE: the gate checks those bytes and the pixels are decoded from the same bytes, so a
file swapped between check and use (time-of-check/time-of-use) cannot reach the model.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from medsec.errors import MedsecError
from medsec.integrity.errors import UnreadableFileError
from medsec.integrity.gate import Gate, RefusedError, Verdict


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, or UnreadableFileError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UnreadableFileError(f"cannot read {path}: {e.strerror or e}") from e


def decode_pixels(data: bytes, source: str) -> tuple[np.ndarray, int]:
    """(pixels as (C, H, W), bits stored) from Part-10 bytes; the first frame of a multi-frame image.
    MONOCHROME1 (white = 0) is inverted so that every image reaches the model as MONOCHROME2."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        arr = np.asarray(ds.pixel_array)
        bits = int(getattr(ds, "BitsStored", 8))
        spp = int(getattr(ds, "SamplesPerPixel", 1))
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except Exception as e:  # pydicom raises many kinds for unreadable pixel data
        raise UnreadableFileError(f"{source}: cannot decode pixel data ({e})") from e
    if frames > 1:
        arr = arr[0]
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        if np.issubdtype(arr.dtype, np.unsignedinteger):
            arr = (2 ** min(bits, 8 * arr.dtype.itemsize) - 1 - arr.astype(np.int64)).astype(arr.dtype)
        else:
            arr = arr.max() + arr.min() - arr
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1) if spp > 1 else arr
    return arr, bits


def to_model_input(pixels: np.ndarray, bits: int, image_size: int | tuple[int, int], channels: int) -> Any:
    """A (1, C, H, W) float tensor in [0, 1] at the model's size and channel count.

    Scaling: unsigned data divided by 2**BitsStored - 1 (uint8 -> /255); signed or float data min-max
    scaled per image (there is no fixed full scale). Channels: RGB -> 1 by the mean, 1 -> 3 by repeating.
    Resizing: bilinear with antialiasing (torch)."""
    import torch
    import torch.nn.functional as F

    x = pixels.astype(np.float32)
    if np.issubdtype(pixels.dtype, np.unsignedinteger):
        x /= float(2 ** min(bits, 8 * pixels.dtype.itemsize) - 1)
    else:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    x = np.clip(x, 0.0, 1.0)
    t = torch.from_numpy(x)[None]
    if t.shape[1] != channels:
        if channels == 1:
            t = t.mean(dim=1, keepdim=True)
        elif t.shape[1] == 1:
            t = t.repeat(1, channels, 1, 1)
        else:
            raise MedsecError(f"cannot map {t.shape[1]} image channels onto a {channels}-channel model")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return t.clamp(0.0, 1.0)


def predict(model: Any, meta: dict[str, Any], x: Any) -> dict[str, Any]:
    """Run the model on one prepared image: class probabilities, or per-class mask fractions."""
    import torch

    names = list(meta.get("class_names") or [])
    model.eval()
    with torch.no_grad():
        out = model(x)
    if meta.get("task", "classification") == "segmentation":
        k = out.shape[1]
        mask = out.argmax(dim=1)[0] if k > 1 else (out[0, 0] > 0).long()
        counts = [(mask == c).float().mean().item() for c in range(max(k, 2))]
        labels = names if len(names) == len(counts) else [str(c) for c in range(len(counts))]
        return {"task": "segmentation", "mask_fraction": dict(zip(labels, counts, strict=True))}
    probs = torch.softmax(out, dim=1)[0]
    idx = int(probs.argmax())
    labels = names if len(names) == probs.numel() else [str(i) for i in range(probs.numel())]
    return {"task": "classification", "prediction": labels[idx],
            "probabilities": {n: float(p) for n, p in zip(labels, probs.tolist(), strict=True)}}


def infer_bytes(data: bytes, source: str, model: Any, meta: dict[str, Any], gate: Gate | None) -> dict[str, Any]:
    """Gate the bytes (when `gate` is given), then decode the same bytes and predict."""
    verdict: Verdict | None = None
    if gate is not None:
        verdict = gate.check_bytes(data, source)
        if not verdict.ok:
            raise RefusedError(verdict)
    pixels, bits = decode_pixels(data, source)
    size: int | tuple[int, int] = meta["image_size"] if meta.get("image_size") else int(pixels.shape[-1])
    channels = int(meta["channels"]) if meta.get("channels") else int(pixels.shape[0])
    x = to_model_input(pixels, bits, size, channels)
    result = predict(model, meta, x)
    result["file"] = source
    result["signature"] = (
        {"verdict": "accepted", "signer": verdict.signer, "message": verdict.message}
        if verdict is not None else {"verdict": "not checked"}
    )
    return result


def infer_file(path: str | Path, model: Any, meta: dict[str, Any], gate: Gate | None) -> dict[str, Any]:
    """Read the file once, gate it (when `gate` is given), then predict. Raises RefusedError for a refused
    file (the gate's audit log records it)."""
    return infer_bytes(read_bytes(path), str(path), model, meta, gate)
