"""Kermany et al. retinal OCT (OCT2017 / CellData) -> `oct` (CNV, DME, DRUSEN, NORMAL).

Layout (as Mendeley Data doi:10.17632/rscbjbr9sj and the Kaggle "kermany2018" mirror unpack)::

    OCT2017/train/{CNV,DME,DRUSEN,NORMAL}/CNV-13823-1.jpeg ...
    OCT2017/test/{CNV,DME,DRUSEN,NORMAL}/...
    OCT2017/val/...   (Kaggle only, 8 images per class: pooled with train)

The class is the folder; the patient is the number in CLASS-PATIENT-N.jpeg (one patient can have
images of several classes). The official test folder is the test split; validation is carved
patient-wise from train (`val_fraction`, 10% of patients by default); train/val images of patients
who also appear in test are dropped and counted, so no patient is in two splits. Grayscale B-scans of
varying width are resized to size² (`fit="squash"` keeps the whole scan; "crop" takes the centre).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medsec.data.base import MedicalDataset
from medsec.data.formats.common import (
    Record,
    drop_overlap,
    finish,
    fit_image,
    group_split,
    locate,
    open_image,
    require_dir,
)
from medsec.data.formats.infos import OCT_CLASSES, real_info
from medsec.errors import DataError

NAME = re.compile(r"^(?P<cls>[A-Za-z]+)-(?P<patient>\d+)-(?P<n>\d+)$")
EXTS = (".jpeg", ".jpg", ".png")
EXPECT = ("train/ and test/ each with CNV/, DME/, DRUSEN/, NORMAL/ of *.jpeg (Kermany OCT, "
          "https://data.mendeley.com/datasets/rscbjbr9sj)")


def _is_oct(p: Path) -> bool:
    return all((p / s / c).is_dir() for s in ("train", "test") for c in OCT_CLASSES[:1])


def _scan(folder: Path, split_dir: str, what: str) -> list[Record]:
    out = []
    for k, cls in enumerate(OCT_CLASSES):
        d = folder / split_dir / cls
        require_dir(d, what, f"the {cls} images of {split_dir}/")
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in EXTS or f.name.startswith("."):
                continue
            m = NAME.match(f.stem)
            patient = m.group("patient") if m else f.stem
            out.append(Record(split="train", files=(f,), target=k, patient=patient))
    return out


def read_oct(name: str, root: Path, *, size: int, seed: int, val_fraction: float = 0.1, fit: str = "squash",
             max_images: int | None = None, workers: int | None = None, cache: bool = True,
             cache_dir: str | Path | None = None
             ) -> MedicalDataset:
    """Read Kermany OCT as `oct`: official test, patient-wise validation carved from train."""
    what = name
    if not 0 < val_fraction < 1:
        raise DataError(f"{what}: val_fraction must be in (0, 1), got {val_fraction}")
    folder = locate(root, _is_oct, ("OCT2017", "OCT", "CellData", "kermany", "oct"), what, EXPECT)
    pool = _scan(folder, "train", what)
    if all((folder / "val" / c).is_dir() for c in OCT_CLASSES):
        pool += _scan(folder, "val", what)
    test = _scan(folder, "test", what)
    for r in test:
        r.split = "test"
    test_patients = {r.patient for r in test if r.patient is not None}
    pool = [pool[i] for i in drop_overlap([r.patient for r in pool], test_patients, what, "train/val")]
    tr, va = group_split([r.patient or "" for r in pool], (1 - val_fraction, val_fraction), seed, "oct-val")
    for i in va:
        pool[i].split = "val"
    records = pool + test
    info = real_info(name)

    def decode(r: Record) -> tuple[np.ndarray, None]:
        return fit_image(open_image(r.files[0], what, draft=size), size, 1, fit), None

    hints = {"train": f"{folder}/train/<class>/*.jpeg", "val": f"patients of {folder}/train/",
             "test": f"{folder}/test/<class>/*.jpeg"}
    opts = {"val_fraction": val_fraction, "fit": fit}
    return finish(info, folder, records, decode, size=size, seed=seed, options=opts,
                  index_files=[], hints=hints, max_images=max_images,
                  workers=workers, cache=cache, cache_dir=cache_dir)
