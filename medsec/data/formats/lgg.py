"""LGG MRI segmentation (Buda et al., TCGA lower-grade glioma, Kaggle "lgg-mri-segmentation") -> `brain-mri`.

Layout (as kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation unpacks)::

    kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif        3-channel slice
    kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1_mask.tif   tumour mask (0/255)

Each slice tif holds three MR sequences as RGB: pre-contrast, FLAIR, post-contrast. medsec keeps one
channel, FLAIR by default (`channel=1`: the sequence the masks were drawn on); a grayscale tif is used
as is. Slices and masks are resized to size² (mask: bilinear then threshold at half). The patient is
the folder name without its date (TCGA_CS_4941); the split is by patient, 70/10/20 by default.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from medsec.data.base import MedicalDataset
from medsec.data.formats.common import (
    Record,
    finish,
    fit_image,
    fit_mask,
    group_split,
    locate,
    open_image,
    warn_skipped,
)
from medsec.data.formats.infos import real_info
from medsec.errors import DataError

SLICE = re.compile(r"^(?P<case>.+)_(?P<n>\d+)\.tiff?$", re.IGNORECASE)
EXPECT = ("kaggle_3m/TCGA_*/TCGA_*_<n>.tif with TCGA_*_<n>_mask.tif (LGG MRI segmentation, "
          "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation)")


def _is_lgg(p: Path) -> bool:
    return any(c.is_dir() and c.name.startswith("TCGA_") for c in p.glob("TCGA_*"))


def patient_of(case: str) -> str:
    """TCGA_CS_4941_19960909 -> TCGA_CS_4941 (a patient may have several dated sessions)."""
    parts = case.split("_")
    return "_".join(parts[:3]) if len(parts) >= 3 else case


def read_lgg(name: str, root: Path, *, size: int, seed: int, channel: int = 1, lesion_only: bool = False,
             fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), fit: str = "squash",
             max_images: int | None = None, workers: int | None = None, cache: bool = True,
             cache_dir: str | Path | None = None
             ) -> MedicalDataset:
    """Read the LGG FLAIR slices and masks as `brain-mri`; `lesion_only` keeps only slices with tumour."""
    what = name
    if channel not in (0, 1, 2):
        raise DataError(f"{what}: channel must be 0 (pre-contrast), 1 (FLAIR) or 2 (post-contrast), got {channel}")
    folder = locate(root, _is_lgg, ("kaggle_3m", "lgg-mri-segmentation", "lgg"), what, EXPECT)
    records: list[Record] = []
    no_mask: list[Path] = []
    for case in sorted(d for d in folder.glob("TCGA_*") if d.is_dir()):
        for f in sorted(case.iterdir()):
            m = SLICE.match(f.name)
            if not m or f.stem.lower().endswith("_mask"):
                continue
            mask = f.with_name(f"{f.stem}_mask{f.suffix}")
            if not mask.is_file():
                no_mask.append(f)
                continue
            records.append(Record(split="train", files=(f, mask), patient=patient_of(case.name),
                                  extra={"slice": int(m.group("n"))}))
    warn_skipped(what, len(no_mask), "slices without a <name>_mask.tif", no_mask)
    if not records:
        raise DataError(f"{what}: no slice/mask pairs under {folder}/TCGA_*/ (expected {EXPECT})")
    if lesion_only:
        kept = [r for r in records if np.asarray(open_image(r.files[1], what)).any()]
        warn_skipped(what, len(records) - len(kept), "slices without lesion (lesion_only)")
        records = kept
    parts = group_split([r.patient or "" for r in records], fractions, seed, "lgg-split")
    for s, idx in zip(("train", "val", "test"), parts, strict=True):
        for i in idx:
            records[i].split = s
    info = real_info(name)

    def decode(r: Record) -> tuple[np.ndarray, np.ndarray]:
        img = open_image(r.files[0], what)
        a = np.asarray(img)
        if a.ndim == 3:
            a = a[..., min(channel, a.shape[-1] - 1)]
        m = np.asarray(open_image(r.files[1], what))
        if m.ndim == 3:
            m = m.max(axis=-1)
        if m.shape != a.shape:
            raise DataError(f"{what}: mask {r.files[1]} is {m.shape}, its slice {r.files[0]} is {a.shape}")
        return fit_image(Image.fromarray(np.ascontiguousarray(a)), size, 1, fit), fit_mask(m, size, fit)

    hints = {s: f"patients with slices under {folder}/TCGA_*/" for s in ("train", "val", "test")}
    opts = {"channel": channel, "lesion_only": lesion_only, "fractions": list(fractions), "fit": fit}
    return finish(info, folder, records, decode, size=size, seed=seed, options=opts,
                  index_files=[], hints=hints, max_images=max_images,
                  workers=workers, cache=cache, cache_dir=cache_dir)
