"""The one dataset interface that synthetic phantoms and real-data readers both produce.

Images are stored as uint8 (N, C, H, W) — what a scanner's 8-bit export or a PNG holds — and handed
to models as float32 in [0, 1] through `Split.images()`. Targets depend on the task:

- ``classification``: int64 (N,) class indices;
- ``multilabel``: float32 (N, K) of 0/1 findings;
- ``segmentation``: int64 (N, H, W) masks (0 = background, 1 = lesion).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from medsec.errors import DataError
from medsec.paths import atomic_path

log = logging.getLogger(__name__)

Task = Literal["classification", "multilabel", "segmentation"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its task, classes, channels, DICOM modality and provenance."""

    name: str
    task: Task
    class_names: tuple[str, ...]
    channels: int
    modality: str  # DICOM Modality for export: CR, DX, CT, MR, OPT, XC
    synthetic: bool
    description: str = ""

    @property
    def num_outputs(self) -> int:
        """Number of model outputs: classes, findings, or segmentation classes."""
        return len(self.class_names)

    @property
    def label(self) -> str:
        """Name as it appears in reports: synthetic data always says so."""
        return f"{self.name} (synthetic)" if self.synthetic else self.name


@dataclass
class Split:
    """One split of a dataset: uint8 pixels, task targets, optional patient ids and extra targets."""

    pixels: np.ndarray  # uint8 (N, C, H, W)
    targets: np.ndarray  # see module docstring
    patient_ids: np.ndarray | None = None  # (N,) str, for leakage-free splits
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. isic: {"label": (N,)}, {"mask": ...}

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 4:
            raise DataError(
                f"pixels must be uint8 (N, C, H, W), got {self.pixels.dtype} with shape {self.pixels.shape}"
            )
        if len(self.targets) != len(self.pixels):
            raise DataError(f"{len(self.pixels)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def images(self, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        """Float32 images in [0, 1], shape (N, C, H, W)."""
        px = self.pixels if idx is None else self.pixels[idx]
        return torch.from_numpy(np.ascontiguousarray(px)).float().div_(255.0)

    def target_tensor(self, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        """Targets as a tensor: int64 for classes and masks, float32 for multi-label findings."""
        t = self.targets if idx is None else self.targets[idx]
        tt = torch.from_numpy(np.ascontiguousarray(t))
        return tt.float() if tt.dtype in (torch.float32, torch.float64) else tt.long()

    def subset(self, idx: np.ndarray) -> Split:
        """A new split holding the rows `idx`."""
        return Split(
            pixels=self.pixels[idx],
            targets=self.targets[idx],
            patient_ids=None if self.patient_ids is None else self.patient_ids[idx],
            extra={k: v[idx] for k, v in self.extra.items()},
        )


@dataclass
class MedicalDataset:
    """A dataset: its description and its train / val / test splits."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        """The split called `name` (train, val or test)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.train.pixels.shape[1:]
        return int(c), int(h), int(w)

    def check(self) -> None:
        """Raise DataError if a split is empty, shapes disagree, or targets do not fit the task."""
        shape = None
        for s in SPLITS:
            sp = self.split(s)
            if len(sp) == 0:
                raise DataError(f"dataset {self.info.name}: split {s!r} is empty")
            if shape is None:
                shape = sp.pixels.shape[1:]
            elif sp.pixels.shape[1:] != shape:
                raise DataError(f"dataset {self.info.name}: split {s!r} has image shape "
                                f"{sp.pixels.shape[1:]}, expected {shape}")
            if sp.pixels.shape[1] != self.info.channels:
                raise DataError(f"dataset {self.info.name}: {sp.pixels.shape[1]} channels, "
                                f"expected {self.info.channels}")
            k = self.info.num_outputs
            t = sp.targets
            if self.info.task == "classification" and (t.ndim != 1 or t.min() < 0 or t.max() >= k):
                raise DataError(f"dataset {self.info.name}: split {s!r} class targets must be (N,) in [0, {k})")
            if self.info.task == "multilabel" and (t.ndim != 2 or t.shape[1] != k):
                raise DataError(f"dataset {self.info.name}: split {s!r} findings must be (N, {k})")
            if self.info.task == "segmentation" and t.shape[1:] != sp.pixels.shape[2:]:
                raise DataError(f"dataset {self.info.name}: split {s!r} masks must be (N, H, W)")


def save_npz(ds: MedicalDataset, path: Path) -> None:
    """Write a dataset's splits to one .npz atomically (how the synthetic and real-data caches store them)."""
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        sp = ds.split(s)
        arrays[f"{s}/pixels"] = sp.pixels
        arrays[f"{s}/targets"] = sp.targets
        if sp.patient_ids is not None:
            arrays[f"{s}/patient_ids"] = sp.patient_ids.astype(str)
        for k, v in sp.extra.items():
            arrays[f"{s}/extra/{k}"] = v
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]


def load_npz(path: Path, info: DatasetInfo) -> MedicalDataset:
    """Read a dataset written by save_npz and check it (a damaged file raises, so callers can rebuild it)."""
    with np.load(path, allow_pickle=False) as z:
        splits = {}
        for s in SPLITS:
            extra = {k.split("/", 2)[2]: z[k] for k in z.files if k.startswith(f"{s}/extra/")}
            pid = z[f"{s}/patient_ids"] if f"{s}/patient_ids" in z.files else None
            splits[s] = Split(pixels=z[f"{s}/pixels"], targets=z[f"{s}/targets"], patient_ids=pid, extra=extra)
    ds = MedicalDataset(info=info, **splits)
    ds.check()
    return ds


def cached_npz(path: Path, info: DatasetInfo, build: Callable[[], MedicalDataset], rebuild: str) -> MedicalDataset:
    """The dataset cached at `path`, or `build()` written there. A damaged entry is rebuilt, never trusted
    (`rebuild` says how, in the warning); a cache that cannot be written only costs a warning."""
    if path.exists():
        try:
            ds = load_npz(path, info)
            log.info("%s: read from cache %s", info.name, path)
            return ds
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, DataError, EOFError) as e:
            log.warning("cache entry %s is corrupted (%s); %s", path, e, rebuild)
            path.unlink(missing_ok=True)
    ds = build()
    try:
        save_npz(ds, path)
    except OSError as e:
        log.warning("could not cache dataset %s at %s: %s", info.name, path, e)
    return ds
