"""The report of Li & Zhu's Table 1: ours beside the paper's, and the detection detail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsec.report.document import Report, markdown_table, provenance_markdown
from medsec.studies.li_zhu import ATTACKS, METHODS, SETTINGS

METHOD_LABEL = {"none": "No defence", "iso": "ISO", "ocsvm": "OCSVM", "mgm": "MGM"}


def li_zhu_report(result: dict[str, Any]) -> Report:
    """Markdown/HTML report: our Table 1 beside the paper's."""
    r = Report("Li & Zhu (ISBI 2020) Table 1 — reproduction on embedded data")
    r.add("Setup", (
        f"<div class='synthetic'>Data: <b>{result['dataset']}</b> — synthetic phantoms, not NIH ChestX-ray14: "
        "compare trends, not digits.</div>\n\n"
        f"Victim {result['victim']}; black-box surrogate {result['surrogate']}. {result['n_clean']} clean + "
        f"{result['n_adv']} adversarial test images per attack (the paper: 1000 + 1000). White-box eps 0.02, "
        f"black-box eps 0.05 ([0, 1] pixel units), {result['steps']} steps for BIM/PGD/MIM. Detector thresholds "
        "reject 5% of clean training images. Clean weighted AUROC of the victim: "
        f"{result['clean_weighted_auroc']:.3f} ± {result['clean_auroc_std']:.3f}.\n\n"
        "Each cell: F1 / weighted AUROC ± std over findings — ours, then the paper's. F1 without a detector is 0 "
        "here (nothing is flagged); the paper prints 0.5 for that baseline."))
    for setting in SETTINGS:
        rows = []
        for m in ("none", *METHODS):
            line: list[Any] = [METHOD_LABEL[m]]
            for attack in ATTACKS:
                cell = next(c for c in result["rows"] if c["setting"] == setting and c["attack"] == attack)
                v = cell["methods"][m]
                p = result["paper_table"][setting][m][attack]
                line.append(f"{v['f1']:.3f} / {v['auroc']:.3f} ± {v['auroc_std']:.3f}")
                line.append(f"{p[0]:.3f} / {p[1]:.3f}")
            rows.append(line)
        headers = ["method"] + [h for a in ATTACKS for h in (f"{a.upper()} ours", f"{a.upper()} paper")]
        eps = SETTINGS[setting]["eps"]
        r.add(f"{setting.capitalize()} attack (eps {eps})", markdown_table(headers, rows))
    det_rows = []
    for c in result["rows"]:
        det_rows.append([c["setting"], c["attack"].upper(), c["top_finding_flipped"] * 100] +
                        [c["methods"][m]["detection_auroc"] * 100 for m in METHODS] +
                        [c["methods"][m]["adv_rejected"] * 100 for m in METHODS])
    r.add("Detection detail", "Top finding flipped: % of adversarial images whose top finding changed. "
          "Detection AUROC (%) of each score, and % of adversarial images rejected at the 5%-FPR threshold.\n\n" +
          markdown_table(["setting", "attack", "top flipped %"] + [f"{METHOD_LABEL[m]} det. AUROC" for m in METHODS]
                         + [f"{METHOD_LABEL[m]} rejected %" for m in METHODS], det_rows))
    return r


def write_li_zhu_report(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html (with the run's provenance) into `out`."""
    report = li_zhu_report(result)
    report.add("Provenance", provenance_markdown(result["provenance"]))
    return report.write(out)
