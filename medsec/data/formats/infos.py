"""Canonical descriptions of the seven medsec datasets, shared by the synthetic twins and the real readers.

A real dataset and its synthetic twin must agree on name, task, class names, channels and modality, so
that a model trained on one can be evaluated on the other and reports line up. Only `synthetic` (and the
free-text description) differ; use `real_info` / `synthetic_info` to get the flavour you need.
"""

from __future__ import annotations

from dataclasses import replace

from medsec.data.base import DatasetInfo

#: The 14 ChestX-ray14 findings in the canonical (CheXNet / Data_Entry_2017 label-list) order.
CHEST14_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)

OCT_CLASSES: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")

CANONICAL: dict[str, DatasetInfo] = {
    "chest14": DatasetInfo("chest14", "multilabel", CHEST14_FINDINGS, 1, "CR", False,
                           "NIH ChestX-ray14: 14 findings per chest radiograph (multi-label)"),
    "chest2": DatasetInfo("chest2", "classification", ("No Finding", "Finding"), 1, "CR", False,
                          "NIH ChestX-ray14: any of the 14 findings vs. No Finding"),
    "rsna": DatasetInfo("rsna", "classification", ("Normal", "Pneumonia"), 1, "CR", False,
                        "RSNA Pneumonia Detection Challenge: lung opacity (Target=1) vs. none"),
    "ct-slices": DatasetInfo("ct-slices", "classification", ("benign", "malignant"), 1, "CT", False,
                             "LUNA16 axial CT crops around nodules, lung window, benign vs. malignant"),
    "brain-mri": DatasetInfo("brain-mri", "segmentation", ("background", "lesion"), 1, "MR", False,
                             "LGG MRI (TCGA, kaggle_3m) FLAIR slices with tumour masks"),
    "oct": DatasetInfo("oct", "classification", OCT_CLASSES, 1, "OPT", False,
                       "Kermany retinal OCT B-scans: CNV, DME, DRUSEN, NORMAL"),
    "isic": DatasetInfo("isic", "segmentation", ("background", "lesion"), 3, "XC", False,
                        "ISIC 2017 dermoscopy: lesion masks, extra['label'] benign(0)/malignant(1)"),
}

#: Class names of the ISIC image-level label stored in Split.extra["label"].
ISIC_LABELS: tuple[str, ...] = ("benign", "malignant")


def real_info(name: str) -> DatasetInfo:
    """The DatasetInfo a real-data reader returns for `name` (synthetic=False)."""
    return CANONICAL[name]


def synthetic_info(name: str, description: str | None = None) -> DatasetInfo:
    """The same DatasetInfo flagged synthetic=True, for the embedded phantom twin."""
    info = CANONICAL[name]
    return replace(info, synthetic=True, description=info.description if description is None else description)
