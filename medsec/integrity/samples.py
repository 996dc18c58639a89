"""Small DICOM files made from pixel arrays with pydicom: for the tamper demo, the tests and examples.

Kept here (and not in medsec.data) so the integrity area stands on its own: a Secondary Capture image
with patient/study identifiers, an optional nested code sequence, native or RLE-compressed (encapsulated)
Pixel Data, written explicit VR little endian.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsec.errors import MedsecError


def write_image_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    patient_id: str = "ANON0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    nested: bool = True,
    compressed: bool = False,
) -> Path:
    """Write `pixels` (uint8, (H, W), (1, H, W) or (3, H, W)) as a Secondary Capture DICOM file.

    `nested` adds a two-level code sequence (exercises sequence encoding in signatures); `compressed`
    stores the pixels RLE Lossless (encapsulated Pixel Data, pydicom's own encoder)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise MedsecError(f"pixels for {path} must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 3:
        arr = np.ascontiguousarray(arr.transpose(1, 2, 0))
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise MedsecError(f"pixels for {path} must be (H, W), (1, H, W) or (3, H, W); got {np.shape(pixels)}")
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.PatientName = "Anonymous^Patient"
    ds.PatientID = patient_id
    ds.StudyDate = "20240101"
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "medsec"
    if nested:
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "113100", "DCM", "Basic Application"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "24627-2", "LN", "Chest X-ray"
        code.ConceptNameCodeSequence = Sequence([inner])
        ds.ProcedureCodeSequence = Sequence([code])
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.SamplesPerPixel = 1 if arr.ndim == 2 else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if arr.ndim == 2 else "RGB"
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if compressed:
        ds.compress(RLELossless, arr, encoding_plugin="pydicom")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out
