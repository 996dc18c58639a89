"""Kermany OCT reader: class folders, official test, patient-wise validation, overlap removal."""

from __future__ import annotations

import shutil

import pytest

from medsec.data import load_dataset
from medsec.errors import DataError
from tests.data.fixtures_real import make_oct
from tests.data.formats.helpers import assert_interface, assert_no_patient_leak, image_ids, nearest_id


def test_oct_labels_and_splits(tmp_path, caplog):
    fx = make_oct(tmp_path)
    with caplog.at_level("WARNING", logger="medsec.data.formats"):
        ds = load_dataset("oct", data_root=tmp_path, size=32)
    assert "skipped 2 train/val images of patients who are also in the test split" in caplog.text
    assert_interface(ds, 32, 1)
    assert ds.info.class_names == ("CNV", "DME", "DRUSEN", "NORMAL") and ds.info.modality == "OPT"
    assert_no_patient_leak(ds)
    for s in ("train", "val", "test"):
        sp = ds.split(s)
        for v, y, p in zip(image_ids(ds, s), sp.targets, sp.patient_ids, strict=True):
            t = fx.truth[nearest_id(v, fx.truth)]
            assert (y, p) == (t["target"], t["patient"])
            assert (t["split"] == "test") == (s == "test")
    assert len(ds.test) == 4 and len(ds.val) > 0
    assert set(ds.test.targets.tolist()) == {0, 1, 2, 3}


def test_oct_missing_class_folder(tmp_path):
    fx = make_oct(tmp_path)
    shutil.rmtree(fx.root / "test" / "DRUSEN")
    with pytest.raises(DataError, match=r"missing folder .*test/DRUSEN"):
        load_dataset("oct", data_root=tmp_path, size=16)
