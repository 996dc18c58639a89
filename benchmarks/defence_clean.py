"""The clean cost of every defence: each defended model beside its undefended victim, on clean test images.

    MEDSEC_CACHE=... PYTHONPATH=. python benchmarks/defence_clean.py [--profile quick] [--rows ensemble/ct-slices,...]
        [--n-test N] [--out reports/benchmarks/defence_clean.json]

The defences are the ones ``medsec reproduce`` and ``medsec defend`` fit (``get_defence``, the same cache
entries). Per row: the victim's headline metric (accuracy %, weighted AUROC % or Dice) and the defended
model's, on the first N clean test images (default: all of them); for detectors also the fraction of clean
test images rejected and, for classification, accepted-and-correct (Levy et al.'s clean column for a
detector). A detector's classifier is the victim itself (MGM, ISO, OCSVM) or its SSAT fine-tuned copy (GMM).
The target: every defended model within 5 points of its victim.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from medsec.config import load_config
from medsec.defences.base import defended_accuracy
from medsec.defences.factory import get_defence
from medsec.metrics import PRIMARY_METRIC, task_metrics
from medsec.models.inference import batched, module_device
from medsec.models.victims import get_victim
from medsec.paths import write_text_atomic

ROWS = ("mgm/chest14", "iso/chest14", "ocsvm/chest14", "gmm/rsna", "gmm/oct", "ensemble/ct-slices",
        "denoiser/rsna", "rbf/chest2", "rbf/brain-mri", "rbf/isic")


def measure(profile: str, row: str, n_test: int | None) -> dict[str, Any]:
    """One row: victim and defended clean metrics on the same clean test images."""
    name, dataset = row.split("/")
    cfg = load_config(profile)
    t0 = time.perf_counter()
    victim = get_victim(cfg, dataset)
    fd = get_defence(cfg, name, dataset, victim=victim)
    data, defence = victim.data, fd.defence.eval()
    n = min(n_test or len(data.test), len(data.test))
    x, y = data.test.images(slice(0, n)), data.test.target_tensor(slice(0, n))
    task = data.info.task
    key = PRIMARY_METRIC[task]
    v = task_metrics(task, batched(victim.model.eval(), x, 128, module_device(victim.model)), y)[key]
    d = task_metrics(task, batched(defence.predict, x, 128, module_device(defence)), y)[key]
    out: dict[str, Any] = {"defence": name, "dataset": dataset, "metric": key, "n_test": n,
                           "victim": round(100 * v, 2), "defended": round(100 * d, 2),
                           "gap": round(100 * (v - d), 2), "within_5": bool(100 * (v - d) <= 5.0),
                           "defence_epochs": cfg.reproduce.defence_epochs or cfg.train.epochs,
                           "fitted_seconds": round(fd.seconds, 1), "from_cache": fd.from_cache}
    if defence.is_detector:
        rejected = batched(defence.detect, x, 128, module_device(defence)).bool()  # type: ignore[attr-defined]
        out["clean_rejected_pct"] = round(100 * float(rejected.float().mean()), 2)
        if task == "classification":
            out["accepted_and_correct"] = round(100 * defended_accuracy(defence, x, y, adversarial=False), 2)
    if name == "ensemble":
        out["members"] = [round(100 * task_metrics(task, batched(m.eval(), x, 128, module_device(m)), y)[key], 2)
                          for m in defence.members]  # type: ignore[attr-defined]
        out["adversarial_training"] = defence.adversarial_training  # type: ignore[attr-defined]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--rows", default=",".join(ROWS), help="defence/dataset pairs, comma-separated")
    ap.add_argument("--n-test", type=int, default=None, help="first N test images (default: all)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/defence_clean.json"))
    args = ap.parse_args()
    results = []
    for row in args.rows.split(","):
        r = measure(args.profile, row.strip(), args.n_test)
        results.append(r)
        extra = f", rejects {r['clean_rejected_pct']}% of clean" if "clean_rejected_pct" in r else ""
        how = "cached" if r["from_cache"] else f"fitted in {r['fitted_seconds']} s"
        print(f"{row:20s} {r['metric']:15s} victim {r['victim']:6.2f}  defended {r['defended']:6.2f}  "
              f"gap {r['gap']:+6.2f}{extra}  ({how})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"profile": args.profile, "rows": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
