"""The report of the clean baseline: the victims' clean metrics and the signed-DICOM countermeasure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsec.report.document import Report, markdown_table, provenance_markdown

METRIC_LABEL = {"accuracy": "accuracy %", "weighted_auroc": "weighted AUROC %", "dice": "Dice (0-100)"}


def clean_table(rows: list[dict[str, Any]]) -> str:
    """The clean-metrics table in Markdown."""
    return markdown_table(
        ["dataset", "task", "victim", "metric", "value", "test images", "train s"],
        [[r["label"], r["task"], r["arch"], METRIC_LABEL.get(r["metric"], r["metric"]), r["value"], r["n_test"],
          r["train_seconds"]] for r in rows])


def clean_report(study: dict[str, Any], profile: str) -> Report:
    """The clean baseline report of a run_clean result."""
    rows = study["rows"]
    rep = Report(f"medsec clean baseline — profile {profile}")
    if any(r["synthetic"] for r in rows):
        rep.add("Data", "<p class='synthetic'>These results are on medsec's <b>embedded synthetic</b> phantoms, "
                "not on patient data. They show the pipeline and the relative behaviour of models; they are not "
                "clinical performance figures.</p>")
    rep.add("Clean performance of the victims",
            "Accuracy for classification, prevalence-weighted AUROC for multi-label chest14, foreground "
            "Dice for segmentation; all in percent on the held-out test split.\n\n" + clean_table(rows))
    if study.get("integrity"):
        rep.add("Signed DICOM against an attacker inside the PACS", study["integrity"])
    rep.add("Run", provenance_markdown(study["provenance"]))
    return rep


def write_clean_report(study: dict[str, Any], profile: str, out: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html into `out`."""
    return clean_report(study, profile).write(out)
