"""Shared reader machinery: patient splits, resizing modes, dataset location, options, the cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from medsec.data import load_dataset
from medsec.data.formats import CANONICAL, read_dataset, reader_options, real_datasets, synthetic_info
from medsec.data.formats.common import fit_image, fit_mask, group_split
from medsec.errors import DataError
from tests.data.fixtures_real import make_isic, make_oct


def test_group_split_keeps_groups_together_and_is_seeded():
    groups = [f"p{i // 3}" for i in range(60)]  # 20 patients, 3 images each
    parts = group_split(groups, (0.7, 0.1, 0.2), seed=3, salt="t")
    assert sorted(np.concatenate(parts).tolist()) == list(range(60))
    sets = [{groups[i] for i in p} for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [len(s) for s in sets] == [14, 2, 4]
    again = group_split(groups, (0.7, 0.1, 0.2), seed=3, salt="t")
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = group_split(groups, (0.7, 0.1, 0.2), seed=4, salt="t")
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    tiny = group_split(["a", "b", "c"], (0.8, 0.1, 0.1), seed=0, salt="t")
    assert [len(p) for p in tiny] == [1, 1, 1]  # every split gets a patient when there are enough


def test_fit_modes():
    img = Image.fromarray(np.tile(np.arange(80, dtype=np.uint8), (40, 1)))  # 80 wide, 40 high ramp
    sq = fit_image(img, 20, 1, "squash")
    crop = fit_image(img, 20, 1, "crop")
    pad = fit_image(img, 20, 1, "pad")
    assert sq.shape == crop.shape == pad.shape == (1, 20, 20)
    assert sq[0, 0, 0] < 5 and sq[0, 0, -1] > 74  # whole width kept
    assert crop[0, 0, 0] > 15 and crop[0, 0, -1] < 64  # centre half of the width
    assert np.all(pad[0, :5] == 0) and np.all(pad[0, -5:] == 0)  # black bars above and below
    rgb = fit_image(img.convert("RGB"), 8, 3)
    assert rgb.shape == (3, 8, 8)
    m = np.zeros((40, 80), np.uint8)
    m[:, :40] = 255
    fm = fit_mask(m, 20)
    assert fm.dtype == np.int64 and fm[:, :10].all() and not fm[:, 10:].any()


def test_locate_from_parent_and_dataset_folder(tmp_path):
    fx = make_oct(tmp_path / "all")  # all/OCT2017/...
    a = load_dataset("oct", data_root=tmp_path, size=16)  # two levels above the dataset
    b = load_dataset("oct", data_root=fx.root, size=16)
    np.testing.assert_array_equal(a.test.pixels, b.test.pixels)


def test_options_are_checked(tmp_path):
    make_oct(tmp_path)
    with pytest.raises(DataError, match=r"unknown reader option\(s\) colour"):
        read_dataset("oct", tmp_path, size=16, seed=0, colour=True)
    with pytest.raises(DataError, match="fit must be squash, crop or pad"):
        read_dataset("oct", tmp_path, size=16, seed=0, fit="stretch")
    with pytest.raises(DataError, match="at least 8 px"):
        read_dataset("oct", tmp_path, size=4, seed=0)
    with pytest.raises(DataError, match="no real-data reader for 'mnist'"):
        read_dataset("mnist", tmp_path, size=16, seed=0)
    assert "malignancy_csv" in reader_options("ct-slices")
    assert {"chest14", "chest2", "rsna", "ct-slices", "brain-mri", "oct", "isic", "chestmnist"} <= set(real_datasets())


def test_canonical_infos_match_the_brief():
    assert {n: (i.task, i.channels, i.modality) for n, i in CANONICAL.items()} == {
        "chest14": ("multilabel", 1, "CR"), "chest2": ("classification", 1, "CR"),
        "rsna": ("classification", 1, "CR"), "ct-slices": ("classification", 1, "CT"),
        "brain-mri": ("segmentation", 1, "MR"), "oct": ("classification", 1, "OPT"),
        "isic": ("segmentation", 3, "XC")}
    assert synthetic_info("oct").synthetic and not CANONICAL["oct"].synthetic
    assert synthetic_info("oct").class_names == CANONICAL["oct"].class_names


def test_cache_reuses_and_invalidates(tmp_path):
    fx = make_isic(tmp_path)
    cache = tmp_path / "cache"
    a = read_dataset("isic", tmp_path, size=16, seed=0, cache_dir=cache)
    files = list((cache / "data").glob("real-isic-16px-*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    b = read_dataset("isic", tmp_path, size=16, seed=0, cache_dir=cache)
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    np.testing.assert_array_equal(a.train.pixels, b.train.pixels)
    np.testing.assert_array_equal(a.val.extra["label"], b.val.extra["label"])
    # editing an image makes a new cache entry with the new pixels
    img = fx.root / "ISIC-2017_Training_Data" / "ISIC_0000000.jpg"
    Image.fromarray(np.full((30, 40, 3), 250, np.uint8)).save(img, "JPEG", quality=95)
    os.utime(img, ns=(stamp + 10**9, stamp + 10**9))
    c = read_dataset("isic", tmp_path, size=16, seed=0, cache_dir=cache)
    assert len(list((cache / "data").glob("real-isic-16px-*.npz"))) == 2
    assert c.train.pixels.max() >= 245 and a.train.pixels[:, 0].max() < 245
    # a corrupted entry is rebuilt, not trusted
    current = next(f for f in (cache / "data").glob("real-isic-16px-*.npz") if f != files[0])
    current.write_bytes(b"garbage")
    d = read_dataset("isic", tmp_path, size=16, seed=0, cache_dir=cache)
    np.testing.assert_array_equal(c.train.pixels, d.train.pixels)
    assert current.stat().st_size > 1000  # rewritten
    e = read_dataset("isic", tmp_path, size=16, seed=0, cache=False)
    np.testing.assert_array_equal(c.train.pixels, e.train.pixels)


def test_max_images_thins_each_split(tmp_path):
    make_oct(tmp_path, train_patients=6)
    full = read_dataset("oct", tmp_path, size=16, seed=0, cache=False)
    small = read_dataset("oct", tmp_path, size=16, seed=0, max_images=3, cache=False)
    assert [len(small.split(s)) for s in ("train", "val", "test")] == [3, 3, 3]
    assert set(small.train.patient_ids.tolist()) <= set(full.train.patient_ids.tolist())
    again = read_dataset("oct", tmp_path, size=16, seed=0, max_images=3, cache=False)
    np.testing.assert_array_equal(small.train.pixels, again.train.pixels)
    with pytest.raises(DataError, match="max_images must be at least 1"):
        read_dataset("oct", tmp_path, size=16, seed=0, max_images=0)


def test_open_image_drafts_large_jpegs(tmp_path):
    from medsec.data.formats.common import open_image

    p = tmp_path / "big.jpg"
    Image.fromarray(np.full((600, 800, 3), 90, np.uint8)).save(p, "JPEG", quality=95)
    im = open_image(p, "t", draft=64)
    assert im.info["original_size"] == (800, 600)
    assert 64 <= min(im.size) and im.size[0] <= 200  # decoded at 1/4 or 1/8 scale, never below 64
    assert abs(int(np.asarray(im).mean()) - 90) <= 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"cannot read image .*bad\.png"):
        open_image(bad, "t")
