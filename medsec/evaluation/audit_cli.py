"""The `medsec audit` command (a thin layer over medsec.evaluation.audit; heavy imports happen on use)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medsec.errors import MedsecError

console = Console()


def audit(
    target: Annotated[str, typer.Argument(help="path/to/defence.py:ClassName, or a built-in defence name "
                                               "(mgm, gmm, ensemble, denoiser, rbf, iso, ocsvm)")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset whose victim the defence protects")]
    = "chest2",
    eps: Annotated[float, typer.Option("--eps", help="L_inf budget in [0, 1] pixel units")] = 0.02,
    profile: Annotated[str, typer.Option("--profile", "-p", help="quick, full, or a YAML config file")] = "quick",
    n: Annotated[int, typer.Option("--n", help="test images attacked")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="iterations of the iterative attacks")] = 50,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write audit.json, report.md, report.html")] = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="cache folder")] = None,
) -> None:
    """Attack your own defence: the adaptive cascade plus gradient-masking checks, and a verdict."""
    from medsec.config import cli_config
    from medsec.evaluation.audit import run_audit

    if not (0.0 <= eps <= 1.0):
        raise MedsecError(f"--eps must lie in [0, 1] (L_inf, [0, 1] pixel units), got {eps}")
    cfg = cli_config(profile, cache_dir=cache_dir)
    res = run_audit(target, cfg, dataset, eps, n, steps, out)
    console.print(f"[bold]{res.defence}[/] at eps={res.eps:g} on {res.n} images: clean {res.clean:.1f}% handled")
    for k, v in res.attacks.items():
        console.print(f"  {k:60s} {v:6.1f}%")
    for m in res.masking:
        console.print(f"  [yellow]masking:[/] {m}")
    console.print(f"[bold]verdict: {res.verdict}[/]" + (f" (best: {res.best_attack})" if res.best_attack else ""))
    if out is not None:
        console.print(f"wrote {Path(out) / 'audit.json'}, report.md, report.html")


def register(app: typer.Typer) -> None:
    """Add ``medsec audit`` to the Typer app."""
    app.command("audit")(audit)
