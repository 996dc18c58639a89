"""MedMNIST v2 / MedMNIST+ 2-D datasets from their .npz files -> datasets of the same name.

Layout (as https://zenodo.org/records/10519652 and `python -m medmnist download` store them)::

    chestmnist.npz (28 px), chestmnist_64.npz, chestmnist_128.npz, chestmnist_224.npz, pneumoniamnist.npz, ...

Keys: train_images, train_labels, val_images, val_labels, test_images, test_labels; images uint8
(N, H, W) or (N, H, W, 3), labels (N, 1) class indices or (N, 14) findings (chestmnist). The official
splits are used as they are. The file whose resolution equals the requested size is preferred, else
the smallest larger one, else the largest; images of another size are resized with Pillow's bilinear
filter. Task: chestmnist is multi-label; the others (binary, multi-class, retinamnist's ordinal
grades) are classification. MedMNIST gives no patient ids (the publishers split by patient where
the source allowed). The 3-D datasets (*mnist3d) are not supported.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from medsec.data.base import SPLITS, DatasetInfo, MedicalDataset, Split
from medsec.errors import DataError

# name: (task, label names in index order, channels, DICOM modality) — from medmnist/info.py (v3.0).
ORGAN = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
         "lung-right", "pancreas", "spleen")
MEDMNIST: dict[str, tuple[str, tuple[str, ...], int, str]] = {
    "pathmnist": ("classification", ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                                     "normal colon mucosa", "cancer-associated stroma",
                                     "colorectal adenocarcinoma epithelium"), 3, "SM"),
    "chestmnist": ("multilabel", ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                                  "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema",
                                  "fibrosis", "pleural", "hernia"), 1, "CR"),
    "dermamnist": ("classification", ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                                      "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                                      "melanocytic nevi", "vascular lesions"), 3, "XC"),
    "octmnist": ("classification", ("choroidal neovascularization", "diabetic macular edema", "drusen",
                                    "normal"), 1, "OPT"),
    "pneumoniamnist": ("classification", ("normal", "pneumonia"), 1, "CR"),
    "retinamnist": ("classification", ("0", "1", "2", "3", "4"), 3, "OP"),
    "breastmnist": ("classification", ("malignant", "normal, benign"), 1, "US"),
    "bloodmnist": ("classification", ("basophil", "eosinophil", "erythroblast",
                                      "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
                                      "lymphocyte", "monocyte", "neutrophil", "platelet"), 3, "SM"),
    "tissuemnist": ("classification", ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                                       "Glomerular endothelial cells", "Interstitial endothelial cells",
                                       "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                                       "Thick Ascending Limb"), 1, "SM"),
    "organamnist": ("classification", ORGAN, 1, "CT"),
    "organcmnist": ("classification", ORGAN, 1, "CT"),
    "organsmnist": ("classification", ORGAN, 1, "CT"),
}


def medmnist_info(name: str) -> DatasetInfo:
    """DatasetInfo of the MedMNIST dataset `name` (real data)."""
    task, labels, channels, modality = MEDMNIST[name]
    return DatasetInfo(name=name, task=task, class_names=labels, channels=channels,  # type: ignore[arg-type]
                       modality=modality, synthetic=False, description=f"MedMNIST {name}")


def _candidates(root: Path, name: str) -> dict[int, Path]:
    pat = re.compile(rf"^{re.escape(name)}(?:_(\d+))?\.npz$", re.IGNORECASE)
    found: dict[int, Path] = {}
    for folder in (root, root / "medmnist", root / "MedMNIST", root / ".medmnist"):
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            m = pat.match(f.name)
            if m and f.is_file():
                found.setdefault(int(m.group(1) or 28), f)
    return found


def choose_file(root: Path, name: str, size: int) -> Path:
    """The .npz to read for `size`: exact resolution, else the smallest larger, else the largest."""
    found = _candidates(Path(root).expanduser(), name)
    if not found:
        raise DataError(f"{name}: no {name}.npz or {name}_<size>.npz in {root} (or its medmnist/ folder); "
                        f"download it from https://zenodo.org/records/10519652")
    if size in found:
        return found[size]
    larger = [s for s in found if s > size]
    return found[min(larger)] if larger else found[max(found)]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    mode_rgb = images.ndim == 4
    out = np.empty((len(images), size, size, 3) if mode_rgb else (len(images), size, size), np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
    return out


def read_medmnist(name: str, root: Path, *, size: int, seed: int) -> MedicalDataset:
    """Read MedMNIST `name` with its official splits, resized to size² when the file's size differs.
    (`seed` is unused: the splits are the publishers'.)"""
    if name.endswith("3d"):
        raise DataError(f"{name}: 3-D MedMNIST volumes are not supported (use a 2-D MedMNIST dataset)")
    if name not in MEDMNIST:
        raise DataError(f"unknown MedMNIST dataset {name!r}; known: {', '.join(sorted(MEDMNIST))}")
    info = medmnist_info(name)
    path = choose_file(root, name, size)
    splits: dict[str, Split] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for s in SPLITS:
                for kind in ("images", "labels"):
                    if f"{s}_{kind}" not in z.files:
                        raise DataError(f"{name}: {path} has no key {s}_{kind} (keys: {', '.join(z.files)})")
                images, labels = z[f"{s}_images"], z[f"{s}_labels"]
                if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
                    raise DataError(f"{name}: {path}: {s}_images is {images.dtype} {images.shape}, "
                                    f"expected uint8 (N, H, W) or (N, H, W, 3)")
                if (images.ndim == 4) != (info.channels == 3):
                    raise DataError(f"{name}: {path}: {s}_images has shape {images.shape}, "
                                    f"expected {info.channels} channel(s)")
                if len(labels) != len(images):
                    raise DataError(f"{name}: {path}: {len(images)} {s} images but {len(labels)} labels")
                if len(images) == 0:
                    raise DataError(f"{name}: {path}: split {s!r} is empty")
                px = _resize(images, size)
                px = px[:, None] if px.ndim == 3 else px.transpose(0, 3, 1, 2)
                if info.task == "multilabel":
                    targets = labels.reshape(len(labels), -1).astype(np.float32)
                else:
                    targets = labels.reshape(len(labels), -1)[:, 0].astype(np.int64)
                splits[s] = Split(pixels=np.ascontiguousarray(px), targets=targets)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{name}: cannot read {path}: {e}") from e
    ds = MedicalDataset(info=info, **splits)
    ds.check()
    return ds
