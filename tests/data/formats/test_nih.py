"""NIH ChestX-ray14 reader: labels, split sources, patient leakage, errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from medsec.data import load_dataset
from medsec.data.formats.infos import CHEST14_FINDINGS
from medsec.errors import DataError
from tests.data.fixtures_real import make_nih
from tests.data.formats.helpers import assert_interface, assert_no_patient_leak, image_ids, nearest_id


def test_chest14_official_lists(tmp_path):
    fx = make_nih(tmp_path)
    ds = load_dataset("chest14", data_root=tmp_path, size=32)
    assert_interface(ds, 32, 1)
    assert ds.info.class_names == CHEST14_FINDINGS and ds.info.task == "multilabel"
    assert ds.train.targets.dtype == np.float32 and ds.train.targets.shape[1] == 14
    assert_no_patient_leak(ds)
    # the official test list is the test split: patients 10, 11, 12
    assert set(ds.test.patient_ids.tolist()) == {"10", "11", "12"}
    assert len(ds.train) + len(ds.val) + len(ds.test) == 24 and len(ds.val) > 0
    for s in ("train", "val", "test"):
        sp = ds.split(s)
        for v, y, p in zip(image_ids(ds, s), sp.targets, sp.patient_ids, strict=True):
            t = fx.truth[nearest_id(v, fx.truth)]
            np.testing.assert_array_equal(y, t["findings"])
            assert p == t["patient"]


def test_chest2_any_finding(tmp_path):
    fx = make_nih(tmp_path)
    ds = load_dataset("chest2", data_root=tmp_path, size=32)
    assert ds.info.class_names == ("No Finding", "Finding") and ds.train.targets.dtype == np.int64
    for s in ("train", "val", "test"):
        for v, y in zip(image_ids(ds, s), ds.split(s).targets, strict=True):
            assert y == int(fx.truth[nearest_id(v, fx.truth)]["findings"].any())
    all_y = np.concatenate([ds.split(s).targets for s in ("train", "val", "test")])
    assert set(all_y.tolist()) == {0, 1}


def test_val_split_is_deterministic_and_seed_dependent(tmp_path):
    make_nih(tmp_path, n_patients=30, per_patient=1)
    a = load_dataset("chest2", data_root=tmp_path, size=16, seed=1)
    b = load_dataset("chest2", data_root=tmp_path, size=16, seed=1)
    c = load_dataset("chest2", data_root=tmp_path, size=16, seed=2)
    assert a.val.patient_ids.tolist() == b.val.patient_ids.tolist()
    assert sorted(a.val.patient_ids.tolist()) != sorted(c.val.patient_ids.tolist())


def test_chexnet_lists_take_precedence(tmp_path):
    make_nih(tmp_path, lists="chexnet")
    ds = load_dataset("chest14", data_root=tmp_path, size=16)
    assert set(ds.val.patient_ids.tolist()) == {"8", "9"}
    assert set(ds.test.patient_ids.tolist()) == {"10", "11", "12"}
    assert_no_patient_leak(ds)


def test_no_lists_falls_back_to_patient_split_with_warning(tmp_path, caplog):
    make_nih(tmp_path, lists="none", n_patients=20)
    with caplog.at_level(logging.WARNING, logger="medsec.data.formats"):
        ds = load_dataset("chest14", data_root=tmp_path, size=16)
    assert "no split lists" in caplog.text
    assert_no_patient_leak(ds)
    assert len(ds.train) > len(ds.test) > 0


def test_missing_images_are_counted(tmp_path, caplog):
    fx = make_nih(tmp_path)
    (fx.root / "images_001" / "images" / "00000001_000.png").unlink()
    with caplog.at_level(logging.WARNING, logger="medsec.data.formats"):
        ds = load_dataset("chest14", data_root=fx.root, size=16)
    assert "skipped 1 images listed in Data_Entry_2017.csv but not found" in caplog.text
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == 23


def test_missing_column_names_file_and_column(tmp_path):
    fx = make_nih(tmp_path)
    csv = fx.root / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Patient ID", "PatientId", 1))
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv lacks column\(s\) Patient ID"):
        load_dataset("chest14", data_root=tmp_path, size=16)


def test_unreadable_image_names_file(tmp_path):
    fx = make_nih(tmp_path)
    (fx.root / "images_002" / "images" / "00000011_001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*00000011_001\.png"):
        load_dataset("chest14", data_root=tmp_path, size=16)


def test_missing_folder_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="does not hold the expected layout: Data_Entry_2017.csv"):
        load_dataset("chest14", data_root=tmp_path, size=16)
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("chest14", data_root=tmp_path / "nowhere", size=16)
    fx = make_nih(tmp_path)
    for f in (fx.root / "images_002" / "images").iterdir():
        f.unlink()  # every test-list patient lives in images_002
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_dataset("chest14", data_root=tmp_path, size=16)


def test_rgba_and_16bit_png_become_grayscale(tmp_path):
    fx = make_nih(tmp_path)
    img = fx.root / "images_001" / "images" / "00000001_000.png"
    Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 20).save(img)
    ds = load_dataset("chest14", data_root=tmp_path, size=16, cache_dir=tmp_path / "c")
    assert ds.image_shape == (1, 16, 16)
    allpx = np.concatenate([ds.split(s).pixels for s in ("train", "val", "test")])
    assert allpx.max() > 200  # the 16-bit ramp was scaled, not clipped to a constant
