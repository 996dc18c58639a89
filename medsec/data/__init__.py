"""Datasets: one interface (medsec.data.base) for the embedded synthetic phantoms and real data."""

from medsec.data.base import DatasetInfo, MedicalDataset, Split
from medsec.data.registry import available_datasets, load_dataset

__all__ = ["DatasetInfo", "MedicalDataset", "Split", "available_datasets", "load_dataset"]
