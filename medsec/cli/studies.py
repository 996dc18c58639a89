"""The studies' commands: `reproduce` (a paper's tables), `transfer`, `survey` and `audit`. Each runs its study
(medsec.studies) and writes its report (medsec.report) into --out: results.json, report.md, report.html,
figures/, cells/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from medsec.cli.options import (
    AddressOpt,
    CacheOpt,
    DataRootOpt,
    DatasetsOpt,
    DeviceOpt,
    EpsOpt,
    ExecutorOpt,
    OutOpt,
    ProfileOpt,
    SeedOpt,
)
from medsec.config import ExperimentConfig, cli_config
from medsec.errors import MedsecError

if TYPE_CHECKING:
    from medsec.studies.grid import Executor

console = Console()


def _executor(name: str, address: str | None, cfg: ExperimentConfig, out: Path
              ) -> tuple[Executor, ExperimentConfig, Path]:
    """The executor of --executor/--address, with the config and output folder it needs: for Ray, the cache
    and output folders as absolute paths, so every worker reads and writes the same (shared) folders."""
    from medsec.studies.ray_executor import make_executor

    if name == "local" and address is None:
        return make_executor(name), cfg, out
    from medsec.paths import cache_root

    cache = cache_root(cfg.cache_dir).resolve()
    cfg = cfg.model_copy(update={"cache_dir": str(cache)})
    return make_executor(name, address, shared_folders=[cache]), cfg, out.resolve()


def _levy(cfg: ExperimentConfig, out: Path, n_images: int | None, executor: Executor) -> None:
    from medsec.report.levy import write_levy_report
    from medsec.studies.levy import run_levy

    if n_images is not None:
        cfg = cfg.model_copy(update={"reproduce": cfg.reproduce.model_copy(update={"n_test": n_images})})
    write_levy_report(run_levy(cfg, out, executor), cfg.profile, out)


def _li_zhu(cfg: ExperimentConfig, out: Path, n_images: int | None, executor: Executor) -> None:
    from medsec.report.li_zhu import write_li_zhu_report
    from medsec.studies.li_zhu import MAX_IMAGES, run_li_zhu

    write_li_zhu_report(run_li_zhu(cfg, out, n_images or MAX_IMAGES, executor), out)


# paper name -> runner(cfg, out_dir, n_images, executor): study and report (n_images None = the paper's / profile's)
REPRODUCERS: dict[str, Callable[[ExperimentConfig, Path, int | None, Executor], None]] = {
    "levy-2022": _levy, "li-zhu-2020": _li_zhu}
DEFAULT_PAPER = "levy-2022"


def _wrote(out: Path) -> None:
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'}")


def reproduce(
    paper: Annotated[str | None, typer.Option("--paper", help=f"which paper's tables: {', '.join(REPRODUCERS)}")] = None,
    profile: ProfileOpt = "quick",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output folder (default reports/<paper>-<profile>)")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    cache_dir: CacheOpt = None,
    data_root: DataRootOpt = None,
    n_images: Annotated[int | None, typer.Option("--n-images", min=1,
                                                 help="at most this many test images (default: the paper's)")] = None,
    seeds: Annotated[str | None, typer.Option(
        "--seeds", help="comma-separated seeds, e.g. 0,1,2: victims, defences and attacks per seed; the report "
                        "shows each row's mean, range and verdict")] = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
) -> None:
    """Reproduce a paper's table on the embedded data (resumable: finished cells are kept)."""
    name = paper or DEFAULT_PAPER
    if name not in REPRODUCERS:
        raise MedsecError(f"unknown paper {name!r} for --paper; available: {', '.join(REPRODUCERS)}")
    cfg = cli_config(profile, cache_dir=cache_dir, seed=seed, device=device, data_root=data_root)
    if seeds is not None:
        cfg = cfg.model_copy(update={"reproduce": cfg.reproduce.model_copy(update={"seeds": _parse_seeds(seeds)})})
    ex, cfg, out_dir = _executor(executor, address, cfg, out or Path("reports") / f"{name}-{cfg.profile}")
    REPRODUCERS[name](cfg, out_dir, n_images, ex)
    _wrote(out_dir)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MedsecError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise MedsecError("--seeds: give at least one seed, e.g. 0,1,2")
    return seeds


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
    out: OutOpt = Path("reports/transfer"),
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", "-w", help="ARCH=PATH: a weights file to initialise ARCH from (adds the init 'file')")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="the study's dataset (default: profile's)")] = None,
    cache_dir: CacheOpt = None,
    data_root: DataRootOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
) -> None:
    """Bortsova et al.'s transferability study: architecture x initialisation x development data."""
    from medsec.report.transfer import write_transfer_report
    from medsec.studies.transfer import run_transfer_study

    over: dict = {}
    if weights:
        over["weights"] = _parse_weights(weights)
    if dataset:
        over["dataset"] = dataset
    cfg = cli_config(profile, cache_dir=cache_dir, data_root=data_root, extra={"transfer": over} if over else None)
    ex, cfg, out = _executor(executor, address, cfg, out)
    res = run_transfer_study(cfg, out, ex)
    write_transfer_report(res, cfg.transfer, cfg.profile, out)
    for f in res["findings"]:
        console.print(f"{f['attack'].upper():5s} {f['finding']}: "
                      f"{'reproduces' if f['reproduced'] else 'does not reproduce'}")
    _wrote(out)


def survey(
    profile: ProfileOpt = "quick",
    out: OutOpt = Path("reports/survey"),
    dataset: DatasetsOpt = None,
    cache_dir: CacheOpt = None,
    data_root: DataRootOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
) -> None:
    """The survey's attacks (patch, one-pixel, universal perturbation, backdoor, feature collision)."""
    from medsec.report.survey import write_survey_report
    from medsec.studies.survey import run_survey

    cfg = cli_config(profile, cache_dir=cache_dir, data_root=data_root)
    ex, cfg, out = _executor(executor, address, cfg, out)
    res = run_survey(cfg, out, dataset or None, ex)
    write_survey_report(res, cfg, out)
    console.print(f"{len(res['rows'])} cells")
    _wrote(out)


def audit(
    target: Annotated[str, typer.Argument(help="path/to/defence.py:ClassName, or a built-in defence name "
                                               "(mgm, gmm, ensemble, denoiser, rbf, iso, ocsvm)")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset whose victim the defence protects")]
    = "chest2",
    eps: EpsOpt = 0.02,
    profile: ProfileOpt = "quick",
    n: Annotated[int, typer.Option("--n", help="test images attacked")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="iterations of the iterative attacks")] = 50,
    out: OutOpt = Path("reports/audit"),
    cache_dir: CacheOpt = None,
) -> None:
    """Attack your own defence: the adaptive cascade plus gradient-masking checks, and a verdict."""
    from medsec.report.audit import write_audit_report
    from medsec.studies.audit import run_audit

    if not (0.0 <= eps <= 1.0):
        raise MedsecError(f"--eps must lie in [0, 1] (L_inf, [0, 1] pixel units), got {eps}")
    cfg = cli_config(profile, cache_dir=cache_dir)
    res = run_audit(target, cfg, dataset, eps, n, steps, out)
    write_audit_report(res, out)
    console.print(f"[bold]{res.defence}[/] at eps={res.eps:g} on {res.n} images: clean {res.clean:.1f}% handled")
    for k, v in res.attacks.items():
        console.print(f"  {k:60s} {v:6.1f}%")
    for m in res.masking:
        console.print(f"  [yellow]masking:[/] {m}")
    console.print(f"[bold]verdict: {res.verdict}[/]" + (f" (best: {res.best_attack})" if res.best_attack else ""))
    _wrote(out)


def register(app: typer.Typer) -> None:
    """Add the studies' commands."""
    app.command("reproduce")(reproduce)
    app.command("transfer")(transfer)
    app.command("survey")(survey)
    app.command("audit")(audit)
