"""LUNA16 reader: MetaImage parsing, world->voxel, nodule crops, malignancy labelling rule, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medsec.data import load_dataset
from medsec.data.formats import read_dataset
from medsec.data.formats.metaimage import read_header, write_metaimage
from medsec.errors import DataError
from tests.data.fixtures_real import make_luna16
from tests.data.formats.helpers import assert_interface, assert_no_patient_leak


def test_metaimage_roundtrip_and_transform(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    p = write_metaimage(tmp_path / "a.mhd", vol, (0.5, 0.7, 2.0), (-10.0, 20.0, 5.0),
                        direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    hdr = read_header(p)
    assert hdr.dims == (6, 5, 4)
    np.testing.assert_array_equal(np.asarray(hdr.volume()), vol)
    ijk = np.array([2.0, 3.0, 1.0])
    world = hdr.voxel_to_world(ijk)
    np.testing.assert_allclose(world, [-10.0 - 2 * 0.5, 20.0 + 3 * 0.7, 5.0 + 2.0])
    np.testing.assert_allclose(hdr.world_to_voxel(world), ijk)
    assert "ElementType = MET_SHORT" in p.read_text()


def test_metaimage_errors(tmp_path):
    p = write_metaimage(tmp_path / "a.mhd", np.zeros((2, 3, 4), np.int16), (1, 1, 1), (0, 0, 0))
    p.with_suffix(".raw").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match=r"a\.raw: 10 bytes, expected at least 48"):
        read_header(p)
    p.write_text("ObjectType = Image\nNDims = 3\n")
    with pytest.raises(DataError, match="not a MetaImage header"):
        read_header(p)


def test_ct_slices_labels_and_crops(tmp_path):
    fx = make_luna16(tmp_path)
    ds = load_dataset("ct-slices", data_root=tmp_path, size=32)
    assert_interface(ds, 32, 1)
    assert ds.info.class_names == ("benign", "malignant") and ds.info.modality == "CT"
    assert_no_patient_leak(ds)
    n = 0
    for s in ("train", "val", "test"):
        sp = ds.split(s)
        n += len(sp)
        # the rule: mean rating 1.5 -> benign, 4.67 -> malignant
        np.testing.assert_array_equal(sp.targets, (sp.extra["malignancy"] >= 4).astype(int))
        assert set(np.round(sp.extra["malignancy"], 2).tolist()) <= {1.5, 4.67}
        assert set(sp.patient_ids.tolist()) <= {t["seriesuid"] for t in fx.truth.values()}
        np.testing.assert_array_equal(sp.extra["diameter_mm"], 10.0)
        # the nodule (+40 HU) is at the centre of the crop, the surroundings at its corners
        centre = sp.pixels[:, 0, 14:18, 14:18].mean(axis=(1, 2))
        corner = sp.pixels[:, 0, :3, :3].mean(axis=(1, 2))
        lo, hi = -600 - 750, -600 + 750
        assert np.all(np.abs(centre - (40 - lo) / (hi - lo) * 255) < 12)
        # corners: lung air (-1000 HU) or, beyond the scan's edge, the -1024 HU fill
        air = np.array([(-1000 - lo) / (hi - lo) * 255, (-1024 - lo) / (hi - lo) * 255])
        assert np.all(np.abs(corner[:, None] - air[None]).min(axis=1) < 1.5)
    assert n == 12  # 6 series x (benign + malignant); ambiguous and unannotated nodules excluded


def test_ct_slices_rule_is_configurable(tmp_path):
    make_luna16(tmp_path, n_series=4)
    ds = read_dataset("ct-slices", tmp_path, size=16, seed=0, benign_max=3.0, match_annotations=False)
    total = sum(len(ds.split(s)) for s in ("train", "val", "test"))
    assert total == 4 * 4  # ambiguous (3.0) now benign, unannotated nodules kept
    ys = np.concatenate([ds.split(s).targets for s in ("train", "val", "test")])
    assert (ys == 0).sum() == 8 and (ys == 1).sum() == 8


def test_ct_slices_without_malignancy_csv_explains(tmp_path):
    make_luna16(tmp_path, malignancy=False)
    with pytest.raises(DataError, match=r"LUNA16 has no benign/malignant labels: supply a CSV with columns "
                                        r"seriesuid,coordX,coordY,coordZ,malignancy"):
        load_dataset("ct-slices", data_root=tmp_path, size=16)


def test_ct_slices_bad_malignancy_column(tmp_path):
    fx = make_luna16(tmp_path, n_series=3)
    with pytest.raises(DataError, match=r"malignancy\.csv lacks column\(s\) mean_rating"):
        read_dataset("ct-slices", fx.root, size=16, seed=0, malignancy_column="mean_rating")
