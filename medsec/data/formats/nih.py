"""NIH ChestX-ray14 -> `chest14` (14 findings, multi-label) and `chest2` (any finding vs. No Finding).

Layout (as the NIH Box folder and the Kaggle mirror unpack)::

    Data_Entry_2017.csv            (or Data_Entry_2017_v2020.csv)
    images_001/images/*.png ...    (or images_001/*.png, or images/*.png)
    train_val_list.txt, test_list.txt              official split (optional)
    train_list.txt, val_list.txt, test_list.txt    CheXNet split (optional; also under labels/)
    train.txt, val.txt, test.txt                   any other split lists (optional)

Labels come from the CSV's "Finding Labels" ("|"-separated, "No Finding" = none) and patients from
"Patient ID". Split choice (`split="auto"`): CheXNet lists if present, else train.txt/val.txt/test.txt,
else the official lists with a patient-level validation split carved from train_val, else a
patient-level 70/10/20 split. Images: 8-bit PNG to grayscale (RGBA ones included), resized to size².
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medsec.data.base import MedicalDataset
from medsec.data.formats.common import (
    Record,
    drop_overlap,
    finish,
    fit_image,
    group_split,
    locate,
    log,
    open_image,
    read_csv,
    read_list,
    warn_skipped,
)
from medsec.data.formats.infos import CHEST14_FINDINGS, real_info
from medsec.errors import DataError

CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
SPLIT_MODES = ("auto", "chexnet", "lists", "official", "random")
EXPECT = ("Data_Entry_2017.csv and images_*/images/*.png (NIH ChestX-ray14, "
          "https://nihcc.app.box.com/v/ChestXray-NIHCC)")


def _csv_path(p: Path) -> Path | None:
    for n in CSV_NAMES:
        if (p / n).is_file():
            return p / n
    return None


def _index_images(root: Path) -> dict[str, Path]:
    """Image file name -> path, over images*/images/*.png, images*/*.png."""
    index: dict[str, Path] = {}
    for d in sorted(root.iterdir()):
        if not (d.is_dir() and d.name.lower().startswith("images")):
            continue
        for folder in (d / "images", d):
            if not folder.is_dir():
                continue
            with os.scandir(folder) as it:
                for e in it:
                    if e.name.lower().endswith(".png") and e.is_file():
                        index.setdefault(e.name, Path(e.path))
    return index


def _find_lists(root: Path, names: tuple[str, ...]) -> list[Path] | None:
    for folder in (root, root / "labels", root / "splits"):
        paths = [folder / n for n in names]
        if all(p.is_file() for p in paths):
            return paths
    return None


def _parse_findings(text: str, csv_path: Path, image: str) -> np.ndarray:
    y = np.zeros(len(CHEST14_FINDINGS), np.float32)
    for lab in text.split("|"):
        lab = lab.strip()
        if not lab or lab == "No Finding":
            continue
        if lab not in CHEST14_FINDINGS:
            raise DataError(f"chest14: {csv_path}: unknown finding {lab!r} for {image} "
                            f"(expected one of {', '.join(CHEST14_FINDINGS)} or 'No Finding')")
        y[CHEST14_FINDINGS.index(lab)] = 1.0
    return y


def read_nih(name: str, root: Path, *, size: int, seed: int, split: str = "auto", val_fraction: float = 0.1,
             fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), fit: str = "squash",
             max_images: int | None = None, workers: int | None = None, cache: bool = True,
             cache_dir: str | Path | None = None
             ) -> MedicalDataset:
    """Read ChestX-ray14 as `chest14` or `chest2`. `split` picks the split source (see module doc);
    `val_fraction` is the share of train_val patients held out for validation with the official lists;
    `fractions` the train/val/test patient shares when no split list exists."""
    what = name
    if split not in SPLIT_MODES:
        raise DataError(f"{what}: split must be one of {', '.join(SPLIT_MODES)}, got {split!r}")
    folder = locate(root, lambda p: _csv_path(p) is not None, ("ChestX-ray14", "chestxray14", "nih",
                    "NIH", "chest14", "ChestXray-NIHCC"), what, EXPECT)
    csv_path = _csv_path(folder)
    assert csv_path is not None
    rows = read_csv(csv_path, COLUMNS, what)
    images = _index_images(folder)
    if not images:
        raise DataError(f"{what}: no PNG images under {folder}/images_*/images/ or {folder}/images_*/ "
                        f"(expected the unpacked images_001.tar.gz ... images_012.tar.gz)")
    labels: dict[str, np.ndarray] = {}
    patients: dict[str, str] = {}
    for r in rows:
        img = r["Image Index"]
        labels[img] = _parse_findings(r["Finding Labels"], csv_path, img)
        pid = r["Patient ID"]
        patients[img] = str(int(pid)) if pid.isdigit() else pid
    missing = [i for i in labels if i not in images]
    warn_skipped(what, len(missing), f"images listed in {csv_path.name} but not found on disk", missing)

    mode = split
    lists: list[Path] | None = None
    if mode in ("auto", "chexnet"):
        lists = _find_lists(folder, ("train_list.txt", "val_list.txt", "test_list.txt"))
        mode = "chexnet" if lists else mode
    if mode in ("auto", "lists"):
        lists = _find_lists(folder, ("train.txt", "val.txt", "test.txt"))
        mode = "lists" if lists else mode
    if mode in ("auto", "official"):
        lists = _find_lists(folder, ("train_val_list.txt", "test_list.txt"))
        mode = "official" if lists else mode
    if mode == "auto":
        mode = "random"
        log.warning(
            "%s: no split lists in %s; using a patient-level %s split (seed %d)", what, folder,
            "/".join(str(f) for f in fractions), seed)
    if mode != "random" and lists is None:
        raise DataError(f"{what}: split={split!r} asked for but its list files are not in {folder} "
                        f"(or its labels/ subfolder)")

    assign: dict[str, str] = {}
    unknown: list[str] = []
    if mode in ("chexnet", "lists"):
        assert lists is not None
        for s, path in zip(("train", "val", "test"), lists, strict=True):
            for item in read_list(path, what):
                base = item.rsplit("/", 1)[-1]
                if base in labels:
                    assign[base] = s
                else:
                    unknown.append(base)
    elif mode == "official":
        assert lists is not None
        trainval = [b for b in (i.rsplit("/", 1)[-1] for i in read_list(lists[0], what)) if b in labels]
        test = [b for b in (i.rsplit("/", 1)[-1] for i in read_list(lists[1], what)) if b in labels]
        unknown = [i for i in read_list(lists[0], what) + read_list(lists[1], what)
                   if i.rsplit("/", 1)[-1] not in labels]
        tr, va = group_split([patients[b] for b in trainval], (1 - val_fraction, val_fraction), seed, "nih-val")
        assign.update({trainval[i]: "train" for i in tr})
        assign.update({trainval[i]: "val" for i in va})
        assign.update({b: "test" for b in test})
    else:
        present = sorted(i for i in labels if i in images)
        parts = group_split([patients[b] for b in present], fractions, seed, "nih-split")
        for s, idx in zip(("train", "val", "test"), parts, strict=True):
            assign.update({present[i]: s for i in idx})
    warn_skipped(what, len(unknown), f"split-list entries not in {csv_path.name}", unknown)
    unlisted = [i for i in labels if i in images and i not in assign]
    warn_skipped(what, len(unlisted), "images in no split list", unlisted)

    records: list[Record] = []
    for img, s in sorted(assign.items()):
        if img not in images:
            continue
        y = labels[img]
        target: Any = y if name == "chest14" else int(y.any())
        records.append(Record(split=s, files=(images[img],), target=target, patient=patients[img]))
    test_patients = {r.patient for r in records if r.split == "test" and r.patient is not None}
    keep = set(drop_overlap([r.patient if r.split != "test" else None for r in records], test_patients,
                            what, "train/val").tolist())
    records = [r for i, r in enumerate(records) if i in keep]

    info = real_info(name)

    def decode(r: Record) -> tuple[np.ndarray, None]:
        return fit_image(open_image(r.files[0], what), size, 1, fit), None

    hints = {s: f"{mode} split; images expected under {folder}/images_*/" for s in ("train", "val", "test")}
    opts = {"split": mode, "val_fraction": val_fraction, "fractions": list(fractions), "fit": fit}
    return finish(info, folder, records, decode, size=size, seed=seed, options=opts,
                  index_files=[csv_path, *(lists or [])], hints=hints, max_images=max_images,
                  workers=workers, cache=cache, cache_dir=cache_dir)
