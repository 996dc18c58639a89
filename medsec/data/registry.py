"""Dataset names -> datasets: embedded synthetic phantoms by default, real data with a data root.

Generated synthetic data is cached on disk (one .npz per name/size/sizes/seed/difficulty); a corrupted
cache entry is regenerated, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medsec.data.base import SPLITS, MedicalDataset, cached_npz
from medsec.data.synthetic import GENERATORS
from medsec.errors import DataError
from medsec.paths import cache_root
from medsec.provenance import code_digest

CACHE_FORMAT = 4  # the data's version; the cache also keys on the data code (medsec.provenance.code_digest)


def _load_synthetic_modules() -> None:
    # Importing the modules registers their generators.
    import importlib
    import pkgutil

    import medsec.data.synthetic as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def available_datasets() -> list[str]:
    """Names of the embedded synthetic datasets."""
    _load_synthetic_modules()
    return sorted(GENERATORS)


def _split_seed(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), 0x6D656473])


def generate_synthetic(
    name: str, *, size: int, n_train: int, n_val: int, n_test: int, seed: int, difficulty: float | None = None
) -> MedicalDataset:
    """Draw a synthetic dataset afresh (no cache)."""
    _load_synthetic_modules()
    if name not in GENERATORS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(GENERATORS))}")
    spec = GENERATORS[name]
    d = spec.default_difficulty if difficulty is None else float(difficulty)
    if not 0.0 <= d <= 1.0:
        raise DataError(f"difficulty must be in [0, 1], got {d}")
    if size < 16:
        raise DataError(f"image size must be at least 16 px, got {size}")
    splits = {}
    for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        if n <= 0:
            raise DataError(f"split {split!r} of {name} must hold at least one image, got {n}")
        splits[split] = spec.generate(n, size, _split_seed(seed, split), d)
    ds = MedicalDataset(info=spec.info, **splits)
    ds.check()
    return ds


def _cache_file(root: Path, name: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / "data" / f"{name}-{key['size']}px-{digest}.npz"


def load_dataset(
    name: str,
    *,
    size: int = 64,
    n_train: int = 1000,
    n_val: int = 250,
    n_test: int = 250,
    seed: int = 0,
    difficulty: float | None = None,
    cache_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    data_options: dict | None = None,
) -> MedicalDataset:
    """The dataset called `name`.

    With `data_root`, the real dataset is read from its publisher's layout under that folder
    (see medsec.data.formats; `data_options` are passed to its reader, e.g. max_images, malignancy_csv).
    Otherwise the embedded synthetic phantom is generated — or read
    from the cache when it was generated before with the same arguments.
    """
    if data_root is not None:
        from medsec.data.formats import read_dataset

        return read_dataset(name, Path(data_root), size=size, seed=seed, cache_dir=cache_dir,
                            **(data_options or {}))
    _load_synthetic_modules()
    if name not in GENERATORS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(GENERATORS))}")
    spec = GENERATORS[name]
    d = spec.default_difficulty if difficulty is None else float(difficulty)
    key = {"format": CACHE_FORMAT, "code": code_digest("data"), "name": name, "size": size,
           "n": [n_train, n_val, n_test], "seed": seed, "difficulty": d}
    path = _cache_file(cache_root(cache_dir), name, key)
    return cached_npz(path, spec.info, lambda: generate_synthetic(
        name, size=size, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, difficulty=d), "regenerating it")
