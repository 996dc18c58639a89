"""DICOM digital signatures and the integrity gate in front of inference (see docs/integrity.md)."""
