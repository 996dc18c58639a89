"""Foundation commands: list datasets, train victims, evaluate clean performance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medsec.cli.options import CacheOpt, DataRootOpt, DatasetsOpt, OutOpt, ProfileOpt, SeedOpt
from medsec.config import cli_config

console = Console()


def datasets() -> None:
    """List the embedded synthetic datasets."""
    from medsec.data import available_datasets
    from medsec.data.synthetic import GENERATORS

    t = Table("name", "task", "classes", "channels", "modality")
    for name in available_datasets():
        info = GENERATORS[name].info
        t.add_row(info.label, info.task, str(info.num_outputs), str(info.channels), info.modality)
    console.print(t)


def train(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset name, e.g. chest2")],
    arch: Annotated[str | None, typer.Option("--arch", "-a", help="architecture (default: the profile's victim, "
                                                                  "else the default of the dataset's task)")] = None,
    profile: ProfileOpt = "quick",
    seed: SeedOpt = None,
    data_root: DataRootOpt = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Train (or load from the cache) the victim of a dataset and print its clean test metrics."""
    from medsec.models.victims import get_victim

    cfg = cli_config(profile, data_root=data_root, cache_dir=cache_dir, seed=seed)
    v = get_victim(cfg, dataset, arch)
    console.print(f"{v.data.info.label} / {v.meta['arch_label']}: test {v.meta['test']}"
                  f" ({'cached' if v.from_cache else 'trained'}; checkpoint {v.checkpoint})")


def evaluate(
    profile: ProfileOpt = "quick",
    out: OutOpt = Path("reports/quick"),
    dataset: DatasetsOpt = None,
    data_root: DataRootOpt = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Train/load every victim of the profile and write their clean metrics (JSON, Markdown, HTML)."""
    from medsec.report.clean import write_clean_report
    from medsec.studies.clean import run_clean

    cfg = cli_config(profile, data_root=data_root, cache_dir=cache_dir)
    write_clean_report(run_clean(cfg, out, dataset or None), cfg.profile, out)
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'}")


def register(app: typer.Typer) -> None:
    """Add the foundation commands to `app`."""
    app.command("datasets")(datasets)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
