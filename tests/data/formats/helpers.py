"""Helpers for the real-data reader tests: alignment checks between pixels, labels and patients."""

from __future__ import annotations

import numpy as np

from medsec.data.base import SPLITS, MedicalDataset


def image_ids(ds: MedicalDataset, split: str, channel: int = 0) -> np.ndarray:
    """Each image's constant grey value (the fixtures' image id), from the mean of one channel."""
    px = ds.split(split).pixels[:, channel].reshape(len(ds.split(split)), -1).astype(float)
    return np.rint(px.mean(axis=1)).astype(int)


def nearest_id(value: int, truth: dict) -> int:
    """The fixture id closest to a decoded grey value (JPEG may move a constant image by a level)."""
    keys = np.array(sorted(truth))
    k = int(keys[np.argmin(np.abs(keys - value))])
    assert abs(k - value) <= 1, f"decoded value {value} matches no fixture image"
    return k


def assert_no_patient_leak(ds: MedicalDataset) -> None:
    """No patient id appears in two splits."""
    seen: dict[str, str] = {}
    for s in SPLITS:
        for p in set(ds.split(s).patient_ids.tolist()):
            assert p not in seen, f"patient {p} in both {seen[p]} and {s}"
            seen[p] = s


def assert_interface(ds: MedicalDataset, size: int, channels: int) -> None:
    """Shapes, dtypes and value ranges of the common interface."""
    ds.check()
    assert not ds.info.synthetic
    for s in SPLITS:
        sp = ds.split(s)
        assert sp.pixels.dtype == np.uint8 and sp.pixels.shape[1:] == (channels, size, size)
        x = sp.images()
        assert x.dtype.is_floating_point and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
