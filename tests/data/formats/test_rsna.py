"""RSNA pneumonia reader: DICOM decoding (JPEG Baseline, raw 8-bit, 16-bit MONOCHROME1), labels, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medsec.data import load_dataset
from medsec.errors import DataError
from tests.data.fixtures_real import make_rsna
from tests.data.formats.helpers import assert_interface, assert_no_patient_leak, image_ids, nearest_id


def test_rsna_labels_boxes_and_pixels(tmp_path):
    fx = make_rsna(tmp_path)
    ds = load_dataset("rsna", data_root=tmp_path, size=32)
    assert_interface(ds, 32, 1)
    assert ds.info.class_names == ("Normal", "Pneumonia") and ds.info.modality == "CR"
    assert_no_patient_leak(ds)
    seen = set()
    for s in ("train", "val", "test"):
        sp = ds.split(s)
        for v, y, p, nb in zip(image_ids(ds, s), sp.targets, sp.patient_ids, sp.extra["boxes"], strict=True):
            t = fx.truth[nearest_id(v, fx.truth)]
            assert (y, p, nb) == (t["target"], t["patient"], t["boxes"])
            seen.add(p)
    assert len(seen) == 12  # one image per patient although positives have two CSV rows


def test_rsna_split_fractions_option(tmp_path):
    make_rsna(tmp_path, n_patients=20)
    ds = load_dataset("rsna", data_root=tmp_path, size=16)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (14, 2, 4)


def test_rsna_errors(tmp_path):
    fx = make_rsna(tmp_path)
    (fx.root / "stage_2_train_images" / sorted((fx.root / "stage_2_train_images").iterdir())[3].name
     ).write_bytes(b"\0" * 200)
    with pytest.raises(DataError, match=r"cannot read DICOM pixels from .*\.dcm"):
        load_dataset("rsna", data_root=tmp_path, size=16)
    csv = fx.root / "stage_2_train_labels.csv"
    csv.write_text(csv.read_text().replace("Target", "label", 1))
    with pytest.raises(DataError, match=r"stage_2_train_labels\.csv lacks column\(s\) Target"):
        load_dataset("rsna", data_root=tmp_path, size=16)
    with pytest.raises(DataError, match="stage_2_train_labels.csv and stage_2_train_images"):
        load_dataset("rsna", data_root=tmp_path / "rsna-pneumonia-detection-challenge" / "stage_2_train_images",
                     size=16)


def test_rsna_missing_dicoms_counted(tmp_path, caplog):
    fx = make_rsna(tmp_path)
    victims = sorted((fx.root / "stage_2_train_images").iterdir())[:2]
    for v in victims:
        v.unlink()
    with caplog.at_level("WARNING", logger="medsec.data.formats"):
        ds = load_dataset("rsna", data_root=tmp_path, size=16)
    assert "skipped 2 patients in stage_2_train_labels.csv without" in caplog.text
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == 10
    assert np.isin([v.stem for v in victims], np.concatenate(
        [ds.split(s).patient_ids for s in ("train", "val", "test")])).sum() == 0
