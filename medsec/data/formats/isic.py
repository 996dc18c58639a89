"""ISIC 2017 (Skin Lesion Analysis Towards Melanoma Detection) -> `isic`: lesion masks plus a
benign/malignant label per image in extra["label"].

Layout (as https://challenge.isic-archive.com/data/#2017 distributes it)::

    ISIC-2017_Training_Data/ISIC_0000000.jpg               (the *_superpixels.png files are ignored)
    ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png
    ISIC-2017_Training_Part3_GroundTruth.csv               image_id,melanoma,seborrheic_keratosis
    ISIC-2017_Validation_Data/, ISIC-2017_Validation_Part1_GroundTruth/, ISIC-2017_Validation_Part3_GroundTruth.csv
    ISIC-2017_Test_v2_Data/, ISIC-2017_Test_v2_Part1_GroundTruth/, ISIC-2017_Test_v2_Part3_GroundTruth.csv

The official training/validation/test sets are the splits (when the validation set is absent,
`val_fraction` of the training images are held out at random, with a warning). Malignant = melanoma;
nevus and seborrheic keratosis are benign (extra["seborrheic_keratosis"] keeps the third class).
ISIC 2017 gives no patient ids, so patient_ids is None. RGB images and masks are resized to size².
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsec.data.base import MedicalDataset
from medsec.data.formats.common import (
    Record,
    finish,
    fit_image,
    fit_mask,
    group_split,
    locate,
    log,
    open_image,
    read_csv,
    require_dir,
    warn_skipped,
)
from medsec.data.formats.infos import real_info
from medsec.errors import DataError

PARTS = {"train": "Training", "val": "Validation", "test": "Test_v2"}
COLUMNS = ("image_id", "melanoma", "seborrheic_keratosis")
EXPECT = ("ISIC-2017_Training_Data/, ISIC-2017_Training_Part1_GroundTruth/ and "
          "ISIC-2017_Training_Part3_GroundTruth.csv (ISIC 2017, https://challenge.isic-archive.com/data/#2017)")


def _is_isic(p: Path) -> bool:
    return (p / "ISIC-2017_Training_Data").is_dir()


def _flag(v: str, path: Path, col: str, image: str) -> int:
    try:
        return int(float(v) >= 0.5)
    except ValueError as e:
        raise DataError(f"isic: {path}: {col} = {v!r} for {image} is not 0 or 1") from e


def _scan(folder: Path, split: str, part: str, what: str) -> list[Record]:
    data = folder / f"ISIC-2017_{part}_Data"
    masks = folder / f"ISIC-2017_{part}_Part1_GroundTruth"
    csv_path = folder / f"ISIC-2017_{part}_Part3_GroundTruth.csv"
    for d, kind in ((data, "the dermoscopy images ISIC_*.jpg"), (masks, "the masks ISIC_*_segmentation.png")):
        require_dir(d, what, kind)
    out, missing = [], []
    for r in read_csv(csv_path, COLUMNS, what):
        iid = r["image_id"]
        img, mask = data / f"{iid}.jpg", masks / f"{iid}_segmentation.png"
        if not img.is_file() or not mask.is_file():
            missing.append(iid)
            continue
        out.append(Record(split=split, files=(img, mask), target=None,
                          extra={"label": _flag(r["melanoma"], csv_path, "melanoma", iid),
                                 "seborrheic_keratosis": _flag(r["seborrheic_keratosis"], csv_path,
                                                               "seborrheic_keratosis", iid)}))
    warn_skipped(what, len(missing), f"rows of {csv_path.name} without both {data.name}/<id>.jpg and "
                 f"{masks.name}/<id>_segmentation.png", missing)
    return out


def read_isic(name: str, root: Path, *, size: int, seed: int, val_fraction: float = 0.15, fit: str = "squash",
              max_images: int | None = None, workers: int | None = None, cache: bool = True,
              cache_dir: str | Path | None = None
              ) -> MedicalDataset:
    """Read ISIC 2017 as `isic` (segmentation targets; extra['label'] 0 benign / 1 malignant)."""
    what = name
    folder = locate(root, _is_isic, ("ISIC2017", "ISIC-2017", "isic"), what, EXPECT)
    train = _scan(folder, "train", PARTS["train"], what)
    if (folder / "ISIC-2017_Validation_Data").is_dir():
        val = _scan(folder, "val", PARTS["val"], what)
    else:
        log.warning("%s: no ISIC-2017_Validation_Data in %s; holding out %.0f%% of training images at random",
                    what, folder, 100 * val_fraction)
        _, va = group_split([r.files[0].name for r in train], (1 - val_fraction, val_fraction), seed, "isic-val")
        for i in va:
            train[i].split = "val"
        val = []
    test = _scan(folder, "test", PARTS["test"], what)
    records = train + val + test
    info = real_info(name)

    def decode(r: Record) -> tuple[np.ndarray, np.ndarray]:
        img = open_image(r.files[0], what, draft=size)
        m = np.asarray(open_image(r.files[1], what))
        if m.ndim == 3:
            m = m.max(axis=-1)
        w, h = img.info["original_size"]
        if m.shape != (h, w):
            raise DataError(f"{what}: mask {r.files[1]} is {m.shape[1]}x{m.shape[0]}, "
                            f"its image {r.files[0]} is {w}x{h}")
        return fit_image(img, size, 3, fit), fit_mask(m, size, fit)

    hints = {s: f"{folder}/ISIC-2017_{p}_Data with its Part1 masks and Part3 CSV" for s, p in PARTS.items()}
    opts = {"val_fraction": val_fraction, "fit": fit}
    csvs = [c for c in (folder / f"ISIC-2017_{p}_Part3_GroundTruth.csv" for p in PARTS.values()) if c.is_file()]
    return finish(info, folder, records, decode, size=size, seed=seed, options=opts,
                  index_files=csvs, hints=hints, max_images=max_images,
                  workers=workers, cache=cache, cache_dir=cache_dir)
