"""LUNA16 -> `ct-slices`: 2-D axial CT crops around nodules, lung window, benign vs. malignant.

Layout (as https://luna16.grand-challenge.org/Download/ distributes it)::

    subset0/ ... subset9/   <seriesuid>.mhd + <seriesuid>.raw
    annotations.csv         seriesuid,coordX,coordY,coordZ,diameter_mm
    candidates.csv          seriesuid,coordX,coordY,coordZ,class   (not needed: candidates carry no malignancy)
    malignancy.csv          SUPPLIED BY YOU: seriesuid,coordX,coordY,coordZ,malignancy

LUNA16 itself has no benign/malignant labels. They come from the LIDC-IDRI radiologists' malignancy
ratings (1-5), which LUNA16 does not ship; you derive a CSV from LIDC-IDRI (e.g. with pylidc) with one
row per rating or per nodule, world coordinates in mm like annotations.csv. Rule (configurable): rows of
one series within `merge_mm` of each other are one nodule, its score is the mean rating; benign if
mean <= `benign_max` (2), malignant if mean >= `malignant_min` (4), anything between is excluded and
counted in the log. With `match_annotations` (default), only nodules within max(3 mm, diameter/2) of an
annotations.csv nodule are kept (so these are LUNA16's nodules) and extra["diameter_mm"] is filled.

Crop: the axial slice nearest the nodule centre, a `crop_mm` square centred on it sampled at size²
(bilinear, air -1024 HU outside the scan), HU mapped through the lung window (centre `window_center`
-600, width `window_width` 1500) to 0..255. Split by seriesuid, 70/10/20 by default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

from medsec.data.base import MedicalDataset
from medsec.data.formats.common import (
    Record,
    finish,
    group_split,
    locate,
    read_csv,
    to_uint8,
    warn_skipped,
)
from medsec.data.formats.infos import real_info
from medsec.data.formats.metaimage import MetaImage, read_header
from medsec.errors import DataError

COORDS = ("seriesuid", "coordX", "coordY", "coordZ")
EXPECT = ("subset*/<seriesuid>.mhd + .raw and annotations.csv (LUNA16, "
          "https://luna16.grand-challenge.org/Download/)")
MALIGNANCY_HELP = (
    "LUNA16 has no benign/malignant labels: supply a CSV with columns seriesuid,coordX,coordY,coordZ,"
    "malignancy (LIDC-IDRI radiologist ratings 1-5, one row per rating or per nodule, world mm like "
    "annotations.csv), saved as malignancy.csv in the LUNA16 folder or passed as the malignancy_csv "
    "option; see docs/datasets.md")


def _is_luna(p: Path) -> bool:
    return (p / "annotations.csv").is_file() or any(p.glob("subset*/*.mhd"))


def _num(row: dict[str, str], key: str, path: Path, line: int) -> float:
    try:
        return float(row[key])
    except ValueError as e:
        raise DataError(f"ct-slices: {path} line {line}: {key} = {row[key]!r} is not a number") from e


def _nodules(rows: list[dict[str, str]], column: str, path: Path, merge_mm: float
             ) -> list[tuple[str, np.ndarray, float, int]]:
    """Greedy clustering of rating rows per series: (seriesuid, centre mm, mean rating, n ratings)."""
    per_series: dict[str, list[tuple[np.ndarray, float]]] = {}
    for line, r in enumerate(rows, start=2):
        xyz = np.array([_num(r, c, path, line) for c in COORDS[1:]])
        per_series.setdefault(r["seriesuid"], []).append((xyz, _num(r, column, path, line)))
    out = []
    for uid in sorted(per_series):
        clusters: list[list[tuple[np.ndarray, float]]] = []
        for xyz, m in per_series[uid]:
            for c in clusters:
                if np.linalg.norm(np.mean([p for p, _ in c], axis=0) - xyz) <= merge_mm:
                    c.append((xyz, m))
                    break
            else:
                clusters.append([(xyz, m)])
        for c in clusters:
            out.append((uid, np.mean([p for p, _ in c], axis=0), float(np.mean([m for _, m in c])), len(c)))
    return out


def crop_axial(img: MetaImage, centre_xyz: np.ndarray, size: int, crop_mm: float,
               window: tuple[float, float]) -> np.ndarray:
    """A (1, size, size) uint8 crop of the axial slice nearest `centre_xyz`, in the lung window."""
    i, j, k = img.world_to_voxel(centre_xyz)
    vol = img.volume()
    kk = int(np.clip(round(k), 0, vol.shape[0] - 1))
    sl = np.asarray(vol[kk], dtype=np.float32)
    step = crop_mm / size
    offs = (np.arange(size) + 0.5 - size / 2) * step
    rows = j + offs[:, None] / img.spacing[1]
    cols = i + offs[None, :] / img.spacing[0]
    hu = map_coordinates(sl, [np.broadcast_to(rows, (size, size)), np.broadcast_to(cols, (size, size))],
                         order=1, mode="constant", cval=-1024.0)
    centre, width = window
    return to_uint8(hu, centre - width / 2, centre + width / 2)[None]


def read_luna16(name: str, root: Path, *, size: int, seed: int, malignancy_csv: str | Path | None = None,
                malignancy_column: str = "malignancy", benign_max: float = 2.0, malignant_min: float = 4.0,
                merge_mm: float = 5.0, match_annotations: bool = True, crop_mm: float = 64.0,
                window_center: float = -600.0, window_width: float = 1500.0,
                fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), max_images: int | None = None,
                workers: int | None = None,
                cache: bool = True, cache_dir: str | Path | None = None) -> MedicalDataset:
    """Read LUNA16 nodules as `ct-slices` with benign/malignant labels from a malignancy CSV (module doc)."""
    what = name
    if not benign_max < malignant_min:
        raise DataError(f"{what}: benign_max ({benign_max}) must be below malignant_min ({malignant_min})")
    folder = locate(root, _is_luna, ("LUNA16", "luna16", "luna"), what, EXPECT)
    if malignancy_csv is None:
        mpath = folder / "malignancy.csv"
        if not mpath.is_file():
            raise DataError(f"{what}: no malignancy labels ({mpath} does not exist). {MALIGNANCY_HELP}")
    else:
        mpath = Path(malignancy_csv).expanduser()
        mpath = mpath if mpath.is_absolute() else folder / mpath
    rows = read_csv(mpath, (*COORDS, malignancy_column), what)
    nodules = _nodules(rows, malignancy_column, mpath, merge_mm)

    ann_path = folder / "annotations.csv"
    ann: dict[str, list[tuple[np.ndarray, float]]] = {}
    if match_annotations:
        if not ann_path.is_file():
            raise DataError(f"{what}: missing file {ann_path} (LUNA16 nodule annotations, needed to match "
                            f"malignancy rows to LUNA16 nodules; or set match_annotations to false)")
        for line, r in enumerate(read_csv(ann_path, (*COORDS, "diameter_mm"), what), start=2):
            xyz = np.array([_num(r, c, ann_path, line) for c in COORDS[1:]])
            ann.setdefault(r["seriesuid"], []).append((xyz, _num(r, "diameter_mm", ann_path, line)))

    volumes = {p.stem: p for p in sorted(folder.glob("subset*/*.mhd"))}
    if not volumes:
        raise DataError(f"{what}: no CT volumes in {folder}/subset*/ (expected <seriesuid>.mhd + .raw)")
    headers: dict[str, MetaImage] = {}
    records: list[Record] = []
    no_volume, unmatched, ambiguous, outside = [], [], [], []
    for uid, xyz, score, n in nodules:
        if uid not in volumes:
            no_volume.append(uid)
            continue
        diameter = float("nan")
        if match_annotations:
            best = [(np.linalg.norm(a - xyz), d) for a, d in ann.get(uid, [])
                    if np.linalg.norm(a - xyz) <= max(3.0, d / 2)]
            if not best:
                unmatched.append(uid)
                continue
            diameter = min(best)[1]
        if benign_max < score < malignant_min:
            ambiguous.append(f"{uid}@{score:.2f}")
            continue
        if uid not in headers:
            headers[uid] = read_header(volumes[uid])
        ijk = headers[uid].world_to_voxel(xyz)
        if np.any(ijk < -0.5) or np.any(ijk > np.asarray(headers[uid].dims) - 0.5):
            outside.append(uid)
            continue
        records.append(Record(split="train", files=(volumes[uid], headers[uid].data_file),
                              target=int(score >= malignant_min), patient=uid,
                              extra={"malignancy": score, "ratings": n, "diameter_mm": diameter},
                              meta={"xyz": xyz}))
    warn_skipped(what, len(no_volume), "nodules whose series has no subset*/<seriesuid>.mhd", no_volume)
    warn_skipped(what, len(unmatched), f"nodules not near any {ann_path.name} nodule", unmatched)
    warn_skipped(what, len(ambiguous), f"nodules with mean malignancy between {benign_max} and "
                 f"{malignant_min} (neither benign nor malignant)", ambiguous)
    warn_skipped(what, len(outside), "nodules outside their CT volume", outside)
    parts = group_split([r.patient or "" for r in records], fractions, seed, "luna16-split")
    for s, idx in zip(("train", "val", "test"), parts, strict=True):
        for i in idx:
            records[i].split = s
    info = real_info(name)

    def decode(r: Record) -> tuple[np.ndarray, None]:
        hdr = headers[r.patient or ""]
        return crop_axial(hdr, r.meta["xyz"], size, crop_mm, (window_center, window_width)), None

    hints = {s: f"nodules of {mpath.name} with a volume under {folder}/subset*/" for s in ("train", "val", "test")}
    opts = {"malignancy_csv": str(mpath), "column": malignancy_column, "benign_max": benign_max,
            "malignant_min": malignant_min, "merge_mm": merge_mm, "match": match_annotations,
            "crop_mm": crop_mm, "window": [window_center, window_width], "fractions": list(fractions)}
    return finish(info, folder, records, decode, size=size, seed=seed, options=opts,
                  index_files=[mpath, *([ann_path] if match_annotations else [])], hints=hints, max_images=max_images,
                  workers=workers, cache=cache, cache_dir=cache_dir)
