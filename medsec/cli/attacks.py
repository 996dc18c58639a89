"""`medsec attack`: attack a cached victim and print its metric before and after, and the perturbation."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medsec.cli.options import CacheOpt, DataRootOpt, ProfileOpt, SeedOpt

console = Console()


def attack(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset name, e.g. oct")],
    attack_name: Annotated[str, typer.Option("--attack", help="fgsm, bim, pgd, mim, cw, cw-linf, apgd-ce, "
                                                              "apgd-dlr, deepfool, cascade")] = "pgd",
    eps: Annotated[float, typer.Option("--eps", help="budget in [0, 1] pixel units (L_inf) or pixel L2")] = 0.02,
    arch: Annotated[str | None, typer.Option("--arch", "-a", help="victim architecture (default: the profile's)")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="iterations (default: the attack's)")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="step size (default: the attack's rule)")] = None,
    norm: Annotated[str | None, typer.Option("--norm", help="linf or l2 (default: the attack's)")] = None,
    restarts: Annotated[int, typer.Option("--restarts")] = 1,
    targeted: Annotated[bool, typer.Option("--targeted", help="aim at class (y + 1) mod K")] = False,
    n: Annotated[int, typer.Option("--n", help="number of test images to attack")] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 128,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 on CUDA), fp32 or bf16")] = "auto",
    profile: ProfileOpt = "quick",
    seed: SeedOpt = None,
    data_root: DataRootOpt = None,
    cache_dir: CacheOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
) -> None:
    """Attack the cached victim of a dataset on its first N test images."""
    from medsec.attacks.registry import build_attack
    from medsec.config import cli_config
    from medsec.errors import MedsecError
    from medsec.metrics import PRIMARY_METRIC, summarize_perturbation, task_metrics
    from medsec.models.inference import batched, resolve_device
    from medsec.models.victims import get_victim

    if n < 1:
        raise MedsecError(f"--n must be >= 1, got {n}")
    cfg = cli_config(profile, data_root=data_root, cache_dir=cache_dir, seed=seed)
    v = get_victim(cfg, dataset, arch)
    task = v.data.info.task
    if targeted and task != "classification":
        raise MedsecError("--targeted is available for classification datasets only")
    device = resolve_device(cfg.device)
    model = v.model.to(device).eval()
    split = v.data.test
    m = min(n, len(split))
    x = split.images(slice(0, m)).to(device)
    y = split.target_tensor(slice(0, m)).to(device)
    k = v.data.info.num_outputs
    atk = build_attack(attack_name, eps, steps=steps, alpha=alpha, norm=norm, restarts=restarts,
                       targeted=targeted, batch_size=batch_size, precision=precision, num_classes=k,
                       seed=cfg.seed)
    goal = (y + 1) % k if targeted else y
    t0 = time.perf_counter()
    res = atk.run(model, x, goal)
    seconds = time.perf_counter() - t0
    clean_out = batched(lambda xb: model(xb).float(), x, batch_size).cpu()
    adv_out = batched(lambda xb: model(xb).float(), res.x_adv, batch_size).cpu()
    before = task_metrics(task, clean_out, y.cpu())
    after = task_metrics(task, adv_out, y.cpu())
    pert = summarize_perturbation(x.cpu(), res.x_adv.cpu())
    out = {"dataset": v.data.info.label, "arch": v.meta.get("arch_label", arch), "attack": repr(atk),
           "task": task, "n": m, "eps": eps, "metric": PRIMARY_METRIC[task], "before": before, "after": after,
           "success_rate": res.success_rate, "perturbation": pert, "seconds": round(seconds, 3),
           "device": str(device)}
    if "succeeded_by" in res.info:
        names = [s or "robust" for s in res.info["succeeded_by"]]
        out["succeeded_by"] = {s: names.count(s) for s in sorted(set(names))}
    if as_json:
        print(json.dumps(out))
        return
    t = Table("metric", "clean", "adversarial", title=f"{out['dataset']} / {out['arch']}: {out['attack']}")
    for key in before:
        t.add_row(key, f"{100 * before[key]:.2f}", f"{100 * after[key]:.2f}")
    t.add_row("attack success rate", "", f"{100 * res.success_rate:.2f}")
    console.print(t)
    console.print(f"perturbation (mean over {m} images): L_inf {pert['linf']:.4f}, L2 {pert['l2']:.4f}, "
                  f"PSNR {pert['psnr']:.1f} dB, SSIM {pert['ssim']:.4f}; {seconds:.1f} s on {device}")
    if "succeeded_by" in out:
        console.print(f"succeeded by: {out['succeeded_by']}")


def register(app: typer.Typer) -> None:
    """Add `medsec attack`."""
    app.command("attack")(attack)
