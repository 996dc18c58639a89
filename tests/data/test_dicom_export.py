"""DICOM export: valid Part 10 files, identical pixels on re-read, fitting SOP classes, the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import validate_file_meta
from pydicom.uid import ExplicitVRLittleEndian
from typer.testing import CliRunner

from medsec.cli import app
from medsec.data.dicom_export import SOP_CLASSES, export_split, read_dicom_pixels, write_dicom
from medsec.data.registry import generate_synthetic
from medsec.data.synthetic import GENERATORS
from medsec.errors import MedsecError

NAMES = ["chest14", "rsna", "ct-slices", "brain-mri", "oct", "isic"]


@pytest.fixture(scope="module")
def samples() -> dict:
    return {n: generate_synthetic(n, size=24, n_train=1, n_val=1, n_test=3, seed=0) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_export_rereads_with_identical_pixels(name: str, samples: dict, tmp_path: Path) -> None:
    ds = samples[name]
    px = ds.test.pixels[0]
    path = write_dicom(px, tmp_path / "a.dcm", info=ds.info, patient_id=str(ds.test.patient_ids[0]), uid_key="k")
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    f = pydicom.dcmread(path)
    validate_file_meta(f.file_meta, enforce_standard=True)
    assert f.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert f.file_meta.MediaStorageSOPClassUID == f.SOPClassUID == SOP_CLASSES[ds.info.modality][0]
    assert f.file_meta.MediaStorageSOPInstanceUID == f.SOPInstanceUID
    assert f.Modality == ds.info.modality
    assert (f.Rows, f.Columns, f.SamplesPerPixel) == (24, 24, px.shape[0])
    assert f.PhotometricInterpretation == ("RGB" if px.shape[0] == 3 else "MONOCHROME2")
    np.testing.assert_array_equal(read_dicom_pixels(path), px)
    # pydicom's own decoding agrees
    arr = f.pixel_array
    arr = np.moveaxis(arr, -1, 0) if px.shape[0] == 3 else arr[None]
    np.testing.assert_array_equal(arr.astype(np.uint8), px)
    # labelled synthetic everywhere a viewer shows it, and modules for a Creator RSA profile to cover
    assert str(f.PatientName) == "SYNTHETIC^PHANTOM"
    assert "SYNTHETIC" in f.SeriesDescription and "SYNTHETIC" in f.ImageComments
    assert f.Manufacturer and f.ImageType and f.StudyInstanceUID and f.SeriesInstanceUID
    assert len({f.StudyInstanceUID, f.SeriesInstanceUID, f.SOPInstanceUID}) == 3


def test_ct_rescale_maps_to_lung_window(samples: dict, tmp_path: Path) -> None:
    ds = samples["ct-slices"]
    f = pydicom.dcmread(write_dicom(ds.test.pixels[0], tmp_path / "ct.dcm", info=ds.info, patient_id="P"))
    assert f.BitsAllocated == 16 and f.RescaleType == "HU"
    hu = np.array([0, 255]) * float(f.RescaleSlope) + float(f.RescaleIntercept)
    assert hu[0] == pytest.approx(-1350) and hu[1] == pytest.approx(150, abs=0.01)


def test_uids_deterministic_with_key_and_fresh_without(samples: dict, tmp_path: Path) -> None:
    ds = samples["oct"]
    px, info = ds.test.pixels[0], ds.info
    a = write_dicom(px, tmp_path / "a.dcm", info=info, patient_id="P1", uid_key="x/1")
    b = write_dicom(px, tmp_path / "b.dcm", info=info, patient_id="P1", uid_key="x/1")
    assert a.read_bytes() == b.read_bytes()
    c = write_dicom(px, tmp_path / "c.dcm", info=info, patient_id="P1", uid_key="x/2")
    d = write_dicom(px, tmp_path / "d.dcm", info=info, patient_id="P1")
    e = write_dicom(px, tmp_path / "e.dcm", info=info, patient_id="P1")
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in (a, c, d, e)}
    assert len(uids) == 4


def test_export_split_names_and_ground_truth(samples: dict, tmp_path: Path) -> None:
    ds = samples["chest14"]
    paths = export_split(ds.test, ds.info, tmp_path / "out", n=2, split_name="test", seed=0)
    assert [p.name for p in paths] == ["chest14_test_00000.dcm", "chest14_test_00001.dcm"]
    f = pydicom.dcmread(paths[1])
    assert f.PatientID == ds.test.patient_ids[1] and int(f.InstanceNumber) == 2
    assert "ground truth: findings" in f.ImageComments
    with pytest.raises(MedsecError, match="--n"):
        export_split(ds.test, ds.info, tmp_path / "out", n=99)


def test_bad_input_is_a_clear_error(samples: dict, tmp_path: Path) -> None:
    info = samples["oct"].info
    with pytest.raises(MedsecError, match="uint8"):
        write_dicom(np.zeros((1, 8, 8), np.float32), tmp_path / "x.dcm", info=info, patient_id="P")
    with pytest.raises(MedsecError, match="uint8"):
        write_dicom(np.zeros((2, 8, 8), np.uint8), tmp_path / "x.dcm", info=info, patient_id="P")
    bad_info = GENERATORS["oct"].info.__class__(**{**GENERATORS["oct"].info.__dict__, "modality": "US"})
    with pytest.raises(MedsecError, match="modality"):
        write_dicom(np.zeros((1, 8, 8), np.uint8), tmp_path / "x.dcm", info=bad_info, patient_id="P")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file")
    with pytest.raises(MedsecError, match="junk.dcm"):
        read_dicom_pixels(junk)
    assert not (tmp_path / "x.dcm").exists()


def test_cli_export_dicom(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "dcm"
    res = runner.invoke(app, ["export-dicom", "--dataset", "isic", "--split", "test", "--n", "3", "--out", str(out),
                              "--size", "32", "--seed", "1", "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 3
    f = pydicom.dcmread(files[0])
    assert f.Modality == "XC" and (f.Rows, f.Columns) == (32, 32)
    assert read_dicom_pixels(files[0]).shape == (3, 32, 32)
    # the same image as the library gives
    ds = generate_synthetic("isic", size=32, n_train=1, n_val=1, n_test=3, seed=1)
    np.testing.assert_array_equal(read_dicom_pixels(files[2]), ds.test.pixels[2])


def test_cli_export_dicom_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["export-dicom", "--dataset", "nope", "--out", str(tmp_path / "o"),
                              "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code != 0 and isinstance(res.exception, MedsecError) and "nope" in str(res.exception)
    res = runner.invoke(app, ["export-dicom", "--dataset", "oct", "--split", "dev", "--out", str(tmp_path / "o"),
                              "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code != 0 and "dev" in str(res.exception)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_cli_export_dicom_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = CliRunner().invoke(app, ["export-dicom", "--dataset", "oct", "--n", "1", "--out", str(locked / "x"),
                                       "--cache-dir", str(tmp_path / "cache")])
        assert res.exit_code != 0 and isinstance(res.exception, MedsecError)
    finally:
        locked.chmod(0o700)
