"""Tiny copies of each real dataset's own layout, for reader tests and CLI tests with --data-root.

Every builder writes under `root` with the publisher's real file names, column names and formats
(PNG, JPEG, TIFF, DICOM via pydicom, MetaImage .mhd/.raw, .npz) and returns a RealFixture: `root`
to pass as data_root, and `truth`, which maps each image's constant grey value (its id) to what
the reader must give for it, so tests can check that pixels and labels stay aligned.

    make_nih(root), make_rsna(root), make_luna16(root), make_lgg(root), make_oct(root),
    make_isic(root), make_medmnist(root)
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsec.data.formats.infos import CHEST14_FINDINGS, OCT_CLASSES
from medsec.data.formats.metaimage import write_metaimage


@dataclass
class RealFixture:
    """A tiny dataset copy: the folder to read and, per image id (grey value), the expected facts."""

    root: Path
    truth: dict[int, dict[str, Any]] = field(default_factory=dict)


def _png(path: Path, value: int, size: tuple[int, int] = (48, 48), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "L":
        Image.fromarray(np.full((h, w), value, np.uint8)).save(path)
    elif mode == "RGBA":
        a = np.zeros((h, w, 4), np.uint8)
        a[..., :3] = value
        a[..., 3] = 255
        Image.fromarray(a, "RGBA").save(path)
    else:
        raise ValueError(mode)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]], trailing_comma: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header + ([""] if trailing_comma else []))
        for r in rows:
            w.writerow(list(r) + ([""] if trailing_comma else []))


# ------------------------------------------------------------------------------------------------ NIH
def make_nih(root: Path, *, n_patients: int = 12, per_patient: int = 2, lists: str = "official") -> RealFixture:
    """ChestX-ray14: Data_Entry_2017.csv (real header, trailing comma), images_00{1,2}/images/*.png,
    and split lists: "official" (train_val_list.txt/test_list.txt), "chexnet" (labels/train_list.txt,
    val_list.txt, test_list.txt) or "none". One image is RGBA, as a few real ones are."""
    root = Path(root) / "ChestX-ray14"
    fx = RealFixture(root)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    rows, names = [], []
    value = 10
    for p in range(1, n_patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            j = (p * per_patient + k) % 16
            if j < 14:
                labels = [CHEST14_FINDINGS[j]] + ([CHEST14_FINDINGS[(j + 3) % 14]] if j % 4 == 0 else [])
            else:
                labels = []
            folder = "images_001" if p <= n_patients // 2 else "images_002"
            _png(root / folder / "images" / name, value, mode="RGBA" if (p, k) == (2, 1) else "L")
            y = np.zeros(14, np.float32)
            for lab in labels:
                y[CHEST14_FINDINGS.index(lab)] = 1
            fx.truth[value] = {"name": name, "findings": y, "patient": str(p)}
            rows.append([name, "|".join(labels) or "No Finding", k, p, 40 + p, "M" if p % 2 else "F",
                         "PA", 2500, 2048, 0.143, 0.143])
            names.append((p, name))
            value += 3
    _write_csv(root / "Data_Entry_2017.csv", header, rows, trailing_comma=True)
    test_p = set(range(n_patients - 2, n_patients + 1))
    if lists == "official":
        (root / "train_val_list.txt").write_text("".join(f"{n}\n" for p, n in names if p not in test_p))
        (root / "test_list.txt").write_text("".join(f"{n}\n" for p, n in names if p in test_p))
    elif lists == "chexnet":
        val_p = {n_patients - 4, n_patients - 3}
        lab = root / "labels"
        lab.mkdir()
        for fname, sel in (("train_list.txt", lambda p: p not in test_p | val_p),
                           ("val_list.txt", lambda p: p in val_p), ("test_list.txt", lambda p: p in test_p)):
            (lab / fname).write_text("".join(
                f"{n} " + " ".join(str(int(v)) for v in fx.truth[_value_of(fx, n)]["findings"]) + "\n"
                for p, n in names if sel(p)))
    return fx


def _value_of(fx: RealFixture, name: str) -> int:
    return next(v for v, t in fx.truth.items() if t["name"] == name)


# ----------------------------------------------------------------------------------------------- RSNA
def _dicom(path: Path, pixels: np.ndarray, patient: str, *, jpeg: bool, photometric: str = "MONOCHROME2",
           window: tuple[float, float] | None = None) -> None:
    """A CR DICOM file like the RSNA challenge's (8-bit JPEG Baseline, or uncompressed)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    cr = "1.2.840.10008.5.1.4.1.1.1"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = cr
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = cr, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.BodyPartExamined = patient, patient, "CR", "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_rsna(root: Path, *, n_patients: int = 12) -> RealFixture:
    """RSNA pneumonia: stage_2_train_labels.csv (several box rows for positive patients, empty box
    fields for negatives) and stage_2_train_images/<patientId>.dcm (JPEG Baseline 8-bit, plus one
    uncompressed and one 16-bit MONOCHROME1 file with a VOI window)."""
    root = Path(root) / "rsna-pneumonia-detection-challenge"
    fx = RealFixture(root)
    rows: list[list[Any]] = []
    for i in range(n_patients):
        pid = f"{i:04x}a1b2-c3d4-4e5f-8a9b-{i:012d}"
        value = 20 + i * max(2, 230 // n_patients)
        target = i % 2
        if target:
            rows += [[pid, 264.0, 152.0, 213.0, 379.0, 1], [pid, 562.0, 152.0, 256.0, 453.0, 1]]
        else:
            rows.append([pid, "", "", "", "", 0])
        path = root / "stage_2_train_images" / f"{pid}.dcm"
        if i == 1:  # 16-bit, inverted photometric, windowed: value maps back to `value`
            raw = (4095 - np.full((40, 40), value * 16, np.uint16)).astype(np.uint16)
            _dicom(path, raw, pid, jpeg=False, photometric="MONOCHROME1", window=(2048.0, 4096.0))
        else:
            _dicom(path, np.full((40, 40), value, np.uint8), pid, jpeg=(i != 2))
        fx.truth[value] = {"patient": pid, "target": target, "boxes": 2 * target}
    _write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    return fx


# --------------------------------------------------------------------------------------------- LUNA16
def make_luna16(root: Path, *, n_series: int = 6, malignancy: bool = True) -> RealFixture:
    """LUNA16: subset0/, subset1/ with <seriesuid>.mhd + .raw (int16 HU, anisotropic spacing, non-zero
    Offset, air -1000 HU with a +40 HU sphere per nodule), annotations.csv, candidates.csv and (unless
    malignancy=False) malignancy.csv with per-radiologist rows. Each series has one benign (ratings 1, 2)
    and one malignant (ratings 4, 5, 5) nodule, plus an ambiguous one (3, 3) and one not in annotations."""
    root = Path(root) / "LUNA16"
    fx = RealFixture(root)
    spacing = (0.7, 0.7, 2.5)
    ann, cand, mal = [], [], []
    for s in range(n_series):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{100000 + s}"
        offset = (-180.0 + s, -170.0, -300.0 - 10 * s)
        vol = np.full((40, 96, 96), -1000, np.int16)
        nodules = {"benign": (30, 30, 12), "malignant": (64, 60, 26), "ambiguous": (30, 70, 20),
                   "unannotated": (70, 20, 8)}
        zz, yy, xx = np.mgrid[:40, :96, :96]
        world = {}
        for kind, (i, j, k) in nodules.items():
            r_vox = ((xx - i) * spacing[0]) ** 2 + ((yy - j) * spacing[1]) ** 2 + ((zz - k) * spacing[2]) ** 2
            vol[r_vox <= 5.0 ** 2] = 40
            world[kind] = [offset[a] + (i, j, k)[a] * spacing[a] for a in range(3)]
        write_metaimage(root / f"subset{s % 2}" / f"{uid}.mhd", vol, spacing, offset)
        for kind in ("benign", "malignant", "ambiguous"):
            ann.append([uid, *world[kind], 10.0])
        for kind, ratings in (("benign", (1, 2)), ("malignant", (4, 5, 5)), ("ambiguous", (3, 3)),
                              ("unannotated", (5, 5))):
            for q, rating in enumerate(ratings):
                jitter = 0.4 * q
                mal.append([uid, world[kind][0] + jitter, world[kind][1] - jitter, world[kind][2], rating])
            cand.append([uid, *world[kind], 1])
        cand.append([uid, offset[0] + 5, offset[1] + 5, offset[2] + 5, 0])
        fx.truth[s] = {"seriesuid": uid, "world": world}
    _write_csv(root / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], ann)
    _write_csv(root / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], cand)
    if malignancy:
        _write_csv(root / "malignancy.csv", ["seriesuid", "coordX", "coordY", "coordZ", "malignancy"], mal)
    return fx


# ------------------------------------------------------------------------------------------------ LGG
def make_lgg(root: Path, *, n_patients: int = 6, slices: int = 3) -> RealFixture:
    """LGG: lgg-mri-segmentation/kaggle_3m/TCGA_XX_NNNN_YYYYMMDD/..._<n>.tif (RGB: pre-contrast 0,
    FLAIR = id, post-contrast 255) and ..._<n>_mask.tif (0/255, a square on odd slices). The first
    patient has two dated sessions; one slice lacks its mask (skipped)."""
    base = Path(root) / "lgg-mri-segmentation" / "kaggle_3m"
    fx = RealFixture(base)
    value = 10
    cases = [(p, f"TCGA_{'CS' if p % 2 else 'DU'}_{4900 + p}_{19960909 + p}") for p in range(n_patients)]
    cases.append((0, "TCGA_DU_4900_20010101"))  # a second dated session of the first patient
    for p, case in cases:
        d = base / case
        d.mkdir(parents=True, exist_ok=True)
        for n in range(1, slices + 1):
            rgb = np.zeros((64, 64, 3), np.uint8)
            rgb[..., 1] = value
            rgb[..., 2] = 255
            Image.fromarray(rgb, "RGB").save(d / f"{case}_{n}.tif")
            mask = np.zeros((64, 64), np.uint8)
            if n % 2:
                mask[16:48, 16:48] = 255
            if not (p == 1 and n == slices):
                Image.fromarray(mask).save(d / f"{case}_{n}_mask.tif")
                fx.truth[value] = {"patient": "_".join(case.split("_")[:3]), "lesion": bool(n % 2)}
            value += 3
    (base / "data.csv").write_text("Patient,RNASeqCluster\nTCGA_CS_4900,2\n")
    return fx


# ------------------------------------------------------------------------------------------------ OCT
def make_oct(root: Path, *, train_patients: int = 4) -> RealFixture:
    """Kermany OCT: OCT2017/{train,test,val}/{CNV,DME,DRUSEN,NORMAL}/CLASS-PATIENT-N.jpeg (non-square
    grayscale JPEGs). Patient 1000 of CNV also has a test image (its train images must be dropped)."""
    base = Path(root) / "OCT2017"
    fx = RealFixture(base)
    value = 8
    for split, n_pat, per in (("train", train_patients, 2), ("test", 1, 1), ("val", 1, 1)):
        for k, cls in enumerate(OCT_CLASSES):
            for q in range(n_pat):
                pid = 1000 + 100 * k + q + {"train": 0, "test": 50, "val": 80}[split]
                if split == "test" and k == 0:
                    pid = 1000  # shared with train
                for n in range(1, per + 1):
                    path = base / split / cls / f"{cls}-{pid}-{n}.jpeg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.full((50, 76), value, np.uint8)).save(path, "JPEG", quality=95)
                    fx.truth[value] = {"patient": str(pid), "target": k, "split": split}
                    value += 4
    return fx


# ----------------------------------------------------------------------------------------------- ISIC
def make_isic(root: Path, *, n_train: int = 6, n_val: int = 3, n_test: int = 3, validation: bool = True
              ) -> RealFixture:
    """ISIC 2017: ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_nnnnnnn.jpg (RGB, 40x30, red = id)
    with *_superpixels.png beside them, Part1 masks *_segmentation.png (left half lesion) and Part3
    CSVs (image_id,melanoma,seborrheic_keratosis as 0.0/1.0)."""
    base = Path(root) / "ISIC2017"
    fx = RealFixture(base)
    value, iid = 10, 0
    parts = [("Training", n_train, "train"), ("Test_v2", n_test, "test")]
    if validation:
        parts.insert(1, ("Validation", n_val, "val"))
    for part, n, split in parts:
        rows = []
        for q in range(n):
            name = f"ISIC_{iid:07d}"
            img = np.zeros((30, 40, 3), np.uint8)
            img[..., 0], img[..., 1], img[..., 2] = value, 120, 200
            d = base / f"ISIC-2017_{part}_Data"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "RGB").save(d / f"{name}.jpg", "JPEG", quality=95)
            Image.fromarray(np.zeros((30, 40, 3), np.uint8), "RGB").save(d / f"{name}_superpixels.png")
            mask = np.zeros((30, 40), np.uint8)
            mask[:, :20] = 255
            m = base / f"ISIC-2017_{part}_Part1_GroundTruth"
            m.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(m / f"{name}_segmentation.png")
            melanoma, sk = float(q % 3 == 0), float(q % 3 == 1)
            rows.append([name, melanoma, sk])
            fx.truth[value] = {"name": name, "label": int(melanoma), "split": split}
            value += 8
            iid += 1
        _write_csv(base / f"ISIC-2017_{part}_Part3_GroundTruth.csv",
                   ["image_id", "melanoma", "seborrheic_keratosis"], rows)
    return fx


# ------------------------------------------------------------------------------------------- MedMNIST
def make_medmnist(root: Path, *, names: tuple[str, ...] = ("pneumoniamnist", "chestmnist", "dermamnist"),
                  sizes: tuple[int, ...] = (28, 64), n: tuple[int, int, int] = (12, 4, 6)) -> RealFixture:
    """MedMNIST: <name>.npz (28 px) and <name>_<size>.npz with the official keys and dtypes."""
    from medsec.data.formats.medmnist import MEDMNIST

    base = Path(root) / "medmnist"
    base.mkdir(parents=True, exist_ok=True)
    fx = RealFixture(base)
    rng = np.random.default_rng(0)
    for name in names:
        task, labels, channels, _ = MEDMNIST[name]
        for size in sizes:
            arrays = {}
            for split, count in zip(("train", "val", "test"), n, strict=True):
                shape = (count, size, size) + ((3,) if channels == 3 else ())
                arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
                if task == "multilabel":
                    arrays[f"{split}_labels"] = rng.integers(0, 2, (count, len(labels)), dtype=np.uint8)
                else:
                    arrays[f"{split}_labels"] = (np.arange(count) % len(labels)).reshape(-1, 1).astype(np.uint8)
            fname = f"{name}.npz" if size == 28 else f"{name}_{size}.npz"
            np.savez_compressed(base / fname, **arrays)
            fx.truth[size] = {"file": fname}
    return fx
