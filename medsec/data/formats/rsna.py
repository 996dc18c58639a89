"""RSNA Pneumonia Detection Challenge -> `rsna` (Normal vs. Pneumonia).

Layout (as Kaggle's rsna-pneumonia-detection-challenge.zip unpacks)::

    stage_2_train_labels.csv     patientId,x,y,width,height,Target (one row per box; Target 0 rows have no box)
    stage_2_train_images/<patientId>.dcm

(stage_1_* names are accepted too.) An image's label is the maximum Target over its rows; extra["boxes"]
counts its boxes. Only the labelled training images are used (the challenge's test labels were never
published): they are split by patientId, 70/10/20 by default. DICOM pixels: the modality LUT is
applied, MONOCHROME1 is inverted, 8-bit data is kept as is and deeper data is mapped through the
file's first VOI window [centre - width/2, centre + width/2] (or the image's min-max when there is
none) to 0..255, then resized to size².
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsec.data.base import MedicalDataset
from medsec.data.formats.common import (
    Record,
    finish,
    fit_image,
    group_split,
    locate,
    read_csv,
    require_dir,
    to_uint8,
    warn_skipped,
)
from medsec.data.formats.infos import real_info
from medsec.errors import DataError

COLUMNS = ("patientId", "Target")
STAGES = ("stage_2", "stage_1")
EXPECT = ("stage_2_train_labels.csv and stage_2_train_images/*.dcm (RSNA Pneumonia Detection Challenge, "
          "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge)")


def _stage(p: Path) -> str | None:
    for st in STAGES:
        if (p / f"{st}_train_labels.csv").is_file():
            return st
    return None


def _first(v: Any) -> float:
    """The first value of a possibly multi-valued DICOM element, as a float."""
    from pydicom.multival import MultiValue

    return float(v[0] if isinstance(v, list | tuple | MultiValue) else v)


def dicom_to_uint8(path: Path, what: str) -> np.ndarray:
    """Read a DICOM image as a 2-D (or H, W, 3) uint8 array (see the module doc for the intensity rule)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except FileNotFoundError as e:
        raise DataError(f"{what}: DICOM file {path} does not exist") from e
    except (InvalidDicomError, OSError, ValueError, AttributeError, RuntimeError, NotImplementedError) as e:
        raise DataError(f"{what}: cannot read DICOM pixels from {path}: {e}") from e
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:  # multi-frame: the first frame
        arr = arr[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3:  # colour (pydicom converts YBR to RGB)
        return arr.astype(np.uint8) if arr.dtype == np.uint8 else to_uint8(arr)
    if arr.dtype == np.uint8 and "RescaleSlope" not in ds and "WindowCenter" not in ds:
        out = arr
    else:
        vals = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            out = to_uint8(vals, centre - width / 2, centre + width / 2)
        else:
            out = to_uint8(vals)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out, dtype=np.uint8)


def read_rsna(name: str, root: Path, *, size: int, seed: int,
              fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), fit: str = "squash",
              max_images: int | None = None, workers: int | None = None, cache: bool = True,
              cache_dir: str | Path | None = None
              ) -> MedicalDataset:
    """Read the RSNA pneumonia training set as `rsna`, split by patient with `fractions`."""
    what = name
    folder = locate(root, lambda p: _stage(p) is not None,
                    ("rsna-pneumonia-detection-challenge", "rsna", "RSNA"), what, EXPECT)
    stage = _stage(folder)
    assert stage is not None
    csv_path = folder / f"{stage}_train_labels.csv"
    img_dir = folder / f"{stage}_train_images"
    require_dir(img_dir, what, "the training DICOMs <patientId>.dcm")
    rows = read_csv(csv_path, COLUMNS, what)
    target: dict[str, int] = {}
    boxes: dict[str, int] = {}
    for i, r in enumerate(rows, start=2):
        pid = r["patientId"]
        try:
            t = int(float(r["Target"]))
        except ValueError as e:
            raise DataError(f"{what}: {csv_path} line {i}: Target {r['Target']!r} is not 0 or 1") from e
        if t not in (0, 1):
            raise DataError(f"{what}: {csv_path} line {i}: Target {t} is not 0 or 1")
        target[pid] = max(target.get(pid, 0), t)
        boxes[pid] = boxes.get(pid, 0) + t
    with os.scandir(img_dir) as it:
        on_disk = {e.name[:-4]: Path(e.path) for e in it if e.name.lower().endswith(".dcm")}
    missing = sorted(p for p in target if p not in on_disk)
    warn_skipped(what, len(missing), f"patients in {csv_path.name} without {img_dir.name}/<patientId>.dcm",
                 missing)
    pids = sorted(p for p in target if p in on_disk)
    parts = group_split(pids, fractions, seed, "rsna-split")
    records = [Record(split=s, files=(on_disk[pids[i]],), target=target[pids[i]], patient=pids[i],
                      extra={"boxes": boxes[pids[i]]})
               for s, idx in zip(("train", "val", "test"), parts, strict=True) for i in idx]
    info = real_info(name)

    def decode(r: Record) -> tuple[np.ndarray, None]:
        return fit_image(Image.fromarray(dicom_to_uint8(r.files[0], what)), size, 1, fit), None

    hints = {s: f"patients of {csv_path.name} with a DICOM in {img_dir}" for s in ("train", "val", "test")}
    opts = {"fractions": list(fractions), "fit": fit}
    return finish(info, folder, records, decode, size=size, seed=seed, options=opts,
                  index_files=[csv_path], hints=hints, max_images=max_images,
                  workers=workers, cache=cache, cache_dir=cache_dir)
