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
The grid: the victim, the surrogate and each detector are cells, then one cell per (setting, attack).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsec.attacks.registry import build_attack
from medsec.config import ExperimentConfig
from medsec.defences.factory import get_defence
from medsec.metrics import auroc_with_spread, detection_auroc, detection_f1
from medsec.models.inference import batched, module_device, resolve_device
from medsec.models.victims import Victim, get_victim
from medsec.studies.common import StudyOutput, config_digest, defence_cell, provenance, victim_cell
from medsec.studies.grid import Cell, Executor, cell_key, run_grid

DATASET = "chest14"
METHODS = ("iso", "ocsvm", "mgm")
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
    if name == "fgsm":
        return build_attack(name, eps, findings="top", seed=seed)
    return build_attack(name, eps, steps=steps, findings="top", seed=seed, batch_size=100)


def top_targets(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One-hot (N, K) of each image's highest-probability finding under `model` (the attacker's label)."""
    logits = batched(model, x, 128, module_device(model), cpu=True)
    y = torch.zeros_like(logits)
    y[torch.arange(len(y)), logits.argmax(1)] = 1.0
    return y


@dataclass
class Setup:
    """The study's models and images, loaded from the caches the victim and detector cells filled."""

    victim: Victim
    surrogate: Victim
    detectors: dict[str, Any]
    x: torch.Tensor
    y: torch.Tensor


def load_setup(cfg: ExperimentConfig, max_images: int) -> Setup:
    """Victim, surrogate, fitted detectors (on the device) and the first test images."""
    dev = resolve_device(cfg.device)
    victim = get_victim(cfg, DATASET)
    surrogate = get_victim(cfg, DATASET, arch=SETTINGS["black-box"]["surrogate"])
    victim.model.to(dev).eval()
    surrogate.model.to(dev).eval()
    detectors = {m: get_defence(cfg, m, DATASET, victim=victim).defence.to(dev).eval() for m in METHODS}
    n = min(len(victim.data.test), max_images)
    return Setup(victim, surrogate, detectors, victim.data.test.images()[:n], victim.data.test.target_tensor()[:n])


def detector_scores(det: Any, feats: torch.Tensor, probs: torch.Tensor, ys: torch.Tensor, n: int) -> dict[str, Any]:
    """One detector on the clean + adversarial features: F1, follow-up AUROC on what it accepts, rejections."""
    with torch.no_grad():
        scores = det.score_features(feats.to(module_device(det))).cpu()
    flags = scores > float(det.threshold)  # exactly what det.detect(x) decides
    acc = ~flags
    au, sd = auroc_with_spread(probs[acc], ys[acc]) if acc.sum() > 1 else (float("nan"), float("nan"))
    return {"f1": detection_f1(flags[:n], flags[n:]), "auroc": au, "auroc_std": sd,
            "detection_auroc": detection_auroc(scores[:n], scores[n:]),
            "clean_rejected": float(flags[:n].float().mean()), "adv_rejected": float(flags[n:].float().mean()),
            "accepted": float(acc.float().mean())}


def li_zhu_cell(cfg: ExperimentConfig, setting: str, attack: str, max_images: int) -> dict[str, Any]:
    """Cell: one attack of one setting against every detector."""
    s = load_setup(cfg, max_images)
    x, y = s.x, s.y
    victim: Any = s.victim.model  # a classifier with features(x) and head(features)
    src = s.surrogate.model if SETTINGS[setting]["surrogate"] else victim
    dev = module_device(victim)
    t0 = time.perf_counter()
    atk = make_attack(attack, SETTINGS[setting]["eps"], seed=cfg.seed)
    targets = top_targets(src, x)
    x_adv = torch.cat([atk(src, x[i:i + 100].to(dev), targets[i:i + 100].to(dev)).cpu()
                       for i in range(0, len(x), 100)])
    xs, ys = torch.cat([x, x_adv]), torch.cat([y, y])
    # one pass: every detector models the victim's features, and the victim's head classifies them
    feats = batched(victim.features, xs, 128, dev, cpu=True)
    with torch.no_grad():
        probs = torch.sigmoid(victim.head(feats.to(dev))).cpu()
    n = len(x)
    au, sd = auroc_with_spread(probs, ys)
    row: dict[str, Any] = {"setting": setting, "attack": attack, "eps": SETTINGS[setting]["eps"], "n_clean": n,
                           "n_adv": n, "crafted_on": "victim" if src is victim else "surrogate",
                           "top_finding_flipped": float((probs[n:].argmax(1) != probs[:n].argmax(1)).float().mean()),
                           "methods": {"none": {"f1": 0.0, "auroc": au, "auroc_std": sd, "accepted": 1.0}}}
    for name, det in s.detectors.items():
        row["methods"][name] = detector_scores(det, feats, probs, ys, n)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def li_zhu_grid(cfg: ExperimentConfig, max_images: int) -> tuple[list[Cell], dict[tuple[str, str], str]]:
    """Victim, surrogate and detector cells, then one cell per (setting, attack)."""
    h = config_digest(cfg, "reproduce", "transfer", "survey") + f"-n{max_images}"
    cells = [victim_cell(cfg, DATASET, h), victim_cell(cfg, DATASET, h, SETTINGS["black-box"]["surrogate"])]
    cells += [defence_cell(cfg, m, DATASET, h, defence_cfg=cfg) for m in METHODS]
    keys = {}
    for setting in SETTINGS:
        for attack in ATTACKS:
            key = cell_key("li_zhu", setting, attack, h)
            keys[(setting, attack)] = key
            cells.append(Cell(key, li_zhu_cell, {"cfg": cfg, "setting": setting, "attack": attack,
                                                 "max_images": max_images}, after=tuple(c.key for c in cells[:5])))
    return cells, keys


def run_li_zhu(cfg: ExperimentConfig, out_dir: str | Path, max_images: int = MAX_IMAGES,
               executor: Executor | None = None) -> dict[str, Any]:
    """Reproduce Li & Zhu Table 1 (resuming finished cells); writes results.json and returns it."""
    out = StudyOutput.at(out_dir)
    cells, keys = li_zhu_grid(cfg, max_images)
    done = run_grid(cells, out.store, executor, title="Li & Zhu 2020, Table 1")
    s = load_setup(cfg, max_images)
    clean_auroc = auroc_with_spread(torch.sigmoid(batched(s.victim.model, s.x, 128, resolve_device(cfg.device),
                                                          cpu=True)), s.y)
    result = {"paper": "li-zhu-2020", "dataset": s.victim.data.info.label, "victim": s.victim.meta["arch_label"],
              "surrogate": s.surrogate.meta["arch_label"], "n_clean": len(s.x), "n_adv": len(s.x), "steps": STEPS,
              "clean_weighted_auroc": clean_auroc[0], "clean_auroc_std": clean_auroc[1],
              "thresholds": {m: float(d.threshold) for m, d in s.detectors.items()},
              "rows": [done[keys[k]] for k in keys], "paper_table": PAPER,
              "provenance": provenance(cfg, out, {"experiment": cfg.seed})}
    out.write_results(result)
    return result
