"""The survey's other attacks (Sipola et al. 2020's list), each on several embedded datasets.

Per dataset, on the profile's victim: the adversarial patch (fooling rate against patch size), the
one-pixel attack (against the number of pixels), the universal perturbation (fooling rate on unseen test
images), the BadNets backdoor (clean accuracy and trigger success against the poisoning rate, retraining
the victim from scratch with its own recipe and seed), and clean-label feature collision (success over
several target images, head retrained on frozen features as in Shafahi et al.'s transfer setting).

Fooling rate: among test images the victim classifies correctly, the fraction the attack makes it get
wrong (UAP also reports Moosavi-Dezfooli's label-change rate over all test images). One result file per
(dataset, attack, setting) cell; a rerun skips finished cells.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsec.attacks.onepixel import OnePixel
from medsec.attacks.patch import AdversarialPatch
from medsec.attacks.poisoning import BadNets, FeatureCollision, retrain, retrain_head
from medsec.attacks.universal import UniversalPerturbation
from medsec.config import ExperimentConfig
from medsec.errors import MedsecError
from medsec.evaluation.metrics import accuracy
from medsec.evaluation.victims import Victim, get_victim, resolve_device
from medsec.models.training import predict
from medsec.paths import ensure_writable_dir, write_text_atomic
from medsec.report import Report, markdown_table, run_provenance
from medsec.studies.grid import CellStore

log = logging.getLogger(__name__)

N_FIT = 500  # training images a patch or a universal perturbation is fitted on


def _fooling(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    """Accuracy clean/adversarial and the fooling rate among correctly classified images."""
    pc, pa = predict(model, x).argmax(1), predict(model, x_adv).argmax(1)
    ok = pc == y
    fool = float((pa[ok] != y[ok]).float().mean()) if bool(ok.any()) else float("nan")
    return {"clean_accuracy": accuracy(pc, y), "adv_accuracy": accuracy(pa, y), "fooling_rate": fool,
            "n_correct": int(ok.sum()), "label_change_rate": float((pc != pa).float().mean())}


def _survey_dataset(cfg: ExperimentConfig, name: str, store: CellStore) -> list[dict[str, Any]]:
    s = cfg.survey
    v: Victim | None = None

    def victim() -> Victim:
        nonlocal v
        if v is None:
            v = get_victim(cfg, name)
            if v.data.info.task != "classification":
                raise MedsecError(f"survey: {name} is a {v.data.info.task} dataset; the survey attacks need classifiers")
            v.model.cpu().eval()
        return v

    rows: list[dict[str, Any]] = []

    victim_digest = cfg.digest("data", "train", "model") + repr(cfg.victims.get(name))
    params = {"patch": [s.n_eval, s.patch_steps, N_FIT],
              "onepixel": [s.onepixel_n_eval, s.onepixel_popsize, s.onepixel_iterations],
              "uap": [s.n_eval, s.uap_epochs, N_FIT],
              "backdoor": [s.backdoor_target_class, s.backdoor_trigger, "poison-val"],
              "feature_collision": [s.fc_targets, s.fc_steps, s.fc_eps]}

    def cell(attack: str, setting: str, fn: Any) -> None:
        # the key holds every setting the cell depends on: changed settings give a new cell, never a stale one
        fingerprint = hashlib.sha256(json.dumps([victim_digest, cfg.seed, params[attack]]).encode()).hexdigest()[:8]
        key = f"{name}__{attack}__{setting}__{fingerprint}"
        t0 = time.perf_counter()
        res = store.get(key)
        if res is None:
            res = fn()
            res.update({"dataset": name, "attack": attack, "setting": setting,
                        "seconds": round(time.perf_counter() - t0, 1)})
            store.put(key, res)
        rows.append(res)

    def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d = victim().data
        n = min(s.n_eval, len(d.test))
        nf = min(N_FIT, len(d.train))
        return (d.train.images(np.arange(nf)), d.train.target_tensor(np.arange(nf)),
                d.test.images(np.arange(n)), d.test.target_tensor(np.arange(n)))

    for size in s.patch_sizes:
        def run_patch(size: float = size) -> dict[str, Any]:
            xtr, ytr, x, y = data()
            p = AdversarialPatch(size=size, steps=s.patch_steps, seed=cfg.seed).fit(victim().model, xtr, ytr)
            x_adv, _ = p.apply(x)
            return {"patch_area": size, "patch_px": int(p.patch.shape[-1]) if p.patch is not None else 0,
                    **_fooling(victim().model, x, y, x_adv)}
        cell("patch", f"area{size:g}", run_patch)
    for k in s.onepixel_pixels:
        def run_onepixel(k: int = k) -> dict[str, Any]:
            _, _, x, y = data()
            m = victim().model
            n = min(s.onepixel_n_eval, len(x))
            x, y = x[:n], y[:n]
            x_adv = OnePixel(pixels=k, popsize=s.onepixel_popsize, iterations=s.onepixel_iterations,
                             seed=cfg.seed)(m, x, y)
            changed = int((x_adv != x).any(1).flatten(1).sum(1).max())
            return {"pixels": k, "max_pixels_changed": changed, **_fooling(m, x, y, x_adv)}
        cell("onepixel", f"k{k}", run_onepixel)
    for eps in s.uap_eps:
        def run_uap(eps: float = eps) -> dict[str, Any]:
            xtr, ytr, x, y = data()
            m = victim().model
            u = UniversalPerturbation(eps=eps, epochs=s.uap_epochs, seed=cfg.seed).fit(m, xtr, ytr)
            return {"eps": eps, "linf": float(u.perturbation.abs().max()),
                    "fit_label_change_rate": u.fooling_rate(m, xtr), **_fooling(m, x, y, u.apply(x))}
        cell("uap", f"eps{eps:g}", run_uap)
    for rate in s.backdoor_rates:
        def run_backdoor(rate: float = rate) -> dict[str, Any]:
            vv = victim()
            bd = BadNets(rate=rate, target_class=s.backdoor_target_class, trigger_size=s.backdoor_trigger,
                         seed=cfg.seed)
            poisoned = bd.poison(vv.data)
            model = retrain(vv.meta, poisoned.dataset, cfg.train, seed=vv.meta.get("seed", cfg.seed),
                            device=resolve_device(cfg.device)).cpu().eval()
            x, y = vv.data.test.images(), vv.data.test.target_tensor()
            return {"rate": rate, "n_poisons": poisoned.n_poisons, "target_class": bd.target_class,
                    "clean_accuracy_unpoisoned": accuracy(predict(vv.model, x), y),
                    "clean_accuracy_poisoned": accuracy(predict(model, x), y),
                    "trigger_success": bd.success_rate(model, x, y),
                    "trigger_success_unpoisoned": bd.success_rate(vv.model, x, y)}
        cell("backdoor", f"p{rate:g}", run_backdoor)

    def run_fc() -> dict[str, Any]:
        vv = victim()
        d = vv.data
        pred = predict(vv.model, d.test.images()).argmax(1).numpy()
        correct = np.flatnonzero(pred == d.test.targets)
        fc = FeatureCollision(n_poisons=s.fc_poisons, steps=s.fc_steps, eps=s.fc_eps, seed=cfg.seed)
        outcomes = []
        for t in correct[:s.fc_targets]:
            t_class = int(d.test.targets[t])
            base_class = (t_class + 1) % d.info.num_outputs
            poisoned = fc.poison(vv.model, d, int(t), base_class)
            model = retrain_head(vv.model, poisoned.dataset, seed=cfg.seed)
            hit = int(predict(model, d.test.images(np.array([t]))).argmax(1)) == base_class
            outcomes.append({"target_index": int(t), "base_class": base_class, "success": bool(hit),
                             "feature_distance": float(np.mean(poisoned.info["feature_distance"])),
                             "clean_accuracy_after": accuracy(predict(model, d.test.images()), d.test.target_tensor())})
        return {"n_targets": len(outcomes), "n_poisons": s.fc_poisons, "eps": s.fc_eps,
                "success_rate": float(np.mean([o["success"] for o in outcomes])) if outcomes else float("nan"),
                "targets": outcomes}
    cell("feature_collision", f"n{s.fc_poisons}", run_fc)
    return rows


def run_survey(cfg: ExperimentConfig, out: str | Path, datasets: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the survey attacks on the configured datasets; writes cells, JSON, figures, report."""
    started, t0 = datetime.now(UTC), time.perf_counter()
    out_dir = ensure_writable_dir(out)
    names = datasets or cfg.survey.datasets
    if len(names) < 1:
        raise MedsecError("survey: no dataset given")
    store = CellStore(out_dir / "survey_cells")
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += _survey_dataset(cfg, name, store)
    result = {"rows": rows, "datasets": names,
              "provenance": run_provenance(cfg.to_yaml(), str(resolve_device(cfg.device)), started,
                                           time.perf_counter() - t0, {"seed": cfg.seed})}
    write_text_atomic(out_dir / "survey_results.json", json.dumps(result, indent=2, default=str))
    figures = survey_figures(rows, out_dir / "figures")
    report = Report(f"medsec survey attacks ({cfg.profile} profile)")
    report.add("Survey attacks (Sipola et al.)", survey_markdown(rows, cfg, figures, out_dir))
    report.write(out_dir)
    return result


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for attack, key, xlabel in (("patch", "patch_area", "patch area (fraction of the image)"),
                                ("onepixel", "pixels", "pixels changed (k)")):
        rr = [r for r in rows if r["attack"] == attack]
        if not rr:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for ds in sorted({r["dataset"] for r in rr}):
            pts = sorted((r[key], 100 * r["fooling_rate"]) for r in rr if r["dataset"] == ds)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=ds)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fooling rate (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
        fig.tight_layout()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"survey_{attack}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
