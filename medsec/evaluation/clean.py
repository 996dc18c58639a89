"""The clean baseline: train (or load) every victim of an experiment and tabulate its clean metrics."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from medsec.config import ExperimentConfig
from medsec.metrics import PRIMARY_METRIC
from medsec.models.victims import get_victim, resolve_device
from medsec.paths import ensure_writable_dir, write_text_atomic
from medsec.report.document import Report, markdown_table, provenance_markdown, run_provenance

console = Console()

METRIC_LABEL = {"accuracy": "accuracy %", "weighted_auroc": "weighted AUROC %", "dice": "Dice (0-100)"}


def clean_rows(cfg: ExperimentConfig, datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per victim: dataset, task, architecture, headline metric (percent), all metrics, times."""
    rows = []
    for name in datasets or list(cfg.victims):
        t0 = time.perf_counter()
        v = get_victim(cfg, name)
        task = v.data.info.task
        key = PRIMARY_METRIC[task]
        rows.append({
            "dataset": name, "label": v.data.info.label, "synthetic": v.data.info.synthetic, "task": task,
            "arch": v.meta["arch_label"], "metric": key, "value": 100 * v.meta["test"][key],
            "metrics": v.meta["test"], "n_train": len(v.data.train), "n_test": len(v.data.test),
            "image_size": v.data.image_shape[1:], "epochs": v.meta["epochs"],
            "train_seconds": v.meta["train_seconds"], "from_cache": v.from_cache,
            "seconds": round(time.perf_counter() - t0, 1),
        })
        console.print(f"{v.data.info.label:28s} {v.meta['arch_label']:44s} {key} = {rows[-1]['value']:.1f}"
                      f"{'  (cached)' if v.from_cache else ''}")
    return rows


def clean_table(rows: list[dict[str, Any]]) -> str:
    """The clean-metrics table in Markdown."""
    return markdown_table(
        ["dataset", "task", "victim", "metric", "value", "test images", "train s"],
        [[r["label"], r["task"], r["arch"], METRIC_LABEL.get(r["metric"], r["metric"]), r["value"], r["n_test"],
          r["train_seconds"]] for r in rows])


def integrity_section(cfg: ExperimentConfig, out: Path, dataset: str = "chest2", n: int = 16,
                      eps: float = 0.02) -> tuple[dict[str, Any], str] | None:
    """Levy et al.'s countermeasure on this run's own adversarial images: PGD images (eps in [0, 1] units)
    planted into signed DICOM copies of the clean test images, as an attacker inside a PACS would; the
    integrity gate must refuse every planted file and accept every untouched one. None when the profile
    has no such dataset."""
    if dataset not in cfg.victims:
        return None
    from medsec.attacks import PGD
    from medsec.integrity.demo import tamper_demo, tamper_demo_markdown

    v = get_victim(cfg, dataset)
    x, y = v.data.test.images(slice(0, n)), v.data.test.target_tensor(slice(0, n))
    x_adv = PGD(eps=eps, steps=10, seed=cfg.seed)(v.model.cpu().eval(), x, y)
    result = tamper_demo(x.numpy(), x_adv.numpy(), out / "integrity")
    body = tamper_demo_markdown(result).split("\n", 1)[1]  # Report.add gives the heading
    intro = (f"{n} test images of {v.data.info.label}, PGD-10 at eps {eps} ([0, 1] pixel units) against "
             f"its victim ({v.meta['arch_label']}).\n")
    return result, intro + body


def run_clean_evaluation(cfg: ExperimentConfig, out_dir: str | Path, datasets: list[str] | None = None) -> Path:
    """Train/load all victims, write clean_metrics.json, report.md and report.html into out_dir."""
    out = ensure_writable_dir(out_dir)
    started, t0 = datetime.now(UTC), time.perf_counter()
    rows = clean_rows(cfg, datasets)
    integrity = integrity_section(cfg, out)
    prov = run_provenance(cfg.to_yaml(), str(resolve_device(cfg.device)), started, time.perf_counter() - t0,
                          {"experiment": cfg.seed})
    write_text_atomic(out / "clean_metrics.json", json.dumps(
        {"rows": rows, "integrity": integrity[0] if integrity else None, "provenance": prov}, indent=2,
        default=str))
    synthetic = any(r["synthetic"] for r in rows)
    rep = Report(f"medsec clean baseline — profile {cfg.profile}")
    if synthetic:
        rep.add("Data", "<p class='synthetic'>These results are on medsec's <b>embedded synthetic</b> phantoms, "
                "not on patient data. They show the pipeline and the relative behaviour of models; they are not "
                "clinical performance figures.</p>")
    rep.add("Clean performance of the victims",
            "Accuracy for classification, prevalence-weighted AUROC for multi-label chest14, foreground "
            "Dice for segmentation; all in percent on the held-out test split.\n\n" + clean_table(rows))
    if integrity:
        rep.add("Signed DICOM against an attacker inside the PACS", integrity[1])
    rep.add("Run", provenance_markdown(prov))
    rep.write(out)
    return out
