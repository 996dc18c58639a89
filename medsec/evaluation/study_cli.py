"""CLI of the transfer study and the survey attacks: `medsec transfer` and `medsec survey`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medsec.commands import CacheOpt, DataRootOpt, ProfileOpt
from medsec.config import cli_config
from medsec.errors import MedsecError

console = Console()

def _parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        arch, sep, path = item.partition("=")
        if not sep or not arch or not path:
            raise MedsecError(f"--weights {item!r}: expected ARCH=PATH, e.g. densenet121=weights.pt")
        out[arch] = path
    return out


def transfer(
    profile: ProfileOpt = "quick",
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (cells, results, figures, report)")] = Path(
        "reports/transfer"),
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", "-w", help="ARCH=PATH: a weights file to initialise ARCH from (adds the init 'file')")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="the study's dataset (default: profile's)")] = None,
    cache_dir: CacheOpt = None,
    data_root: DataRootOpt = None,
) -> None:
    """Bortsova et al.'s transferability study: architecture x initialisation x development data."""
    from medsec.evaluation.transfer import run_transfer_study

    over: dict = {}
    if weights:
        over["weights"] = _parse_weights(weights)
    if dataset:
        over["dataset"] = dataset
    cfg = cli_config(profile, cache_dir=cache_dir, data_root=data_root, extra={"transfer": over} if over else None)
    res = run_transfer_study(cfg, out)
    for f in res["findings"]:
        console.print(f"{f['attack'].upper():5s} {f['finding']}: "
                      f"{'reproduces' if f['reproduced'] else 'does not reproduce'}")
    console.print(f"wrote {out / 'transfer_results.json'}, {out / 'report.md'} and {len(res['figures'])} figures")


def survey(
    profile: ProfileOpt = "quick",
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (cells, results, figures, report)")] = Path(
        "reports/survey"),
    dataset: Annotated[list[str] | None, typer.Option("--dataset", "-d", help="only these datasets")] = None,
    cache_dir: CacheOpt = None,
    data_root: DataRootOpt = None,
) -> None:
    """The survey's attacks (patch, one-pixel, universal perturbation, backdoor, feature collision)."""
    from medsec.evaluation.survey import run_survey

    cfg = cli_config(profile, cache_dir=cache_dir, data_root=data_root)
    res = run_survey(cfg, out, dataset or None)
    console.print(f"wrote {out / 'survey_results.json'} and {out / 'report.md'} ({len(res['rows'])} cells)")


def register(app: typer.Typer) -> None:
    """Add `transfer` and `survey` to the medsec command."""
    app.command("transfer")(transfer)
    app.command("survey")(survey)
