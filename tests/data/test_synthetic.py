"""The embedded synthetic phantoms: determinism, shapes, label types, value ranges, class coverage."""

from __future__ import annotations

import numpy as np
import pytest

from medsec.data import available_datasets
from medsec.data.base import MedicalDataset
from medsec.data.registry import generate_synthetic
from medsec.data.synthetic import GENERATORS
from medsec.data.synthetic.chest import FINDINGS

EXPECTED = {
    "chest14": ("multilabel", 14, 1, "CR"),
    "chest2": ("classification", 2, 1, "CR"),
    "rsna": ("classification", 2, 1, "CR"),
    "ct-slices": ("classification", 2, 1, "CT"),
    "brain-mri": ("segmentation", 2, 1, "MR"),
    "oct": ("classification", 4, 1, "OPT"),
    "isic": ("segmentation", 2, 3, "XC"),
}


def _gen(name: str, n: int = 48, size: int = 32, seed: int = 0, difficulty: float | None = None) -> MedicalDataset:
    return generate_synthetic(name, size=size, n_train=n, n_val=4, n_test=4, seed=seed, difficulty=difficulty)


def test_all_seven_datasets_registered_and_synthetic() -> None:
    assert set(EXPECTED) <= set(available_datasets())
    for name in EXPECTED:
        info = GENERATORS[name].info
        assert info.synthetic and "synthetic" in info.label
        assert 0.0 <= GENERATORS[name].default_difficulty <= 1.0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_dtypes_and_ranges(name: str) -> None:
    task, k, channels, modality = EXPECTED[name]
    ds = _gen(name)
    info = ds.info
    assert (info.task, info.num_outputs, info.channels, info.modality) == (task, k, channels, modality)
    sp = ds.train
    assert sp.pixels.dtype == np.uint8 and sp.pixels.shape == (48, channels, 32, 32)
    # real images: a spread of grey levels, not blank or saturated
    assert sp.pixels.std() > 15 and sp.pixels.min() < 40 and sp.pixels.max() > 150
    assert sp.patient_ids is not None and len(sp.patient_ids) == 48
    assert all(str(p).startswith("SYN-") for p in sp.patient_ids)
    x = sp.images()
    assert x.dtype.is_floating_point and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    t = sp.targets
    if task == "classification":
        assert t.dtype == np.int64 and t.shape == (48,) and t.min() >= 0 and t.max() < k
    elif task == "multilabel":
        assert t.dtype == np.float32 and t.shape == (48, k) and set(np.unique(t)) <= {0.0, 1.0}
    else:
        assert t.dtype == np.int64 and t.shape == (48, 32, 32) and set(np.unique(t)) <= {0, 1}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_deterministic_per_seed_and_different_across_seeds(name: str) -> None:
    a = _gen(name, n=8, seed=3)
    b = _gen(name, n=8, seed=3)
    c = _gen(name, n=8, seed=4)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(s).pixels, b.split(s).pixels)
        np.testing.assert_array_equal(a.split(s).targets, b.split(s).targets)
        np.testing.assert_array_equal(a.split(s).patient_ids, b.split(s).patient_ids)
    assert not np.array_equal(a.train.pixels, c.train.pixels)
    # the splits are drawn from different streams
    assert not np.array_equal(a.train.pixels[:4], a.val.pixels)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_any_size(name: str) -> None:
    for size in (16, 96):
        ds = generate_synthetic(name, size=size, n_train=2, n_val=1, n_test=1, seed=0)
        assert ds.train.pixels.shape[-2:] == (size, size)
        if ds.info.task == "segmentation":
            assert ds.train.targets.shape[-2:] == (size, size)


def test_classification_class_coverage() -> None:
    for name, k in (("chest2", 2), ("rsna", 2), ("ct-slices", 2), ("oct", 4)):
        y = _gen(name, n=120, size=16).train.targets
        counts = np.bincount(y, minlength=k)
        assert (counts > 0.1 * len(y)).all(), (name, counts)


def test_chest14_prevalences_and_balanced_chest2() -> None:
    lab = _gen("chest14", n=1500, size=16).train.targets
    prev = lab.mean(axis=0)
    assert (prev > 0.02).all() and (prev < 0.3).all(), dict(zip(FINDINGS, prev, strict=True))
    assert len(np.unique(np.round(prev, 2))) > 3  # not one shared prevalence
    assert 0.4 < lab.any(axis=1).mean() < 0.6
    # at least one image with several findings: the labels are not mutually exclusive
    assert (lab.sum(axis=1) >= 2).any()


def test_chest2_is_any_finding_of_chest14() -> None:
    d = GENERATORS["chest14"].default_difficulty
    c14 = _gen("chest14", n=64, seed=7, difficulty=d)
    c2 = _gen("chest2", n=64, seed=7, difficulty=d)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(c2.split(s).targets, c14.split(s).targets.any(axis=1).astype(np.int64))
        np.testing.assert_array_equal(c2.split(s).pixels, c14.split(s).pixels)
    # the labels do not depend on the difficulty
    c2_hard = _gen("chest2", n=64, seed=7, difficulty=1.0)
    np.testing.assert_array_equal(c2_hard.train.targets, c2.train.targets)


def test_brain_masks_most_slices_have_a_lesion_inside_the_head() -> None:
    sp = _gen("brain-mri", n=80, size=32).train
    has = sp.targets.reshape(len(sp), -1).any(axis=1)
    assert 0.6 < has.mean() < 1.0
    np.testing.assert_array_equal(sp.extra["has_lesion"], has.astype(np.int64))
    # the lesion is hyperintense: brighter than the rest of the image where it is annotated
    px = sp.pixels[:, 0].astype(float)
    inside = px[sp.targets == 1].mean()
    assert inside > px[(sp.targets == 0) & (px > 30)].mean() + 20


def test_isic_masks_and_labels() -> None:
    sp = _gen("isic", n=80, size=32).train
    assert sp.pixels.shape[1] == 3
    lab = sp.extra["label"]
    assert lab.dtype == np.int64 and lab.shape == (80,) and set(np.unique(lab)) == {0, 1}
    frac = sp.targets.reshape(80, -1).mean(axis=1)
    assert (frac > 0.02).all() and (frac < 0.9).all()
    # pigmented lesions are darker than the surrounding skin
    grey = sp.pixels.astype(float).mean(axis=1)
    centre = grey[:, 12:20, 12:20][sp.targets[:, 12:20, 12:20] == 1].mean()
    assert centre < grey[sp.targets == 0].mean()


def _finding_contrast(name: str, difficulty: float) -> float:
    """Mean |difference| between images with and without the finding at one difficulty."""
    sp = _gen(name, n=200, size=32, difficulty=difficulty, seed=1).train
    if sp.targets.ndim == 3:  # segmentation: lesion vs. other tissue
        px = sp.pixels.astype(float).mean(axis=1)
        return float(px[sp.targets == 1].mean() - px[(sp.targets == 0) & (px > 30)].mean())
    y = sp.targets if sp.targets.ndim == 1 else sp.targets.any(axis=1)
    px = sp.pixels.astype(float)
    return float(np.abs(px[y == 1].mean(axis=0) - px[y == 0].mean(axis=0)).mean())


@pytest.mark.parametrize("name", ["brain-mri", "rsna"])
def test_difficulty_weakens_findings(name: str) -> None:
    assert _finding_contrast(name, 0.0) > _finding_contrast(name, 1.0)


def test_same_rng_same_images_whatever_the_chunking() -> None:
    # a batch of n and the first images of a batch of 2n differ only by what comes after in the rng
    # stream, so generation must not depend on global state: two fresh generators agree exactly
    spec = GENERATORS["oct"]
    a = spec.generate(10, 24, np.random.default_rng(5), 0.3)
    b = spec.generate(10, 24, np.random.default_rng(5), 0.3)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    c = spec.generate(10, 24, np.random.default_rng(5), 0.9)
    np.testing.assert_array_equal(a.targets, c.targets)
    assert not np.array_equal(a.pixels, c.pixels)
