"""LGG MRI reader: FLAIR channel, masks, patient grouping across sessions."""

from __future__ import annotations

import numpy as np
import pytest

from medsec.data import load_dataset
from medsec.data.formats import read_dataset
from medsec.errors import DataError
from tests.data.fixtures_real import make_lgg
from tests.data.formats.helpers import assert_interface, assert_no_patient_leak, image_ids, nearest_id


def test_brain_mri_flair_masks_and_patients(tmp_path, caplog):
    fx = make_lgg(tmp_path)
    with caplog.at_level("WARNING", logger="medsec.data.formats"):
        ds = load_dataset("brain-mri", data_root=tmp_path, size=32)
    assert "skipped 1 slices without a <name>_mask.tif" in caplog.text
    assert_interface(ds, 32, 1)
    assert ds.info.task == "segmentation" and ds.info.class_names == ("background", "lesion")
    assert_no_patient_leak(ds)
    total = 0
    for s in ("train", "val", "test"):
        sp = ds.split(s)
        total += len(sp)
        assert sp.targets.dtype == np.int64 and sp.targets.shape[1:] == (32, 32)
        assert set(np.unique(sp.targets).tolist()) <= {0, 1}
        for v, m, p in zip(image_ids(ds, s), sp.targets, sp.patient_ids, strict=True):
            t = fx.truth[nearest_id(v, fx.truth)]  # FLAIR (channel 1) carries the id
            assert p == t["patient"]
            assert m.sum() == (16 * 16 if t["lesion"] else 0)  # 32x32 square of 64 -> 16x16 of 32
    assert total == len(fx.truth) == 20
    # the patient with two dated sessions has all 6 slices in one split
    for s in ("train", "val", "test"):
        if "TCGA_DU_4900" in ds.split(s).patient_ids:
            assert (ds.split(s).patient_ids == "TCGA_DU_4900").sum() == 6


def test_brain_mri_channel_and_lesion_only(tmp_path):
    make_lgg(tmp_path)
    ds = read_dataset("brain-mri", tmp_path, size=16, seed=0, channel=2, lesion_only=True)
    for s in ("train", "val", "test"):
        assert np.all(ds.split(s).pixels == 255)  # post-contrast channel of the fixture
        assert np.all(ds.split(s).targets.reshape(len(ds.split(s)), -1).any(axis=1))
    with pytest.raises(DataError, match="channel must be 0"):
        read_dataset("brain-mri", tmp_path, size=16, seed=0, channel=3)
