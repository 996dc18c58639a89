"""ISIC 2017 reader: official splits, masks, benign/malignant label, missing validation set."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from medsec.data import load_dataset
from medsec.errors import DataError
from tests.data.fixtures_real import make_isic
from tests.data.formats.helpers import assert_interface, image_ids, nearest_id


def test_isic_masks_labels_splits(tmp_path):
    fx = make_isic(tmp_path)
    ds = load_dataset("isic", data_root=tmp_path, size=32)
    assert_interface(ds, 32, 3)
    assert ds.info.task == "segmentation" and ds.info.modality == "XC"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 3, 3)
    for s in ("train", "val", "test"):
        sp = ds.split(s)
        assert sp.patient_ids is None
        assert sp.extra["label"].dtype.kind == "i"
        assert np.all(sp.targets[:, :, :16] == 1) and np.all(sp.targets[:, :, 16:] == 0)
        assert np.all(np.abs(sp.pixels[:, 1].astype(int) - 120) <= 2)  # RGB kept in order
        for v, lab in zip(image_ids(ds, s, channel=0), sp.extra["label"], strict=True):
            t = fx.truth[nearest_id(v, fx.truth)]
            assert (lab, t["split"]) == (t["label"], s)


def test_isic_without_validation_set(tmp_path, caplog):
    make_isic(tmp_path, n_train=10, validation=False)
    with caplog.at_level(logging.WARNING, logger="medsec.data.formats"):
        ds = load_dataset("isic", data_root=tmp_path, size=16)
    assert "no ISIC-2017_Validation_Data" in caplog.text
    assert len(ds.train) + len(ds.val) == 10 and len(ds.val) >= 1


def test_isic_errors(tmp_path):
    fx = make_isic(tmp_path)
    shutil.rmtree(fx.root / "ISIC-2017_Test_v2_Part1_GroundTruth")
    with pytest.raises(DataError, match=r"missing folder .*ISIC-2017_Test_v2_Part1_GroundTruth"):
        load_dataset("isic", data_root=tmp_path, size=16)
    fx = make_isic(tmp_path / "b")
    csv = fx.root / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    csv.write_text(csv.read_text().replace("melanoma", "mel", 1))
    with pytest.raises(DataError, match=r"ISIC-2017_Validation_Part3_GroundTruth\.csv lacks column\(s\) melanoma"):
        load_dataset("isic", data_root=tmp_path / "b", size=16)
