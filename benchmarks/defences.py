"""Each defence against its own paper's non-adaptive attack, on the embedded (synthetic) data.

    PYTHONPATH=. python benchmarks/defences.py [--sections mgm,ensemble,gmm,denoiser,rbf] [--image-size 32]

Claims checked (issue 4), each printed with PASS/FAIL and the numbers:
  MGM       detection F1 >= 0.8 against white-box PGD, eps 0.02, threshold at 5% clean training FPR (chest14)
  Ensemble  adversarially trained ensemble keeps >= 20 points more accuracy under FGSM than an undefended
            member (the plain ResNet-20 victim) (ct-slices)
  GMM       adversarial risk under FGSM at the paper's eps (0.002) >= 30 points below the undefended
            model's (rsna)
  Denoiser  >= 10 points more accuracy than the undefended victim under a black-box transfer attack (PGD
            crafted on an independently trained surrogate of the victim's architecture) (rsna)
  RBF       clean accuracy / Dice no more than 5 points below the plain network (chest2, brain-mri)
and for every defence: clean performance within 5 points of its undefended victim.

The default scale is smaller than the quick profile (32 px, 600 training images, 8 epochs) so that all
sections finish in minutes on a shared 2-core CPU; every knob is a flag (the rsna sections, GMM and
Denoiser, need --image-size 64: at 32 px the pneumonia opacities are too small to learn well). Results go to --out as JSON
(one file per section; a rerun reuses finished sections unless --force).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from medsec.attacks import FGSM, PGD
from medsec.config import ExperimentConfig, load_config
from medsec.defences import adversarial_risk
from medsec.defences.factory import get_defence
from medsec.metrics import accuracy, detection_auroc, detection_f1, mean_dice, weighted_auroc
from medsec.models.inference import batched, module_device
from medsec.models.victims import get_victim
from medsec.studies.li_zhu import top_targets as _top_targets

EPS = {"mgm": 0.02, "ensemble": 0.01, "gmm": 0.002, "denoiser": 0.03}


def _attack(attack: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 100) -> torch.Tensor:
    return torch.cat([attack(model, x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)])


def _acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100 * accuracy(batched(model, x, 128, module_device(model), cpu=True), y)


def section_mgm(cfg: ExperimentConfig) -> dict[str, Any]:
    v = get_victim(cfg, "chest14")
    mgm = get_defence(cfg, "mgm", "chest14", victim=v).defence
    x, y = v.data.test.images(), v.data.test.target_tensor()
    x_adv = _attack(PGD(eps=EPS["mgm"], steps=10, findings="top", seed=cfg.seed), v.model, x, _top_targets(v.model, x))
    fc, fa = mgm.detect(x), mgm.detect(x_adv)
    sc, sa = batched(mgm.score, x, cpu=True), batched(mgm.score, x_adv, cpu=True)
    probs = torch.sigmoid(batched(v.model, x, cpu=True))
    f1 = detection_f1(fc, fa)
    return {"dataset": v.data.info.label, "victim": v.meta["arch_label"], "attack": "PGD white-box, 10 steps",
            "eps": EPS["mgm"], "n_clean": len(x), "n_adv": len(x),
            "detection_f1": f1, "detection_auroc": detection_auroc(sc, sa),
            "clean_rejected_pct": 100 * float(fc.float().mean()), "adv_rejected_pct": 100 * float(fa.float().mean()),
            "clean_weighted_auroc_victim": 100 * weighted_auroc(probs, y),
            "clean_weighted_auroc_accepted": 100 * weighted_auroc(probs[~fc], y[~fc]),
            "claim": "detection F1 >= 0.8", "pass": f1 >= 0.8}


def section_ensemble(cfg: ExperimentConfig) -> dict[str, Any]:
    v = get_victim(cfg, "ct-slices")
    ens = get_defence(cfg, "ensemble", "ct-slices", victim=v).defence
    x, y = v.data.test.images(), v.data.test.target_tensor()
    eps = EPS["ensemble"]
    adv_member = _attack(FGSM(eps=eps), v.model, x, y)
    adv_ens = _attack(FGSM(eps=eps), ens, x, y)
    member_clean, ens_clean = _acc(v.model, x, y), _acc(ens, x, y)
    member_adv, ens_adv = _acc(v.model, adv_member, y), _acc(ens, adv_ens, y)
    members_adv = [_acc(m, _attack(FGSM(eps=eps), m, x, y), y) for m in ens.members]
    return {"dataset": v.data.info.label, "members": f"{len(ens.members)} x {v.meta['arch_label']}",
            "attack": "FGSM white-box (on the whole ensemble / on the member)", "eps": eps,
            "adv_training_eps": ens.adv_eps, "n_test": len(x),
            "clean_acc_undefended_member": member_clean, "clean_acc_ensemble": ens_clean,
            "fgsm_acc_undefended_member": member_adv, "fgsm_acc_ensemble": ens_adv,
            "fgsm_acc_each_adv_trained_member": members_adv,
            "claim": ">= 20 points more accuracy under FGSM; clean within 5 points",
            "pass": ens_adv - member_adv >= 20 and abs(ens_clean - member_clean) <= 5}


def section_gmm(cfg: ExperimentConfig, dataset: str = "rsna") -> dict[str, Any]:
    v = get_victim(cfg, dataset)
    gmm = get_defence(cfg, "gmm", dataset, victim=v).defence
    x, y = v.data.test.images(), v.data.test.target_tensor()
    out: dict[str, Any] = {"dataset": v.data.info.label, "victim": v.meta["arch_label"], "n_test": len(x),
                           "attack": "FGSM white-box on the classifier (non-adaptive: detector not in the loss)",
                           "clean_acc_undefended": _acc(v.model, x, y), "clean_acc_ssat_classifier": _acc(gmm.classifier, x, y),
                           "clean_risk_defended": 100 * adversarial_risk(gmm, x, y, adversarial=False),
                           "clean_rejected_pct": 100 * float(gmm.detect(x).float().mean()), "by_eps": {}}
    for eps in (EPS["gmm"], 0.01):
        adv_v = _attack(FGSM(eps=eps), v.model, x, y)
        adv_g = _attack(FGSM(eps=eps), gmm.classifier, x, y)
        risk_v = 100 - _acc(v.model, adv_v, y)
        risk_g = 100 * adversarial_risk(gmm, adv_g, y)
        out["by_eps"][str(eps)] = {"risk_undefended": risk_v, "risk_defended": risk_g,
                                   "adv_rejected_pct": 100 * float(gmm.detect(adv_g).float().mean()),
                                   "acc_ssat_classifier": _acc(gmm.classifier, adv_g, y)}
    main = out["by_eps"][str(EPS["gmm"])]
    out["eps"] = EPS["gmm"]
    out["claim"] = "adversarial risk >= 30 points below undefended at eps 0.002; clean within 5 points"
    out["pass"] = (main["risk_undefended"] - main["risk_defended"] >= 30
                   and abs(out["clean_acc_ssat_classifier"] - out["clean_acc_undefended"]) <= 5)
    return out


def section_denoiser(cfg: ExperimentConfig) -> dict[str, Any]:
    v = get_victim(cfg, "rsna")
    den = get_defence(cfg, "denoiser", "rsna", victim=v).defence
    sur = get_victim(cfg, "rsna", seed=cfg.seed + 1)
    x, y = v.data.test.images(), v.data.test.target_tensor()
    eps = EPS["denoiser"]
    x_adv = _attack(PGD(eps=eps, steps=10, seed=cfg.seed), sur.model, x, y)
    v_clean, d_clean = _acc(v.model, x, y), _acc(den, x, y)
    v_adv, d_adv = _acc(v.model, x_adv, y), _acc(den, x_adv, y)
    return {"dataset": v.data.info.label, "victim": v.meta["arch_label"], "surrogate": f"{sur.meta['arch_label']}, seed {cfg.seed + 1}",
            "attack": "PGD (10 steps) on the surrogate, transferred", "eps": eps, "n_test": len(x),
            "surrogate_acc_on_its_own_adv": _acc(sur.model, x_adv, y),
            "clean_acc_undefended": v_clean, "clean_acc_denoiser": d_clean,
            "transfer_acc_undefended": v_adv, "transfer_acc_denoiser": d_adv,
            "claim": ">= 10 points more accuracy under transfer; clean within 5 points",
            "pass": d_adv - v_adv >= 10 and abs(d_clean - v_clean) <= 5}


def section_rbf(cfg: ExperimentConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"claim": "clean accuracy / Dice no more than 5 points below the plain network",
                           "rows": []}
    ok = True
    for ds in ("chest2", "brain-mri"):
        v = get_victim(cfg, ds)
        rbf = get_defence(cfg, "rbf", ds, victim=v).defence
        x, y = v.data.test.images(), v.data.test.target_tensor()
        if v.data.info.task == "segmentation":
            metric = "dice"
            plain_v, rbf_v = (100 * mean_dice(batched(m, x, 64, cpu=True), y) for m in (v.model, rbf))
        else:
            metric = "accuracy"
            plain_v, rbf_v = _acc(v.model, x, y), _acc(rbf, x, y)
        out["rows"].append({"dataset": v.data.info.label, "plain": v.meta["arch_label"], "metric": metric,
                            "plain_clean": plain_v, "rbf_clean": rbf_v, "rbf_layers": len(rbf.rbf_layers)})
        ok = ok and rbf_v >= plain_v - 5  # no clean cost; being better than the plain network is fine
    out["pass"] = ok
    return out


SECTIONS = {"mgm": section_mgm, "ensemble": section_ensemble, "gmm": section_gmm, "denoiser": section_denoiser,
            "rbf": section_rbf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--profile", default=str(Path(__file__).with_name("defences-small.yaml")),
                    help="base config (default: benchmarks/defences-small.yaml; the flags below override it)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="reports/benchmarks/defences")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--ssat-epochs", type=int, default=None, help="GMM: SSAT epochs (default: the config's, 5)")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    over: dict[str, Any] = {"data": {"image_size": a.image_size, "n_train": a.n_train, "n_val": max(100, a.n_train // 5),
                                     "n_test": a.n_test},
                            "train": {"epochs": a.epochs, "patience": 3}}
    if a.cache_dir:
        over["cache_dir"] = a.cache_dir
    if a.ssat_epochs is not None:
        over["defences"] = {"gmm": {"ssat_epochs": a.ssat_epochs}}
    cfg = load_config(a.profile, over)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.sections.split(","):
        path = out / f"{name}.json"
        if path.exists() and not a.force:
            res = json.loads(path.read_text())
        else:
            t0 = time.perf_counter()
            res = SECTIONS[name](cfg)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            res["scale"] = {"image_size": a.image_size, "n_train": a.n_train, "n_test": a.n_test, "epochs": a.epochs,
                            "ssat_epochs": cfg.defences.gmm.ssat_epochs}
            path.write_text(json.dumps(res, indent=2))
        print(f"== {name}: {'PASS' if res['pass'] else 'FAIL'} ({res['claim']})")
        print(json.dumps({k: v for k, v in res.items() if k not in ("claim", "pass")}, indent=1))


if __name__ == "__main__":
    main()
