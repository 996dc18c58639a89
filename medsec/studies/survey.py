"""The survey's other attacks (Sipola et al. 2020's list), each on several embedded datasets.

Per dataset, on the profile's victim: the adversarial patch (fooling rate against patch size), the
one-pixel attack (against the number of pixels), the universal perturbation (fooling rate on unseen test
images), the BadNets backdoor (clean accuracy and trigger success against the poisoning rate, retraining
the victim from scratch with its own recipe and seed), and clean-label feature collision (success over
several target images, head retrained on frozen features as in Shafahi et al.'s transfer setting).

Fooling rate: among test images the victim classifies correctly, the fraction the attack makes it get
wrong (UAP also reports Moosavi-Dezfooli's label-change rate over all test images). One result file per
(dataset, attack, setting) cell, after the dataset's victim cell; a rerun skips finished cells.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
from medsec.metrics import accuracy
from medsec.models.inference import resolve_device
from medsec.models.training import predict
from medsec.models.victims import Victim, get_victim
from medsec.studies.common import StudyOutput, config_digest, provenance, victim_cell
from medsec.studies.grid import Cell, Executor, cell_key, digest, run_grid

log = logging.getLogger(__name__)

N_FIT = 500  # training images a patch or a universal perturbation is fitted on


def _fooling(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    """Accuracy clean/adversarial and the fooling rate among correctly classified images."""
    pc, pa = predict(model, x).argmax(1), predict(model, x_adv).argmax(1)
    ok = pc == y
    fool = float((pa[ok] != y[ok]).float().mean()) if bool(ok.any()) else float("nan")
    return {"clean_accuracy": accuracy(pc, y), "adv_accuracy": accuracy(pa, y), "fooling_rate": fool,
            "n_correct": int(ok.sum()), "label_change_rate": float((pc != pa).float().mean())}


def survey_victim(cfg: ExperimentConfig, name: str) -> Victim:
    """The dataset's victim (a classifier), on the CPU in eval mode."""
    v = get_victim(cfg, name)
    if v.data.info.task != "classification":
        raise MedsecError(f"survey: {name} is a {v.data.info.task} dataset; the survey attacks need classifiers")
    v.model.cpu().eval()
    return v


def _images(v: Victim, n_eval: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fit images, fit labels, test images, test labels): N_FIT training images, the first n_eval test ones."""
    d = v.data
    n, nf = min(n_eval, len(d.test)), min(N_FIT, len(d.train))
    return (d.train.images(np.arange(nf)), d.train.target_tensor(np.arange(nf)),
            d.test.images(np.arange(n)), d.test.target_tensor(np.arange(n)))


def patch_cell(cfg: ExperimentConfig, name: str, size: float) -> dict[str, Any]:
    """Cell: a universal patch of `size` (area fraction) fitted on training images, fooling rate on test ones."""
    v = survey_victim(cfg, name)
    xtr, ytr, x, y = _images(v, cfg.survey.n_eval)
    p = AdversarialPatch(size=size, steps=cfg.survey.patch_steps, seed=cfg.seed).fit(v.model, xtr, ytr)
    x_adv, _ = p.apply(x)
    return {"patch_area": size, "patch_px": int(p.patch.shape[-1]) if p.patch is not None else 0,
            **_fooling(v.model, x, y, x_adv)}


def onepixel_cell(cfg: ExperimentConfig, name: str, k: int) -> dict[str, Any]:
    """Cell: the one-pixel attack changing `k` pixels."""
    s, v = cfg.survey, survey_victim(cfg, name)
    _, _, x, y = _images(v, s.n_eval)
    n = min(s.onepixel_n_eval, len(x))
    x, y = x[:n], y[:n]
    x_adv = OnePixel(pixels=k, popsize=s.onepixel_popsize, iterations=s.onepixel_iterations, seed=cfg.seed)(
        v.model, x, y)
    changed = int((x_adv != x).any(1).flatten(1).sum(1).max())
    return {"pixels": k, "max_pixels_changed": changed, **_fooling(v.model, x, y, x_adv)}


def uap_cell(cfg: ExperimentConfig, name: str, eps: float) -> dict[str, Any]:
    """Cell: a universal perturbation of L_inf size `eps` fitted on training images, judged on unseen test ones."""
    v = survey_victim(cfg, name)
    xtr, ytr, x, y = _images(v, cfg.survey.n_eval)
    u = UniversalPerturbation(eps=eps, epochs=cfg.survey.uap_epochs, seed=cfg.seed).fit(v.model, xtr, ytr)
    return {"eps": eps, "linf": float(u.perturbation.abs().max()),
            "fit_label_change_rate": u.fooling_rate(v.model, xtr), **_fooling(v.model, x, y, u.apply(x))}


def backdoor_cell(cfg: ExperimentConfig, name: str, rate: float) -> dict[str, Any]:
    """Cell: BadNets at poisoning `rate`, the victim retrained from scratch with its own recipe and seed."""
    s, v = cfg.survey, survey_victim(cfg, name)
    bd = BadNets(rate=rate, target_class=s.backdoor_target_class, trigger_size=s.backdoor_trigger, seed=cfg.seed)
    poisoned = bd.poison(v.data)
    model = retrain(v.meta, poisoned.dataset, cfg.train, seed=v.meta.get("seed", cfg.seed),
                    device=resolve_device(cfg.device)).cpu().eval()
    x, y = v.data.test.images(), v.data.test.target_tensor()
    return {"rate": rate, "n_poisons": poisoned.n_poisons, "target_class": bd.target_class,
            "clean_accuracy_unpoisoned": accuracy(predict(v.model, x), y),
            "clean_accuracy_poisoned": accuracy(predict(model, x), y),
            "trigger_success": bd.success_rate(model, x, y), "trigger_success_unpoisoned": bd.success_rate(v.model, x, y)}


def feature_collision_cell(cfg: ExperimentConfig, name: str) -> dict[str, Any]:
    """Cell: clean-label feature collision on several correctly classified target images."""
    s, v = cfg.survey, survey_victim(cfg, name)
    d = v.data
    pred = predict(v.model, d.test.images()).argmax(1).numpy()
    correct = np.flatnonzero(pred == d.test.targets)
    fc = FeatureCollision(n_poisons=s.fc_poisons, steps=s.fc_steps, eps=s.fc_eps, seed=cfg.seed)
    outcomes = []
    for t in correct[:s.fc_targets]:
        base_class = (int(d.test.targets[t]) + 1) % d.info.num_outputs
        poisoned = fc.poison(v.model, d, int(t), base_class)
        model = retrain_head(v.model, poisoned.dataset, seed=cfg.seed)
        hit = int(predict(model, d.test.images(np.array([t]))).argmax(1)) == base_class
        outcomes.append({"target_index": int(t), "base_class": base_class, "success": bool(hit),
                         "feature_distance": float(np.mean(poisoned.info["feature_distance"])),
                         "clean_accuracy_after": accuracy(predict(model, d.test.images()), d.test.target_tensor())})
    return {"n_targets": len(outcomes), "n_poisons": s.fc_poisons, "eps": s.fc_eps,
            "success_rate": float(np.mean([o["success"] for o in outcomes])) if outcomes else float("nan"),
            "targets": outcomes}


def timed(fn: Callable[..., dict[str, Any]], meta: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Cell: `fn(**kwargs)` with the cell's dataset/attack/setting and its time added to the result."""
    t0 = time.perf_counter()
    res = fn(**kwargs)
    res.update({**meta, "seconds": round(time.perf_counter() - t0, 1)})
    return res


def survey_cells(cfg: ExperimentConfig, name: str, tag: str) -> list[Cell]:
    """The victim cell of dataset `name`, then one cell per (attack, setting); each key holds a fingerprint of
    the settings the cell depends on, so changed settings give a new cell, never a stale one."""
    s = cfg.survey
    victim = victim_cell(cfg, name, tag)
    specs: list[tuple[str, str, Callable[..., dict[str, Any]], dict[str, Any], list[Any]]] = [
        *[("patch", f"area{z:g}", patch_cell, {"size": z}, [s.n_eval, s.patch_steps, N_FIT]) for z in s.patch_sizes],
        *[("onepixel", f"k{k}", onepixel_cell, {"k": k}, [s.onepixel_n_eval, s.onepixel_popsize,
                                                         s.onepixel_iterations]) for k in s.onepixel_pixels],
        *[("uap", f"eps{e:g}", uap_cell, {"eps": e}, [s.n_eval, s.uap_epochs, N_FIT]) for e in s.uap_eps],
        *[("backdoor", f"p{r:g}", backdoor_cell, {"rate": r},
           [s.backdoor_target_class, s.backdoor_trigger, "poison-val"]) for r in s.backdoor_rates],
        ("feature_collision", f"n{s.fc_poisons}", feature_collision_cell, {}, [s.fc_targets, s.fc_steps, s.fc_eps])]
    cells = [victim]
    for attack, setting, fn, kw, params in specs:
        fp = digest([tag, params], 8)
        meta = {"dataset": name, "attack": attack, "setting": setting}
        cells.append(Cell(cell_key(name, attack, setting, fp), timed,
                          {"fn": fn, "meta": meta, "cfg": cfg, "name": name, **kw}, after=(victim.key,)))
    return cells


def run_survey(cfg: ExperimentConfig, out_dir: str | Path, datasets: list[str] | None = None,
               executor: Executor | None = None) -> dict[str, Any]:
    """Run (or resume) the survey attacks on the configured datasets; writes cells and results.json."""
    out = StudyOutput.at(out_dir)
    names = datasets or cfg.survey.datasets
    if len(names) < 1:
        raise MedsecError("survey: no dataset given")
    tag = config_digest(cfg, "reproduce", "transfer", "defences")
    cells = [c for name in names for c in survey_cells(cfg, name, tag)]
    done = run_grid(cells, out.store, executor, title="survey attacks (Sipola et al.)")
    rows = [done[c.key] for c in cells if c.fn is timed]
    result = {"rows": rows, "datasets": names, "provenance": provenance(cfg, out, {"seed": cfg.seed})}
    out.write_results(result)
    return result
