"""Shared by the attack benchmarks: a small trained victim on a synthetic dataset, and timing helpers.

The victim comes from the lead's API (medsec.models.victims.get_victim), so it is trained once and
then read from the cache. When the requested synthetic dataset is not available (the generators were
not merged yet), a 4-class in-script phantom ("bench-bars") is registered and used instead; the
benchmark prints which dataset it used.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from medsec.data.base import DatasetInfo, Split


def _bars(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """Four classes: a faint bright band at one of four heights, on noisy tissue-like texture."""
    y = rng.integers(0, 4, n)
    px = rng.normal(110, 25, (n, 1, size, size))
    band = size // 4
    amp = 40 * (1.2 - difficulty)
    for c in range(4):
        px[y == c, :, c * band:(c + 1) * band, :] += amp
    return Split(pixels=px.clip(0, 255).astype(np.uint8), targets=y.astype(np.int64))


def load_victim(dataset: str, arch: str, size: int, n_train: int, n_test: int, epochs: int, seed: int = 0,
                cache_dir: str | None = None):
    """(model, x_test, y_test, dataset label, arch label) — trained once, then cached."""
    from medsec.config import load_config
    from medsec.data import available_datasets
    from medsec.data.synthetic import GENERATORS, SyntheticSpec, register
    from medsec.models.victims import get_victim

    if dataset not in available_datasets():
        print(f"[dataset {dataset!r} is not available in this checkout; using the in-script 'bench-bars' phantom]")
        dataset = "bench-bars"
        if dataset not in GENERATORS:
            register(SyntheticSpec(DatasetInfo(dataset, "classification", ("a", "b", "c", "d"), 1, "OT", True),
                                   _bars))
    over = {"seed": seed, "device": "cpu" if not torch.cuda.is_available() else "auto",
            "data": {"image_size": size, "n_train": n_train, "n_val": max(n_test // 2, 32), "n_test": n_test},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "patience": epochs, "augment": False},
            "model": {"width": 0.25, "depth": 0.34}}
    if cache_dir:
        over["cache_dir"] = cache_dir
    cfg = load_config("quick", over)
    v = get_victim(cfg, dataset, arch)
    model = v.model.eval()
    x = v.data.test.images()
    y = v.data.test.target_tensor()
    dev = next(model.parameters()).device
    return model, x.to(dev), y.to(dev), v.data.info.label, v.meta.get("arch_label", arch)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None
                ) -> dict[str, list[float]]:
    """Wall times of each function, run in alternating order `repeats` times (the machine is shared:
    alternating spreads other loads evenly over the contenders)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            sync()
            t = time.perf_counter()
            fns[k]()
            sync()
            times[k].append(time.perf_counter() - t)
    return times


def median(v: list[float]) -> float:
    """The median (robust to the other jobs on a shared machine)."""
    return statistics.median(v)


def machine() -> str:
    """One line about where this ran."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return f"{dev}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def torchattacks_or_exit():
    """Import torchattacks (a benchmark-only extra: pip install --no-deps torchattacks)."""
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("torchattacks is needed for this benchmark: pip install --no-deps torchattacks "
                         "(it imports without torchvision)") from e
    return torchattacks
