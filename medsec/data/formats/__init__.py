"""Readers for the real datasets in their publishers' own layouts, giving the same interface as the
synthetic phantoms (medsec.data.base). `read_dataset(name, root, size=..., seed=...)` picks the reader
by dataset name; see docs/datasets.md for where each dataset comes from and the layout expected.

| name                 | reader                         | source layout                          |
|----------------------|--------------------------------|----------------------------------------|
| chest14, chest2      | nih.read_nih                   | NIH ChestX-ray14                       |
| rsna                 | rsna.read_rsna                 | RSNA Pneumonia Detection Challenge     |
| ct-slices            | luna16.read_luna16             | LUNA16 (+ a malignancy CSV you supply) |
| brain-mri            | lgg.read_lgg                   | LGG MRI segmentation (kaggle_3m)       |
| oct                  | oct.read_oct                   | Kermany OCT2017                        |
| isic                 | isic.read_isic                 | ISIC 2017                              |
| pathmnist, chestmnist, ... | medmnist.read_medmnist   | MedMNIST .npz                          |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsec.data.base import MedicalDataset
from medsec.data.formats.infos import CANONICAL, real_info, synthetic_info
from medsec.data.formats.isic import read_isic
from medsec.data.formats.lgg import read_lgg
from medsec.data.formats.luna16 import read_luna16
from medsec.data.formats.medmnist import MEDMNIST, medmnist_info, read_medmnist
from medsec.data.formats.nih import read_nih
from medsec.data.formats.oct import read_oct
from medsec.data.formats.rsna import read_rsna
from medsec.errors import DataError

READERS: dict[str, Callable[..., MedicalDataset]] = {
    "chest14": read_nih,
    "chest2": read_nih,
    "rsna": read_rsna,
    "ct-slices": read_luna16,
    "brain-mri": read_lgg,
    "oct": read_oct,
    "isic": read_isic,
    **{n: read_medmnist for n in MEDMNIST},
}

__all__ = ["CANONICAL", "READERS", "medmnist_info", "read_dataset", "real_datasets", "real_info",
           "reader_options", "synthetic_info"]


def real_datasets() -> list[str]:
    """Names that have a real-data reader."""
    return sorted(READERS)


def reader_options(name: str) -> dict[str, Any]:
    """The options (keyword -> default) the reader of `name` accepts beyond size and seed."""
    if name not in READERS:
        raise DataError(f"no real-data reader for {name!r}; readers exist for {', '.join(real_datasets())}")
    sig = inspect.signature(READERS[name])
    return {k: p.default for k, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("size", "seed", "cache_dir")}


def read_dataset(name: str, root: Path, *, size: int, seed: int, cache_dir: str | Path | None = None,
                 **options: Any) -> MedicalDataset:
    """Read the real dataset `name` from `root` (the dataset's folder, or a folder holding it up to two
    levels down), resized to size x size, with patient-level splits drawn from `seed`.

    `options` go to the dataset's reader (see reader_options(name)); common ones: fit
    ("squash" | "crop" | "pad"), workers (decoding threads), cache (reuse decoded images, default
    True). `cache_dir` is where decoded datasets are cached (default: medsec.paths.cache_root();
    MedMNIST files are read directly and never cached). Unknown options are an error, not ignored."""
    allowed = reader_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"{name}: unknown reader option(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(allowed) or 'none'}")
    if int(size) < 8:
        raise DataError(f"image size must be at least 8 px, got {size}")
    if "fit" in options and options["fit"] not in ("squash", "crop", "pad"):
        raise DataError(f"{name}: fit must be squash, crop or pad, got {options['fit']!r}")
    reader = READERS[name]
    if reader is read_medmnist:
        return read_medmnist(name, Path(root), size=int(size), seed=int(seed))
    return reader(name, Path(root), size=int(size), seed=int(seed), cache_dir=cache_dir, **options)
