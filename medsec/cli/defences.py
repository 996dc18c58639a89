"""`medsec defend`: fit (or load) one defence for a dataset's victim and print its clean performance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medsec.cli.options import CacheOpt, ProfileOpt, SeedOpt
from medsec.config import cli_config

console = Console()


def defend(
    defence: Annotated[str, typer.Option("--defence", help="mgm, iso, ocsvm, gmm, ensemble, denoiser or rbf")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset whose victim to defend")],
    profile: ProfileOpt = "quick",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="also copy the fitted defence here (.pt)")] = None,
    seed: SeedOpt = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Fit (or load from the cache) a defence for a dataset's victim and print its clean performance."""
    from medsec.defences.base import defended_accuracy
    from medsec.defences.factory import get_defence
    from medsec.metrics import task_metrics
    from medsec.models.training import predict

    cfg = cli_config(profile, cache_dir=cache_dir, seed=seed)
    fd = get_defence(cfg, defence, dataset)
    data = fd.victim.data
    x, y = data.test.images(), data.test.target_tensor()
    metrics = task_metrics(data.info.task, predict(fd.defence, x), y)
    line = f"{defence} on {data.info.label}: clean {metrics}"
    if fd.defence.is_detector and data.info.task == "classification":
        line += f"; accepted-and-correct {100 * defended_accuracy(fd.defence, x, y, adversarial=False):.1f}%"
    console.print(line + f" (victim: {fd.victim.meta['test']}; {'cached' if fd.from_cache else 'fitted'}: {fd.path})")
    if out is not None:
        fd.defence.save(out)
        console.print(f"saved {out}")


def register(app: typer.Typer) -> None:
    """Add `medsec defend`."""
    app.command("defend")(defend)
