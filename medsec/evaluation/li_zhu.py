"""Li & Zhu (ISBI 2020) Table 1 on the embedded chest14 data: ISO, OCSVM and MGM against FGSM, BIM, PGD
and MIM, white-box (the DenseNet-121 victim, eps 0.02) and black-box (a ResNet-50 surrogate trained on the
same training data, eps 0.05); eps in [0, 1] pixel units, as the paper's.

Protocol (as the paper, where it says; chosen and stated where it does not):
- test images: the first min(n_test, 1000) of the test split (full profile: 1000; quick: its n_test),
  adversarial copies of the same images;
- attack target: "the class with the highest predicted probability" of the model whose gradients craft
  the attack (victim or surrogate), BCE on that finding (medsec.attacks findings="top"); iterative
  attacks use 10 steps (not published), PGD with a random start, MIM with mu = 1;
- detectors: fitted on clean training features only, threshold rejecting 5% of clean training data;
- F1: of the "adversarial" class over the clean + adversarial test set (detection_f1). Without a
  detector nothing is flagged, so its F1 here is 0; the paper prints 0.5 for that baseline;
- AUROC: weighted AUROC (by finding prevalence) of the victim's follow-up classification on the images the
  detector accepts from the clean + adversarial set, with the standard deviation over the 14 findings
  ("No defence": all images).
Each (setting, attack) cell is written to ``cells/`` as it finishes; a rerun with the same config resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from medsec.config import ExperimentConfig
from medsec.defences.base import batched, module_device
from medsec.defences.factory import get_defence
from medsec.metrics import detection_auroc, detection_f1, per_class_auroc, weighted_auroc
from medsec.models.victims import get_victim, resolve_device
from medsec.paths import ensure_writable_dir, write_text_atomic
from medsec.report.document import Report, markdown_table, provenance_markdown, run_provenance

console = Console()

DATASET = "chest14"
METHODS = ("iso", "ocsvm", "mgm")
METHOD_LABEL = {"none": "No defence", "iso": "ISO", "ocsvm": "OCSVM", "mgm": "MGM"}
ATTACKS = ("fgsm", "bim", "pgd", "mim")
SETTINGS: dict[str, dict[str, Any]] = {"white-box": {"eps": 0.02, "surrogate": None},
                                       "black-box": {"eps": 0.05, "surrogate": "resnet50"}}
MAX_IMAGES = 1000
STEPS = 10

# Li & Zhu 2020, Table 1: (F1, weighted AUROC) per setting, method, attack.
PAPER: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "white-box": {
        "none": {"fgsm": (0.500, 0.702), "bim": (0.500, 0.617), "pgd": (0.500, 0.616), "mim": (0.500, 0.591)},
        "iso": {"fgsm": (0.838, 0.786), "bim": (0.874, 0.810), "pgd": (0.874, 0.810), "mim": (0.874, 0.810)},
        "ocsvm": {"fgsm": (0.870, 0.783), "bim": (0.931, 0.816), "pgd": (0.931, 0.816), "mim": (0.931, 0.816)},
        "mgm": {"fgsm": (0.936, 0.801), "bim": (0.975, 0.820), "pgd": (0.975, 0.820), "mim": (0.975, 0.820)},
    },
    "black-box": {
        "none": {"fgsm": (0.500, 0.749), "bim": (0.500, 0.737), "pgd": (0.500, 0.741), "mim": (0.500, 0.719)},
        "iso": {"fgsm": (0.871, 0.810), "bim": (0.759, 0.777), "pgd": (0.735, 0.776), "mim": (0.837, 0.801)},
        "ocsvm": {"fgsm": (0.903, 0.812), "bim": (0.777, 0.781), "pgd": (0.754, 0.776), "mim": (0.859, 0.792)},
        "mgm": {"fgsm": (0.958, 0.819), "bim": (0.924, 0.809), "pgd": (0.903, 0.808), "mim": (0.957, 0.818)},
    },
}


def make_attack(name: str, eps: float, steps: int = STEPS, seed: int = 0) -> Any:
    """The paper's attack `name` at eps (multi-label: BCE on the top predicted finding)."""
    from medsec.attacks import BIM, FGSM, MIM, PGD

    if name == "fgsm":
        return FGSM(eps=eps, findings="top", seed=seed)
    cls = {"bim": BIM, "pgd": PGD, "mim": MIM}[name]
    return cls(eps=eps, steps=steps, findings="top", seed=seed, batch_size=100)


def _top_targets(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One-hot (N, K) of each image's highest-probability finding under `model` (the attacker's label)."""
    logits = batched(model, x, 128, module_device(model))
    y = torch.zeros_like(logits)
    y[torch.arange(len(y)), logits.argmax(1)] = 1.0
    return y


def _auroc_stats(scores: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    per = per_class_auroc(scores, y)
    return weighted_auroc(scores, y), float(np.nanstd(per)) if (~np.isnan(per)).any() else float("nan")


def _cell(cfg: ExperimentConfig, setting: str, attack: str, ctx: dict[str, Any]) -> dict[str, Any]:
    x, y = ctx["x"], ctx["y"]
    victim, dets = ctx["victim"], ctx["detectors"]
    eps = SETTINGS[setting]["eps"]
    src = ctx["surrogate"] if SETTINGS[setting]["surrogate"] else victim
    dev = module_device(victim)
    t0 = time.perf_counter()
    atk = make_attack(attack, eps, seed=cfg.seed)
    x_adv = torch.cat([atk(src, x[i:i + 100].to(dev), ctx["targets"][src_key(setting)][i:i + 100].to(dev)).cpu()
                       for i in range(0, len(x), 100)])
    xs = torch.cat([x, x_adv])
    ys = torch.cat([y, y])
    # one pass: every detector models the victim's features, and the victim's head classifies them
    feats = batched(victim.features, xs, 128, dev)
    with torch.no_grad():
        probs = torch.sigmoid(victim.head(feats.to(dev))).cpu()
    row: dict[str, Any] = {"setting": setting, "attack": attack, "eps": eps, "n_clean": len(x), "n_adv": len(x),
                           "crafted_on": "victim" if src is victim else "surrogate", "methods": {}}
    au, sd = _auroc_stats(probs, ys)
    top = probs[:len(x)].argmax(1)
    row["top_finding_flipped"] = float((probs[len(x):].argmax(1) != top).float().mean())
    row["methods"]["none"] = {"f1": 0.0, "auroc": au, "auroc_std": sd, "accepted": 1.0}
    for name, det in dets.items():
        with torch.no_grad():
            scores = det.score_features(feats.to(dev)).cpu()
        flags = scores > float(det.threshold)  # exactly what det.detect(x) decides
        acc = ~flags
        au, sd = _auroc_stats(probs[acc], ys[acc]) if acc.sum() > 1 else (float("nan"), float("nan"))
        row["methods"][name] = {
            "f1": detection_f1(flags[:len(x)], flags[len(x):]), "auroc": au, "auroc_std": sd,
            "detection_auroc": detection_auroc(scores[:len(x)], scores[len(x):]),
            "clean_rejected": float(flags[:len(x)].float().mean()), "adv_rejected": float(flags[len(x):].float().mean()),
            "accepted": float(acc.float().mean())}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def src_key(setting: str) -> str:
    """Which model's top finding the attack of `setting` targets."""
    return "surrogate" if SETTINGS[setting]["surrogate"] else "victim"


def run_li_zhu(cfg: ExperimentConfig, out_dir: str | Path, max_images: int = MAX_IMAGES) -> Path:
    """Reproduce Li & Zhu Table 1; writes li_zhu_2020.json, report.md and report.html into out_dir."""
    out = ensure_writable_dir(out_dir)
    cells_dir = ensure_writable_dir(out / "cells", "cell folder")
    started, t0 = datetime.now(UTC), time.perf_counter()
    digest = hashlib.sha256((cfg.to_yaml() + f"|{max_images}|{STEPS}").encode()).hexdigest()[:12]
    victim = get_victim(cfg, DATASET)
    surrogate = get_victim(cfg, DATASET, arch=SETTINGS["black-box"]["surrogate"])
    dev = resolve_device(cfg.device)
    victim.model.to(dev).eval()
    surrogate.model.to(dev).eval()
    detectors: dict[str, Any] = {}
    for m in METHODS:
        fd = get_defence(cfg, m, DATASET, victim=victim)
        detectors[m] = fd.defence.to(dev).eval()
    n = min(len(victim.data.test), max_images)
    x, y = victim.data.test.images()[:n], victim.data.test.target_tensor()[:n]
    ctx = {"x": x, "y": y, "victim": victim.model, "surrogate": surrogate.model, "detectors": detectors,
           "targets": {"victim": _top_targets(victim.model, x), "surrogate": _top_targets(surrogate.model, x)}}
    clean_probs = torch.sigmoid(batched(victim.model, x, 128, dev))
    clean_auroc = _auroc_stats(clean_probs, y)
    rows = []
    for setting in SETTINGS:
        for attack in ATTACKS:
            path = cells_dir / f"{setting}-{attack}.json"
            if path.exists():
                try:
                    cell = json.loads(path.read_text())
                    if cell.get("digest") == digest:
                        rows.append(cell)
                        console.print(f"{setting} {attack}: done before (resumed)")
                        continue
                except (OSError, ValueError):
                    pass
            cell = _cell(cfg, setting, attack, ctx)
            cell["digest"] = digest
            write_text_atomic(path, json.dumps(cell, indent=2))
            rows.append(cell)
            mg = cell["methods"]["mgm"]
            console.print(f"{setting} {attack}: MGM F1 {mg['f1']:.3f}, AUROC {mg['auroc']:.3f} ({cell['seconds']} s)")
    prov = run_provenance(cfg.to_yaml(), str(dev), started, time.perf_counter() - t0, {"experiment": cfg.seed})
    result = {"paper": "li-zhu-2020", "dataset": victim.data.info.label, "victim": victim.meta["arch_label"],
              "surrogate": surrogate.meta["arch_label"], "n_clean": n, "n_adv": n, "steps": STEPS,
              "clean_weighted_auroc": clean_auroc[0], "clean_auroc_std": clean_auroc[1],
              "thresholds": {m: float(d.threshold) for m, d in detectors.items()},
              "rows": rows, "paper_table": PAPER, "provenance": prov}
    write_text_atomic(out / "li_zhu_2020.json", json.dumps(result, indent=2))
    report = li_zhu_report(result)
    report.add("Provenance", provenance_markdown(prov))
    report.write(out)
    return out


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
