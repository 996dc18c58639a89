"""The report of the survey attacks: one table per attack, fooling-rate figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsec.config import ExperimentConfig
from medsec.report.document import Report, markdown_table
from medsec.report.figures import line_plot


def _pct(v: Any) -> float:
    return 100.0 * float(v) if v is not None else float("nan")


def survey_markdown(rows: list[dict[str, Any]], cfg: ExperimentConfig, figures: list[Path], out_dir: Path) -> str:
    """The survey section of the report: one table per attack, numbers in percent."""
    by = {a: [r for r in rows if r["attack"] == a] for a in ("patch", "onepixel", "uap", "backdoor", "feature_collision")}
    parts = [f"Each attack of Sipola et al.'s list on the profile's victims ({cfg.profile} profile, "
             f"{cfg.data.image_size} px, synthetic data unless a data root is given). Fooling rate = share of "
             f"correctly classified test images the attack makes wrong; all numbers in percent. eps in [0, 1] pixel units."]
    parts += ["", "### Adversarial patch (universal, random position; Brown et al.)", "",
              markdown_table(["dataset", "patch area %", "side px", "clean acc", "patched acc", "fooling rate"],
                             [[r["dataset"], _pct(r["patch_area"]), r["patch_px"], _pct(r["clean_accuracy"]),
                               _pct(r["adv_accuracy"]), _pct(r["fooling_rate"])] for r in by["patch"]])]
    parts += ["", "### One-pixel attack (differential evolution; Su et al.)", "",
              markdown_table(["dataset", "pixels k", "max changed", "clean acc", "adv acc", "fooling rate"],
                             [[r["dataset"], r["pixels"], r["max_pixels_changed"], _pct(r["clean_accuracy"]),
                               _pct(r["adv_accuracy"]), _pct(r["fooling_rate"])] for r in by["onepixel"]])]
    parts += ["", "### Universal adversarial perturbation (one tensor; fooling rate on unseen test images)", "",
              markdown_table(["dataset", "eps", "clean acc", "adv acc", "fooling rate", "label change (test)",
                              "label change (fit set)"],
                             [[r["dataset"], f"{r['eps']:g}", _pct(r["clean_accuracy"]), _pct(r["adv_accuracy"]),
                               _pct(r["fooling_rate"]), _pct(r["label_change_rate"]),
                               _pct(r["fit_label_change_rate"])] for r in by["uap"]])]
    bd_rows = [[r["dataset"], _pct(r["rate"]), r["n_poisons"], _pct(r["clean_accuracy_unpoisoned"]),
                _pct(r["clean_accuracy_poisoned"]),
                _pct(r["clean_accuracy_poisoned"]) - _pct(r["clean_accuracy_unpoisoned"]),
                _pct(r["trigger_success"]), _pct(r["trigger_success_unpoisoned"])] for r in by["backdoor"]]
    parts += ["", f"### BadNets backdoor (trigger -> class {cfg.survey.backdoor_target_class}; victim retrained from scratch)",
              "", markdown_table(["dataset", "p %", "poisons", "clean acc (clean model)", "clean acc (poisoned)",
                                  "difference", "trigger success", "trigger on clean model"], bd_rows)]
    ok = [r for r in by["backdoor"] if r["rate"] <= 0.05 + 1e-12]
    if ok:
        met = [r for r in ok if r["trigger_success"] >= 0.9
               and r["clean_accuracy_poisoned"] >= r["clean_accuracy_unpoisoned"] - 0.02]
        parts += ["", f"Goal (clean accuracy within 2 points, trigger success >= 90% at p <= 5%): met in "
                      f"{len(met)} of {len(ok)} settings."]
    parts += ["", "### Clean-label feature collision (Shafahi et al.; head retrained on frozen features)", "",
              markdown_table(["dataset", "targets", "poisons per target", "eps", "success rate"],
                             [[r["dataset"], r["n_targets"], r["n_poisons"], f"{r['eps']:g}", _pct(r["success_rate"])]
                              for r in by["feature_collision"]])]
    if figures:
        parts += [""] + [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in figures]
    return "\n".join(parts)


def survey_figures(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Fooling rate against patch size and against the number of pixels, one line per dataset."""
    paths = []
    for attack, key, xlabel in (("patch", "patch_area", "patch area (fraction of the image)"),
                                ("onepixel", "pixels", "pixels changed (k)")):
        rr = [r for r in rows if r["attack"] == attack]
        if rr:
            lines = {ds: [(r[key], 100 * r["fooling_rate"]) for r in rr if r["dataset"] == ds]
                     for ds in sorted({r["dataset"] for r in rr})}
            paths.append(line_plot(lines, folder / f"survey_{attack}.png", xlabel, "fooling rate (%)"))
    return paths


def write_survey_report(result: dict[str, Any], cfg: ExperimentConfig, out: str | Path) -> list[Path]:
    """Draw the figures into out/figures and write report.md and report.html; the figures' paths."""
    out_dir = Path(out)
    figures = survey_figures(result["rows"], out_dir / "figures")
    report = Report(f"medsec survey attacks ({cfg.profile} profile)")
    report.add("Survey attacks (Sipola et al.)", survey_markdown(result["rows"], cfg, figures, out_dir))
    report.write(out_dir)
    return figures
