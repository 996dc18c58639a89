"""Levy et al. (2022) Tables 1 and 2: five medical-imaging defences against their original attacks and
against adaptive attacks, on the embedded data (``medsec reproduce --paper levy-2022``).

Protocol (as the paper says; chosen and stated where it is silent):
- eight rows (defence / dataset / metric) as Table 1; every attack of a row uses the same first
  ``reproduce.n_test`` test images and the eps of the defence's original authors, in [0, 1] pixel units,
  L_inf (``Row.eps``, ``Row.eps_note`` says where it comes from or that it was not published);
- columns: Clean (the defended system on clean inputs), Original attack without defence (on the plain
  victim), Original attack with defence, Adaptive attack with defence (``medsec.attacks.adaptive`` recipe);
- accuracy of a detector defence (MGM, GMM): an adversarial input counts as handled when it is rejected or
  still correctly classified; a clean input when it is accepted and correctly classified
  (:mod:`medsec.metrics.system`). The threshold is the defence's own, fixed at fit time to reject 5% of CLEAN
  data (MGM: training images; GMM: validation images), before any attack runs; nothing here refits it. GMM's adversarial risk = 100 - that accuracy
  (Levy et al. Table 1 caption);
- multi-label chest14 (MGM): the attacked finding is the victim's top clean finding (Li & Zhu); an image is
  correctly classified when the decision on that finding matches its label; Table 2's AUROC columns are the
  victim's weighted AUROC (clean, original attack without defence) and the detector's detection AUROC
  (clean vs adversarial scores, all attacked images) for the original and the adaptive attack;
- segmentation: mean foreground Dice (0-100); RBF is no detector, so nothing is rejected;
- limited knowledge (a row whose original claim is against an attacker who does not know the defence's
  weights): the adaptive attack crafts on the attacker's own copies of the defended system — the same defence
  fitted with other seeds — and only the result is judged on the victim.
The grid: one cell per victim, one per fitted defence, one per row (``cells/levy-<row>-<config digest>.json``),
each written when it finishes: an interrupted run resumes without recomputing finished cells.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from medsec.attacks.adaptive import Recipe, recipe_for
from medsec.attacks.registry import build_attack
from medsec.config import ExperimentConfig
from medsec.defences.base import Defence, is_detector, rejected
from medsec.defences.factory import get_defence
from medsec.errors import ConfigError
from medsec.metrics import detection_auroc, percent, roc_points, weighted_auroc
from medsec.models.inference import batched, resolve_device
from medsec.models.victims import Victim, get_victim
from medsec.paths import atomic_path
from medsec.studies.clean import integrity_section
from medsec.studies.common import (
    StudyOutput,
    config_digest,
    defence_cell,
    defence_config,
    handled_scores,
    outputs,
    provenance,
    victim_cell,
)
from medsec.studies.floor import converge, converged_floor
from medsec.studies.grid import Cell, Executor, cell_key, run_grid
from medsec.studies.pattern import COLUMNS, across_seeds, paper_pattern, verdict

console = Console()


@dataclass(frozen=True)
class Row:
    """One line of Levy et al. Table 1 (and its Table 2 line, when it has one)."""

    id: str
    defence: str  # medsec.defences.factory name
    dataset: str
    eps: float  # [0, 1] pixel units, L_inf
    eps_note: str
    original: str  # an attack of medsec.attacks.registry, or "transfer" (BIM crafted on a plain surrogate victim)
    original_note: str
    paper: tuple[float, float, float, float]  # Table 1: clean, original w/o defence, original with, "our attack"
    table2: str | None = None  # "auroc" (MGM) or "risk" (GMM)
    paper_t2: tuple[float, float, float, float] | None = None
    limited_knowledge: bool = False  # the adaptive attacker crafts on its own copies of the defended system
    # the original attack's images are crafted on the undefended victim and shown to the defended system, as
    # the defence's authors evaluated it (a "transfer" original is crafted on its surrogate either way)
    original_on_victim: bool = False


_UNPUBLISHED = ("not in the sources available to medsec (Levy et al. only say 'the level used by the original "
                "authors'); 0.02, Li & Zhu's white-box budget, is used")
ROWS: tuple[Row, ...] = (
    Row("mgm-chest14", "mgm", "chest14", 0.02, "Li & Zhu 2020: white-box maximum perturbation 0.02",
        "pgd", "PGD, 10 steps, random start, on the top finding (Li & Zhu's strongest white-box attack)",
        (95.2, 0.0, 90.4, 4.0), "auroc", (87.1, 12.5, 96.9, 0.0)),
    Row("ensemble-ct-slices", "ensemble", "ct-slices", 0.02, "Paul et al. 2020: " + _UNPUBLISHED,
        "fgsm", "FGSM (Paul et al.'s attack) crafted on the undefended victim and shown to the ensemble: Paul et "
        "al. report the ensemble's accuracy on FGSM images of the plain CNN, and Levy et al.'s adaptive attack "
        "(FGSM on every member, signs averaged) is the white-box attack on the ensemble",
        (84.7, 0.0, 80.4, 0.0), original_on_victim=True),
    Row("denoiser-rsna", "denoiser", "rsna", 0.02, "Xue et al. 2019: " + _UNPUBLISHED,
        "transfer", "limited knowledge (Xue et al.'s claim): BIM, 10 steps, crafted on a plain surrogate victim "
        "(same architecture, other seed) and transferred", (85.5, 30.1, 43.2, 3.0), limited_knowledge=True),
    Row("rbf-chest2", "rbf", "chest2", 0.02, "Taghanaki et al. 2019: " + _UNPUBLISHED,
        "fgsm", "FGSM (one of Taghanaki et al.'s attacks)", (84.6, 62.3, 50.0, 22.9)),
    Row("gmm-rsna", "gmm", "rsna", 0.002, "Li, Pan & Zhu 2021: FGSM with eps up to 0.002 (their code)",
        "fgsm", "FGSM (Li, Pan & Zhu's evaluation attack)", (79.5, 0.0, 45.4, 19.4), "risk",
        (20.5, 100.0, 54.6, 80.6)),
    Row("gmm-oct", "gmm", "oct", 0.002, "Li, Pan & Zhu 2021: FGSM with eps up to 0.002 (their code)",
        "fgsm", "FGSM (Li, Pan & Zhu's evaluation attack)", (99.0, 0.0, 52.1, 14.1), "risk",
        (1.0, 100.0, 47.9, 85.9)),
    Row("rbf-brain-mri", "rbf", "brain-mri", 0.02, "Taghanaki et al. 2019: " + _UNPUBLISHED,
        "fgsm", "FGSM on the pixel cross-entropy", (82.9, 23.9, 39.8, 18.5)),
    Row("rbf-isic", "rbf", "isic", 0.02, "Taghanaki et al. 2019: " + _UNPUBLISHED,
        "fgsm", "FGSM on the pixel cross-entropy", (77.6, 43.9, 83.3, 22.1)),
)
ROW_IDS = tuple(r.id for r in ROWS)
TRANSFER = "transfer"


# ----------------------------------------------------------------------------------------------------------
# one row, in stages: load, original, adaptive, floor, table 1, table 2, curves
# ----------------------------------------------------------------------------------------------------------

@dataclass
class RowRun:
    """Everything the stages of one row share: the defended system, its victim, the attacked images."""

    cfg: ExperimentConfig
    row: Row
    defence: Defence
    victim: Victim
    x: Tensor
    y: Tensor
    task: str
    finding: Tensor | None
    z_plain: Tensor
    surrogate: nn.Module | None = None

    @property
    def plain(self) -> nn.Module:
        """The undefended victim."""
        return self.victim.model

    @property
    def detector(self) -> Defence | None:
        """The defence when it rejects inputs, else None."""
        return self.defence if is_detector(self.defence) else None

    def system(self, xa: Tensor, adversarial: bool, rej: Tensor | None = None) -> float:
        """Percent of inputs the defended system handles (see the module docstring)."""
        n = xa.shape[0]
        return percent(handled_scores(self.defence, xa, self.y[:n], self.task, adversarial=adversarial,
                                      finding=None if self.finding is None else self.finding[:n],
                                      detector=self.detector, rejected_mask=rej))

    def undefended(self, xa: Tensor, adversarial: bool) -> float:
        """Percent of inputs the plain victim handles."""
        return percent(handled_scores(self.plain, xa, self.y, self.task, adversarial=adversarial,
                                      finding=self.finding))


def load_row(cfg: ExperimentConfig, row: Row, fit: dict[str, Any]) -> RowRun:
    """Stage 1: the fitted defence (from the cache its cell filled), its victim and the row's test images."""
    device = resolve_device(cfg.device)
    fd = get_defence(defence_config(cfg), row.defence, row.dataset, victim=get_victim(cfg, row.dataset))
    victim, defence = fd.victim, fd.defence.eval()
    victim.model.eval()
    data = victim.data
    n = min(cfg.reproduce.n_test, len(data.test))
    x = data.test.images(slice(0, n)).to(device)
    y = data.test.target_tensor(slice(0, n)).to(device)
    z_plain = outputs(victim.model, x)
    task = data.info.task
    run = RowRun(cfg, row, defence, victim, x, y, task, z_plain.argmax(1) if task == "multilabel" else None, z_plain)
    console.print(f"[bold]{row.id}[/]: {victim.meta.get('arch_label', '?')}, defence {row.defence} "
                  f"({'cached' if fit['from_cache'] else 'fitted in {:.0f}s'.format(fit['seconds'])}), n={n}, "
                  f"eps={row.eps:g}")
    if row.original == TRANSFER:
        run.surrogate = get_victim(defence_config(cfg), row.dataset, seed=cfg.seed + 100).model.eval()
    return run


def original_attack(run: RowRun, eps: float) -> Any:
    """The row's original attack at `eps` (a registry attack; "transfer": BIM crafted on the surrogate)."""
    rc, row = run.cfg.reproduce, run.row
    kw: dict[str, Any] = {"seed": run.cfg.seed, "batch_size": 64}
    if run.task == "multilabel":
        kw["findings"] = "top"
    if row.original == TRANSFER:
        if run.surrogate is None:
            raise ConfigError(f"row {row.id}: the transfer attack needs a surrogate model")
        return build_attack("bim", eps, steps=rc.original_steps, grad_model=run.surrogate, **kw)
    steps = None if row.original == "fgsm" else rc.original_steps
    return build_attack(row.original, eps, steps=steps, **kw)


def original_stage(run: RowRun) -> tuple[Tensor, Tensor]:
    """Stage 2: the original attack on the plain victim and on the defended system (a transferred attack is
    crafted once, without the defence)."""
    atk = original_attack(run, run.row.eps)
    x_plain = atk(run.plain, run.x, run.y)
    return x_plain, (x_plain if crafted_without_defence(run.row) else atk(run.defence, run.x, run.y))


def crafted_without_defence(row: Row) -> bool:
    """Whether the row's original attack crafts its images without the defence (on a surrogate or on the
    undefended victim) and only shows them to the defended system."""
    return row.original == TRANSFER or row.original_on_victim


def recipe_options(run: RowRun, steps: int) -> dict[str, Any]:
    """The adaptive recipe's options: budget, seed and, for a limited-knowledge attacker, its surrogates (the
    same defence fitted with other seeds, their exposed classifiers, and the original attack's plain surrogate)."""
    rc, cfg = run.cfg.reproduce, run.cfg
    # batch_size: the recipe attacks 64 images at a time, as the original attacks do (all 1000 of the full
    # profile in one batch would hold a graph of ~135 GB for DenseNet-121 at 224 px)
    opts: dict[str, Any] = {"steps": steps, "restarts": rc.restarts, "seed": cfg.seed, "batch_size": 64}
    if run.row.limited_knowledge:
        # every model the attacker owns: its copies of the defence and the plain surrogate of the original attack
        opts["surrogates"] = [
            get_defence(defence_config(cfg), run.row.defence, run.row.dataset, seed=cfg.seed + 100 + i,
                        victim=run.victim).defence.exposed()["classifier"] for i in range(rc.surrogates)]
        opts["surrogates"] += [run.surrogate] if run.surrogate is not None else []
        if rc.transfer_steps is not None:
            opts["transfer_steps"] = rc.transfer_steps
    return opts


def adaptive_stage(run: RowRun, opts: dict[str, Any]) -> tuple[Recipe, Tensor, float, dict[str, Any] | None]:
    """Stage 3: the adaptive recipe for what the defence exposes, run until it converges on the defended system
    (``medsec.studies.floor.converge``: steps doubled and a restart added each round on the images the system
    still handles, the best image per image kept), as the floor is; (recipe, x_adv, seconds, convergence).

    A limited-knowledge attacker cannot see which images fool the victim, so its recipe runs once with the
    row's budget and selects on its surrogates only (convergence None)."""
    recipe = recipe_for(run.defence, run.row.eps, **opts)
    t0 = time.perf_counter()
    if run.row.limited_knowledge:
        x_adapt = recipe(run.defence, run.x, run.y)
        return recipe, x_adapt, time.perf_counter() - t0, None
    rc = run.cfg.reproduce

    def attack(steps: int, restarts: int, r: int, idx: Tensor) -> Tensor:
        more = {"steps": steps, "restarts": opts["restarts"] + restarts - 1, "seed": opts["seed"] + r}
        return recipe_for(run.defence, run.row.eps, **{**opts, **more})(run.defence, run.x[idx], run.y[idx])

    def scores(xa: Tensor, idx: Tensor) -> np.ndarray:
        return handled_scores(run.defence, xa, run.y[idx], run.task, adversarial=True, detector=run.detector,
                              finding=None if run.finding is None else run.finding[idx])

    rounds = rc.floor_rounds if rc.adaptive_rounds is None else rc.adaptive_rounds
    conv = converge(attack, scores, run.x, steps=opts["steps"], task=run.task, label=recipe.name,
                    tol=rc.floor_tol, max_rounds=rounds)
    return recipe, conv["x_adv"], time.perf_counter() - t0, {k: conv[k] for k in ("value", "converged", "rounds", "tol")}


def floor_stage(run: RowRun, x_orig_plain: Tensor, x_adapt: Tensor) -> dict[str, Any]:
    """Stage 4, the floor: the strongest plain attack on the UNDEFENDED victim, run until it converges and never
    weaker per image than the row's other attacks (``medsec.studies.floor``). Only when it stays above the bound
    the adaptive attack is held to may the row blame the victim instead of the defence."""
    rc = run.cfg.reproduce
    return converged_floor(run.plain, run.x, run.y, run.task, run.row.eps, steps=rc.steps, seed=run.cfg.seed,
                           finding=run.finding, prior=[x_orig_plain, x_adapt], tol=rc.floor_tol,
                           max_rounds=rc.floor_rounds)


def table1_stage(run: RowRun, x_orig: tuple[Tensor, Tensor], x_adapt: Tensor, floor: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Stage 5: Table 1's columns, the floor and the detector's rejection rates (one detector pass per set)."""
    det, (x_orig_plain, x_orig_def) = run.detector, x_orig
    rej = {} if det is None else {"clean": rejected(det, run.x), "original": rejected(det, x_orig_def),
                                  "adaptive": rejected(det, x_adapt)}
    seg = run.task == "segmentation"
    out: dict[str, Any] = {
        "id": run.row.id, "defence": run.row.defence, "dataset": run.row.dataset,
        "task": "segmentation" if seg else "classification", "victim_task": run.task,
        "metric": "dice" if seg else "accuracy",
        "clean": run.system(run.x, adversarial=False, rej=rej.get("clean")),
        "original_attack_no_defence": run.undefended(x_orig_plain, adversarial=True),
        "original_attack_with_defence": run.system(x_orig_def, adversarial=True, rej=rej.get("original")),
        "adaptive_attack_with_defence": run.system(x_adapt, adversarial=True, rej=rej.get("adaptive")),
        "clean_victim": run.undefended(run.x, adversarial=False),
        "strong_attack_no_defence": floor["value"],
        "strong_attack": f"APGD ({'Dice' if seg else 'margin'} loss) on the undefended victim from "
                         f"{run.cfg.reproduce.steps} steps, doubled with a restart more each round until it moves by "
                         f"less than {floor['tol']:g} points; per image never weaker than the row's other attacks",
        "floor": {k: floor[k] for k in ("value", "converged", "rounds", "tol")},
    }
    return out, rej


def _scores(detector: Any, x: Tensor) -> np.ndarray:
    return batched(lambda xb: detector.score(xb).float().reshape(-1), x, 64, cpu=True).numpy()


def table2_stage(run: RowRun, t1: dict[str, Any], x_orig: tuple[Tensor, Tensor], x_adapt: Tensor
                 ) -> dict[str, Any] | None:
    """Stage 6: Table 2's line — MGM: the victim's weighted AUROC and the detector's detection AUROC with its ROC;
    GMM: adversarial risk = 100 - Table 1."""
    row = run.row
    if row.table2 is None:
        return None
    paper = dict(zip(COLUMNS, row.paper_t2 or (), strict=True))
    if row.table2 == "risk":
        return {"metric": "adversarial risk", **{c: round(100 - t1[c], 2) for c in COLUMNS}, "paper": paper}
    x_orig_plain, x_orig_def = x_orig
    s_clean, s_orig, s_adapt = (_scores(run.defence, v) for v in (run.x, x_orig_def, x_adapt))
    yl = run.y.cpu().numpy()

    def victim_auroc(z: Tensor) -> float:
        return round(100 * weighted_auroc(torch.sigmoid(z).cpu(), yl), 2)

    return {"metric": "AUROC", "clean": victim_auroc(run.z_plain),
            "original_attack_no_defence": victim_auroc(outputs(run.plain, x_orig_plain)),
            "original_attack_with_defence": round(100 * detection_auroc(s_clean, s_orig), 2),
            "adaptive_attack_with_defence": round(100 * detection_auroc(s_clean, s_adapt), 2), "paper": paper,
            "roc": {"original attack": roc_points(s_clean, s_orig), "adaptive attack": roc_points(s_clean, s_adapt)}}


def curve_steps(steps: int) -> int:
    """The adaptive attack's budget at the curves' extra eps points: a third of the table's, at least 10."""
    return max(10, steps // 3)


def curves_stage(run: RowRun, t1: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    """Stage 7: metric vs eps for the original and the adaptive attack (with defence); the table's values at the
    row's eps, the first n_curve images and a shorter adaptive attack at the other eps points."""
    rc, row = run.cfg.reproduce, run.row
    curve: dict[str, list[tuple[float, float]]] = {
        "original attack": [(row.eps, t1["original_attack_with_defence"])],
        "adaptive attack": [(row.eps, t1["adaptive_attack_with_defence"])]}
    nc = min(rc.n_curve, run.x.shape[0])
    xc, yc = run.x[:nc], run.y[:nc]
    short = {"steps": curve_steps(rc.steps)}
    if opts.get("surrogates"):  # the transfer attacks need more, smaller steps: three times the curve's budget
        short["transfer_steps"] = 3 * short["steps"]
    for m in rc.curve_multipliers:
        e = min(1.0, row.eps * float(m))
        xo = original_attack(run, e)(run.plain if crafted_without_defence(row) else run.defence, xc, yc)
        curve["original attack"].append((e, run.system(xo, adversarial=True)))
        xa = recipe_for(run.defence, e, **{**opts, **short})(run.defence, xc, yc)
        curve["adaptive attack"].append((e, run.system(xa, adversarial=True)))
    return {"curves": {k: sorted(v) for k, v in curve.items()},
            "curve_note": f"at eps {row.eps:g} the table's values ({run.x.shape[0]} images); the other eps points "
                          f"use the first {nc} images and a {curve_steps(rc.steps)}-step adaptive attack"}


def save_samples(path: Path, x: Tensor, x_adv: Tensor) -> None:
    """The clean and adversarial images a report shows for a row (an .npz beside the row's cell)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, x=x.cpu().numpy(), x_adv=x_adv.cpu().numpy())


def compute_row(cfg: ExperimentConfig, row: Row, defence_result: str, samples: str) -> dict[str, Any]:
    """Cell: run the row's stages on its fitted defence (whose cell wrote `defence_result`) and score them."""
    t0 = time.perf_counter()
    fit = json.loads(Path(defence_result).read_text(encoding="utf-8"))
    run = load_row(cfg, row, fit)
    x_orig = original_stage(run)
    opts = recipe_options(run, cfg.reproduce.steps)
    recipe, x_adapt, adapt_seconds, adapt_conv = adaptive_stage(run, opts)
    floor = floor_stage(run, x_orig[0], x_adapt)
    result, rej = table1_stage(run, x_orig, x_adapt, floor)
    det = run.detector
    result.update({
        "eps": row.eps, "eps_note": row.eps_note, "n_test": run.x.shape[0], "original_attack": row.original_note,
        "adaptive_attack": recipe.describe(), "victim": run.victim.meta.get("arch_label"),
        "defence_from_cache": fit["from_cache"], "defence_fit_seconds": round(fit["seconds"], 1),
        "adaptive_seconds": round(adapt_seconds, 1), "adaptive_convergence": adapt_conv,
        "threshold": float(run.defence.threshold) if det is not None else None,  # type: ignore[arg-type]
        "paper": dict(zip(COLUMNS, row.paper, strict=True))})
    for images, mask in rej.items():
        result[f"rejected_{images}"] = percent(mask.cpu().numpy())
    if det is not None and float(run.defence.threshold) != result["threshold"]:  # type: ignore[arg-type]
        raise AssertionError("the detector threshold changed during the attacks")  # never refitted
    t2 = table2_stage(run, result, x_orig, x_adapt)
    if t2 is not None:
        result["table2"] = t2
    result.update(curves_stage(run, result, opts))
    k = min(cfg.reproduce.n_samples, run.x.shape[0])
    save_samples(Path(samples), run.x[:k], x_adapt[:k])
    result["figures"] = {"samples": f"figures/{row.id}-samples.png"}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["pattern"] = paper_pattern(result)
    result["verdict"] = verdict(result)
    return result


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------

def config_hash(cfg: ExperimentConfig) -> str:
    """Hash of everything that changes a row's numbers (not the row selection, cache folder or device; a row's
    own overrides count once applied, through :func:`row_config`)."""
    return config_digest(cfg, "reproduce.rows", "reproduce.seeds", "reproduce.row_overrides")


def row_config(cfg: ExperimentConfig, row: Row) -> ExperimentConfig:
    """The config a row runs with: `cfg` with the row's ``reproduce.row_overrides`` laid over it."""
    over = cfg.reproduce.row_overrides.get(row.id)
    return cfg if not over else cfg.with_overrides(over, f"reproduce.row_overrides.{row.id}")


def selected_rows(cfg: ExperimentConfig) -> list[Row]:
    """The rows the config asks for (all eight by default); ConfigError for an unknown id."""
    ids = cfg.reproduce.rows
    unknown = [i for i in cfg.reproduce.row_overrides if i not in ROW_IDS]
    if unknown:
        raise ConfigError(f"reproduce.row_overrides: unknown row {', '.join(unknown)}; available: {', '.join(ROW_IDS)}")
    if ids is None:
        return list(ROWS)
    unknown = [i for i in ids if i not in ROW_IDS]
    if unknown:
        raise ConfigError(f"reproduce.rows: unknown row {', '.join(unknown)}; available: {', '.join(ROW_IDS)}")
    return [r for r in ROWS if r.id in ids]


def run_seeds(cfg: ExperimentConfig) -> list[int]:
    """The seeds a run covers: reproduce.seeds (victims, defences and attacks per seed), else the config's seed."""
    return list(dict.fromkeys(cfg.reproduce.seeds)) if cfg.reproduce.seeds else [cfg.seed]


def levy_cells(cfg: ExperimentConfig, out: StudyOutput) -> tuple[list[Cell], dict[str, dict[int, str]], dict[str, str]]:
    """The grid, per seed: one cell per victim and per fitted defence, then one per row; (cells, row id ->
    seed -> cell key, dataset -> the first seed's victim cell key, first row using it)."""
    cells: dict[str, Cell] = {}
    row_keys: dict[str, dict[int, str]] = {}
    first_victims: dict[str, str] = {}
    for seed in run_seeds(cfg):
        cs = cfg if seed == cfg.seed else cfg.model_copy(update={"seed": seed})
        for row in selected_rows(cfg):
            cr = row_config(cs, row)
            h = config_hash(cr)
            v, d = victim_cell(cr, row.dataset, h), defence_cell(cr, row.defence, row.dataset, h)
            cells.setdefault(v.key, v)
            cells.setdefault(d.key, d)
            first_victims.setdefault(row.dataset, v.key)
            key = cell_key("levy", row.id, h)
            row_keys.setdefault(row.id, {})[seed] = key
            cells[key] = Cell(key, compute_row, {"cfg": cr, "row": row, "defence_result": str(out.store.path(d.key)),
                                                 "samples": str(out.store.path(key).with_suffix(".samples.npz"))},
                              after=(v.key, d.key))
    return list(cells.values()), row_keys, first_victims


def row_over_seeds(done: dict[str, dict[str, Any]], keys: dict[int, str]) -> dict[str, Any]:
    """A row's result: its one seed's cell, or the mean, range and verdicts over several seeds."""
    if len(keys) == 1:
        return done[next(iter(keys.values()))]
    return across_seeds({seed: done[k] for seed, k in keys.items()})


def results_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results.json rows (DESIGN.md schema first, then the extras), without the bulky curve data."""
    keys = ("defence", "dataset", "task", "metric", *COLUMNS, "eps", "n_test", "seconds")
    out = []
    for c in cells:
        row = {k: c[k] for k in keys}
        row.update({k: v for k, v in c.items() if k not in keys and k not in ("curves",)})
        if "table2" in row:
            row["table2"] = {k: v for k, v in row["table2"].items() if k != "roc"}
        out.append(row)
    return out


def run_levy(cfg: ExperimentConfig, out_dir: str | Path, executor: Executor | None = None) -> dict[str, Any]:
    """Compute every selected row for every seed (resuming finished cells); writes results.json and
    clean_metrics.json. Returns what the report needs: the rows, the victims' clean rows, the integrity demo,
    provenance; figures and clean rows come from the first seed."""
    out = StudyOutput.at(out_dir)
    cells, row_keys, first_victims = levy_cells(cfg, out)
    done = run_grid(cells, out.store, executor, title="Levy et al. 2022, Tables 1 and 2")
    rows = [row_over_seeds(done, row_keys[r.id]) for r in selected_rows(cfg)]
    out.write_results(results_rows(rows))
    datasets = list(first_victims)
    clean = [done[k] for k in first_victims.values()]
    integrity = integrity_section(cfg, out.root, dataset="chest2" if "chest2" in datasets else datasets[0])
    seeds = run_seeds(cfg)
    prov = provenance(cfg, out, {"experiment": seeds[0], "attacks": seeds[0], "surrogates": seeds[0] + 100}
                      if len(seeds) == 1 else {f"experiment {k}": s for k, s in enumerate(seeds, 1)})
    out.write_results({"rows": clean, "integrity": integrity[0] if integrity else None}, "clean_metrics.json")
    first_keys = {r.id: row_keys[r.id][seeds[0]] for r in selected_rows(cfg)}
    return {"cells": rows, "clean": clean, "integrity": integrity[1] if integrity else None, "provenance": prov,
            "seeds": seeds, "row_overrides": cfg.reproduce.row_overrides, "samples": {rid: str(out.store.path(k).with_suffix(".samples.npz"))
                                        for rid, k in first_keys.items()}}
