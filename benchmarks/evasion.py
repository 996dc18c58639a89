"""Detector evasion and limited-knowledge transfer at the state of the art, side by side in one run.

detectors: on a Levy-et-al. detector row (the quick profile's cached victim and defence, the study's own
  cache), the previous adaptive recipe (``orthogonal=False``), the current one, and a plain orthogonal PGD
  (Bryniarski et al. 2022) on the detector's exact score: accuracy with defence (an adversarial image counts
  as handled when rejected or still right; multi-label: the top clean finding), rejection rate, detection
  AUROC (clean vs adversarial detector scores, every attacked image) and seconds. The threshold is the one
  fixed at fit time; the run fails if it changed.
transfer: on the Denoiser row's surrogates (the attacker's denoiser copies and the plain surrogate of the
  original attack), medsec's limited-knowledge recipe next to torchattacks' MI-DI-FGSM (DIFGSM, decay 1.0) on
  the mean of the same surrogates' logits, 100 steps, both judged on the defended victim; exit code 1 when
  medsec's leaves a higher accuracy than the best MI-DI-FGSM variant on the same surrogates.

Everything uses the same first n test images and the row's eps ([0, 1] pixel units, L_inf).

    OMP_NUM_THREADS=2 PYTHONPATH=.:benchmarks python benchmarks/evasion.py detectors [--rows mgm-chest14,gmm-rsna] [--n 64]
    OMP_NUM_THREADS=2 PYTHONPATH=.:benchmarks python benchmarks/evasion.py transfer [--seeds 0,1,2] [--n 64] [--sets all|denoisers|both]
        [--alphas default|eps10|both] [--only medsec,torchattacks,previous]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from common import machine, torchattacks_or_exit
from torch import Tensor, nn

from medsec.attacks.adaptive import DenoiserRecipe, accepted_by, detector_term, exposed, recipe_for, rejected
from medsec.attacks.adaptive.orthogonal import OrthogonalPGD, suspicion
from medsec.attacks.transfer import LogitEnsemble
from medsec.config import load_config
from medsec.metrics import detection_auroc
from medsec.studies.common import handled_scores
from medsec.studies.levy import ROWS, RowRun, load_row, recipe_options


def row_setup(profile: str, row_id: str, n: int, seed: int = 0) -> RowRun:
    """The row's victim, defence (the library's caches) and first n test images, loaded by the Levy study's own
    ``load_row`` exactly as ``medsec reproduce`` does."""
    row = next(r for r in ROWS if r.id == row_id)
    cfg = load_config(profile, {"seed": seed, "device": "cpu", "reproduce": {"n_test": n}})
    return load_row(cfg, row, {"from_cache": True, "seconds": 0.0})


def detectors(a: argparse.Namespace) -> int:
    print(f"# detector evasion, profile {a.profile}, first {a.n} test images, {a.steps} steps, "
          f"{a.restarts} restart(s)  [{machine()}]")
    for seed in a.seeds:
        for row_id in a.rows.split(","):
            detector_row(a, row_id, seed)
    return 0


def detector_row(a: argparse.Namespace, row_id: str, seed: int) -> None:
    """One detector row's table at one experiment seed."""
    run = row_setup(a.profile, row_id, a.n, seed)
    row, defence, x, y, task, finding = run.row, run.defence, run.x, run.y, run.task, run.finding
    thr = float(defence.threshold)
    s_clean = suspicion(defence, x).numpy()
    spread = float(np.std(s_clean))
    ex = exposed(defence)
    clf = ex.get("classifier", defence)
    kw: dict[str, Any] = {"steps": a.steps, "restarts": a.restarts, "seed": run.cfg.seed}
    contenders: dict[str, Callable[[], Tensor]] = {
        "previous recipe": lambda: recipe_for(defence, row.eps, orthogonal=False, **kw)(defence, x, y),
        "current recipe": lambda: recipe_for(defence, row.eps, **kw)(defence, x, y),
    }
    if row.defence != "gmm":  # GMM's score follows the predicted class: orthogonal PGD runs inside its recipe
        contenders["orthogonal PGD (score)"] = lambda: OrthogonalPGD(
            detector_term(defence, spread), eps=row.eps, steps=a.steps, restarts=a.restarts, grad_model=clf,
            success=accepted_by(defence), seed=run.cfg.seed)(defence, x, y)
    print(f"\n## {row_id}, seed {seed}: eps {row.eps:g}, n={len(x)}, threshold {thr:.4g} (fixed at fit time)\n")
    print("| attack | accuracy with defence (%) | rejected (%) | detection AUROC (%) | seconds |")
    print("|---|---:|---:|---:|---:|")
    clean_acc = 100 * float(np.mean(handled_scores(defence, x, y, task, adversarial=False, finding=finding,
                                                    detector=defence)))
    print(f"| none (clean) | {clean_acc:.1f} | {100 * float(rejected(defence, x).float().mean()):.1f} | - | - |")
    for name, fn in contenders.items():
        t = time.perf_counter()
        xa = fn()
        sec = time.perf_counter() - t
        assert float((xa - x).abs().max()) <= row.eps + 1e-6
        acc = 100 * float(np.mean(handled_scores(defence, xa, y, task, adversarial=True, finding=finding,
                                                 detector=defence)))
        rej = 100 * float(rejected(defence, xa).float().mean())
        auc = 100 * detection_auroc(s_clean, suspicion(defence, xa).numpy())
        print(f"| {name} | {acc:.1f} | {rej:.1f} | {auc:.1f} | {sec:.0f} |", flush=True)
    if float(defence.threshold) != thr:
        raise SystemExit("the detector threshold changed during the attacks")


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    z = torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)])
    return 100.0 * float((z.argmax(1) == y).float().mean())


def transfer(a: argparse.Namespace) -> int:
    """Every seed's table, then the verdict on the accuracy pooled over the seeds (the same images per seed for
    every contender; the best torchattacks variant is the one best over all seeds, not picked per seed)."""
    ta = torchattacks_or_exit()
    per_seed = {seed: transfer_seed(a, ta, seed) for seed in a.seeds}
    ok = True
    keys = list(per_seed[a.seeds[0]])
    for sname in dict.fromkeys(sn for _, sn in keys):
        pooled = {n: float(np.mean([per_seed[s][(n, sn)] for s in a.seeds])) for n, sn in keys if sn == sname}
        ours = next((n for n in pooled if n.startswith("medsec DenoiserRecipe (")), None)
        tas = [n for n in pooled if n.startswith("torchattacks")]
        if ours is None or not tas:
            continue
        best = min(tas, key=lambda n: pooled[n])
        ok &= pooled[ours] <= pooled[best]
        seeds = ", ".join(f"seed {s}: {per_seed[s][(ours, sname)]:.1f} vs {per_seed[s][(best, sname)]:.1f}"
                          for s in a.seeds)
        print(f"\n{sname}, mean over seeds {','.join(map(str, a.seeds))}: medsec {pooled[ours]:.1f}% vs the best "
              f"MI-DI-FGSM ({best.removeprefix('torchattacks MI-DI-FGSM, ')}) {pooled[best]:.1f}% ({seeds}): "
              f"{'at least as strong' if pooled[ours] <= pooled[best] else 'WEAKER'}")
    return 0 if ok else 1


def transfer_seed(a: argparse.Namespace, ta: Any, seed: int) -> dict[tuple[str, str], float]:
    """One seed's row: every contender on the same images; returns {(attack, surrogate set): accuracy %}."""
    run = row_setup(a.profile, "denoiser-rsna", a.n, seed)
    row, defence, x, y, rc = run.row, run.defence, run.x, run.y, run.cfg.reproduce
    owned = [m.eval() for m in recipe_options(run, rc.steps)["surrogates"]]  # as medsec reproduce hands them over
    denoisers, plain = owned[:-1], owned[-1]
    eps, rseed = row.eps, run.cfg.seed
    print(f"\n# seed {seed}: limited knowledge on {row.id}: eps {eps:g}, first {len(x)} test images, {len(denoisers)} "
          f"denoiser surrogates + the plain surrogate; judged on the defended victim  [{machine()}]")
    print(f"# defended victim clean accuracy {_accuracy(defence, x, y):.1f}%")
    sets = {"denoiser surrogates + plain surrogate": [*denoisers, plain], "denoiser surrogates": denoisers}
    sets = {k: v for k, v in sets.items() if a.sets == "both" or (a.sets == "all") == ("plain" in k)}
    print("\n| attack | surrogates | accuracy of the defended victim (%) | seconds |")
    print("|---|---|---:|---:|")
    results: dict[tuple[str, str], float] = {}

    def report(name: str, sname: str, fn: Callable[[], Tensor]) -> None:
        t = time.perf_counter()
        xa = fn()
        sec = time.perf_counter() - t
        assert float((xa - x).abs().max()) <= eps + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
        results[(name, sname)] = acc = _accuracy(defence, xa, y)
        print(f"| {name} | {sname} | {acc:.1f} | {sec:.0f} |", flush=True)

    alphas = {"default": [(2 / 255, "alpha 2/255 (default)")], "eps10": [(eps / 10, "alpha eps/10")]}
    alphas["both"] = alphas["default"] + alphas["eps10"]
    for sname, sur in sets.items():
        ens = LogitEnsemble(sur).eval()
        for ts in (a.transfer_steps or [rc.transfer_steps]) if "medsec" in a.only else []:
            tlabel = "" if ts is None else f"; MI-DI(-TI) candidates {ts} steps"
            report(f"medsec DenoiserRecipe (profile budget: {rc.steps} steps, {rc.restarts} restart{tlabel})", sname,
                   lambda sur=sur, ts=ts: DenoiserRecipe(eps, surrogates=sur, steps=rc.steps, restarts=rc.restarts,
                                                         transfer_steps=ts, seed=rseed)(defence, x, y))
        for alpha, label in alphas[a.alphas] if "torchattacks" in a.only else []:
            def ta_fn(alpha: float = alpha, ens: nn.Module = ens) -> Tensor:
                torch.manual_seed(rseed)
                return ta.DIFGSM(ens, eps=eps, alpha=alpha, steps=100, decay=1.0)(x, y)
            report(f"torchattacks MI-DI-FGSM, 100 steps, {label}", sname, ta_fn)
        if "previous" in a.only:
            report(f"medsec DenoiserRecipe, previous (transfer=False, {rc.steps} steps)", sname,
                   lambda sur=sur: DenoiserRecipe(eps, surrogates=sur, steps=rc.steps, restarts=rc.restarts,
                                                  transfer=False, seed=rseed)(defence, x, y))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("detectors", "transfer"))
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--rows", default="mgm-chest14", help="detector rows, comma-separated (e.g. mgm-chest14,gmm-rsna)")
    ap.add_argument("--n", type=int, default=64, help="test images attacked")
    ap.add_argument("--seeds", default="0", help="the experiment seeds, comma-separated (victims, defences, "
                    "surrogates; the seeds' cached models, e.g. from medsec reproduce --seeds 0,1,2)")
    ap.add_argument("--steps", type=int, default=None, help="adaptive steps (default: the profile's)")
    ap.add_argument("--restarts", type=int, default=None, help="restarts (default: the profile's)")
    ap.add_argument("--sets", choices=("all", "denoisers", "both"), default="both",
                    help="transfer: surrogate sets (all: the denoiser copies and the plain surrogate)")
    ap.add_argument("--alphas", choices=("default", "eps10", "both"), default="both",
                    help="transfer: torchattacks' step sizes (its default 2/255, and eps/10)")
    ap.add_argument("--transfer-steps", type=int, nargs="*", default=None,
                    help="transfer: the recipe's MI-DI(-TI) step counts to compare (default: the recipe's)")
    ap.add_argument("--only", default="medsec,torchattacks,previous",
                    help="transfer: which contenders (comma-separated: medsec, torchattacks, previous)")
    a = ap.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    rc = load_config(a.profile, {}).reproduce
    a.steps = a.steps or rc.steps
    a.restarts = a.restarts or rc.restarts
    return detectors(a) if a.what == "detectors" else transfer(a)


if __name__ == "__main__":
    sys.exit(main())
