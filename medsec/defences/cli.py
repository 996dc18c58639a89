"""Defence commands: ``medsec reproduce --paper li-zhu-2020`` and ``medsec defend`` (fit and save one).

``reproduce`` dispatches on ``--paper`` through ``REPRODUCERS`` (name -> runner(cfg, out_dir) -> out_dir);
the adaptive-attack work adds ``levy-2022`` there and makes it the default (``DEFAULT_PAPER``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medsec.commands import CacheOpt, DataRootOpt, ProfileOpt
from medsec.config import ExperimentConfig, cli_config
from medsec.errors import MedsecError

console = Console()


def _li_zhu(cfg: ExperimentConfig, out: Path, n_images: int | None = None) -> Path:
    from medsec.evaluation.li_zhu import MAX_IMAGES, run_li_zhu

    return run_li_zhu(cfg, out, n_images or MAX_IMAGES)


def _levy(cfg: ExperimentConfig, out: Path, n_images: int | None = None) -> Path:
    from medsec.evaluation.reproduce import run_levy

    if n_images is not None:
        cfg = cfg.model_copy(update={"reproduce": cfg.reproduce.model_copy(update={"n_test": n_images})})
    return run_levy(cfg, out)


# name -> runner(cfg, out_dir, n_images) -> out_dir (n_images None = the paper's / profile's number)
REPRODUCERS: dict[str, Callable[[ExperimentConfig, Path, int | None], Path]] = {
    "levy-2022": _levy, "li-zhu-2020": _li_zhu}
DEFAULT_PAPER = "levy-2022"
OUTPUT_NAMES = {"li-zhu-2020": "li_zhu_2020.json"}


def reproduce(
    paper: Annotated[str | None, typer.Option("--paper", help=f"which paper's tables: {', '.join(REPRODUCERS)}")] = None,
    profile: ProfileOpt = "quick",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output folder (default reports/<paper>-<profile>)")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda")] = None,
    cache_dir: CacheOpt = None,
    data_root: DataRootOpt = None,
    n_images: Annotated[int | None, typer.Option("--n-images", min=1,
                                                 help="at most this many test images (default: the paper's)")] = None,
) -> None:
    """Reproduce a paper's table on the embedded data (resumable: finished cells are kept)."""
    name = paper or DEFAULT_PAPER
    if name not in REPRODUCERS:
        raise MedsecError(f"unknown paper {name!r} for --paper; available: {', '.join(REPRODUCERS)}")
    cfg = cli_config(profile, cache_dir=cache_dir, seed=seed, device=device, data_root=data_root)
    out_dir = REPRODUCERS[name](cfg, out or Path("reports") / f"{name}-{cfg.profile}", n_images)
    results = OUTPUT_NAMES.get(name, "results.json")
    console.print(f"wrote {out_dir / results}, {out_dir / 'report.md'}, {out_dir / 'report.html'}")


def defend(
    defence: Annotated[str, typer.Option("--defence", help="mgm, iso, ocsvm, gmm, ensemble, denoiser or rbf")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset whose victim to defend")],
    profile: ProfileOpt = "quick",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="also copy the fitted defence here (.pt)")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
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
    """Add the defence commands to `app`."""
    app.command("reproduce")(reproduce)
    app.command("defend")(defend)
