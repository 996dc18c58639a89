"""The report of the transferability study: findings, the eps sweep, transfer matrices and their heat maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsec.config import TransferConfig
from medsec.models.networks import describe
from medsec.report.document import Report, markdown_table
from medsec.report.figures import heatmap
from medsec.studies.transfer import mean_ratio


def _transfer_heatmap(path: Path, rows_l: list[str], cols_l: list[str], m: np.ndarray, title: str) -> Path:
    return heatmap(m, rows_l, cols_l, path, title, xlabel="target", ylabel="surrogate",
                   colorbar="100 x metric adv / clean")


def _label(arch: str, init: str, data: str | None = None) -> str:
    return f"{arch}/{init}" + (f"/{data}" if data else "")


def transfer_matrix(rows: list[dict[str, Any]], attack: str, eps: float, s_data: str = "d1"
                    ) -> tuple[list[str], list[str], np.ndarray]:
    """(surrogate labels, target labels, ratio matrix) for one attack and eps (d1 surrogates by default)."""
    rr = [r for r in rows if r["attack"] == attack and abs(r["eps"] - eps) < 1e-12 and not r["whitebox"]
          and r["s_data"] == s_data]
    s_labels = sorted({_label(r["s_arch"], r["s_init"]) for r in rr})
    t_labels = sorted({_label(r["t_arch"], r["t_init"]) for r in rr})
    m = np.full((len(s_labels), len(t_labels)), np.nan)
    for r in rr:
        m[s_labels.index(_label(r["s_arch"], r["s_init"])), t_labels.index(_label(r["t_arch"], r["t_init"]))] = r["ratio"]
    return s_labels, t_labels, m


def data_matrix(rows: list[dict[str, Any]], attack: str, eps: float, t: TransferConfig
                ) -> tuple[list[str], list[str], np.ndarray]:
    """(surrogate arch/init/data labels, target labels, ratio matrix) for same-init pairs of the data variants."""
    rr = [r for r in rows if r["attack"] == attack and abs(r["eps"] - eps) < 1e-12 and not r["whitebox"]
          and r["s_init"] == r["t_init"] and r["s_init"] in t.data_variant_inits]
    order = ["d1", *t.data_variants]
    s_keys = sorted({(r["s_arch"], r["s_init"], r["s_data"]) for r in rr}, key=lambda k: (k[0], k[1], order.index(k[2])))
    t_labels = sorted({_label(r["t_arch"], r["t_init"]) for r in rr})
    m = np.full((len(s_keys), len(t_labels)), np.nan)
    for r in rr:
        m[s_keys.index((r["s_arch"], r["s_init"], r["s_data"])), t_labels.index(_label(r["t_arch"], r["t_init"]))] = r["ratio"]
    return [_label(*k) for k in s_keys], t_labels, m


def transfer_figures(rows: list[dict[str, Any]], t: TransferConfig, folder: Path) -> list[Path]:
    """Heat maps of the transfer matrix (architecture x init) and of the data variants, per attack."""
    paths = []
    for attack in t.attacks:
        s_l, t_l, m = transfer_matrix(rows, attack, t.main_eps)
        if m.size:
            paths.append(_transfer_heatmap(folder / f"transfer_{attack}_arch_init.png", s_l, t_l, m,
                                  f"{attack.upper()} eps={t.main_eps:g} ([0,1] units): surrogate on d1 -> target on d1"))
        s_l, t_l, m = data_matrix(rows, attack, t.main_eps, t)
        if m.size:
            paths.append(_transfer_heatmap(folder / f"transfer_{attack}_data.png", s_l, t_l, m,
                                  f"{attack.upper()} eps={t.main_eps:g}: development data of the surrogate"))
    return paths


def transfer_markdown(result: dict[str, Any], t: TransferConfig, figures: list[Path], out_dir: Path) -> str:
    """The report section: setup, eps sweep, findings with their numbers, figures."""
    rows = result["rows"]
    metric = result["metric"]
    lines = [
        f"Limited-knowledge attacker (Bortsova et al. 2021) on **{result['dataset']}**, metric = 100 x target "
        f"{metric} on adversarial / on clean images (lower = stronger transfer; 100 = no effect). "
        f"eps in [0, 1] pixel units (Bortsova et al.'s [-1, 1] eps 0.02 is 0.01 here); PGD = {t.pgd_steps} steps of "
        f"{t.pgd_alpha:g}, no random start. {result['rows'][0]['n'] if rows else 0} test images attacked.",
        "",
        f"Models: {', '.join(t.archs)} scaled by width x{t.width:g} and depth x{t.depth:g} "
        f"({describe(t.archs[0], t.width, t.depth)} etc.), {t.n_train // 2} training images in d1, "
        f"{t.epochs} epochs of batch {t.batch_size}"
        + (f", synthetic difficulty {t.difficulty:g}" if t.difficulty is not None else "")
        + f"; 'pretrained' = backbone trained first on {t.pretrain_source} (synthetic stand-in for "
        f"ImageNet pretraining, shared by target and surrogate)"
        + (", 'file' = user weights" if t.weights else "") + ". Targets use d1 and seed "
        f"{t.target_seed}; surrogates seed {t.surrogate_seed}.",
        "",
    ]
    models = result.get("models", {})
    if models:
        mrows = [[k, f"{100 * v['test'].get(metric, float('nan')):.1f}" if v.get("test") else "n/a", v.get("n_train")]
                 for k, v in models.items()]
        lines += ["Targets' clean test " + metric + " (%):", "", markdown_table(["target", metric, "train images"], mrows), ""]
    lines += ["### Findings of Bortsova et al. on this data", ""]
    for f in result["findings"]:
        nums = ", ".join(f"{k} {v:.1f}" for k, v in f.items() if isinstance(v, float))
        if "per_variant" in f:
            nums += ", " + ", ".join(f"{k} {v:.1f}" for k, v in f["per_variant"].items())
        lines.append(f"- **{f['finding']}** ({f['attack'].upper()}, eps {t.main_eps:g}): "
                     f"{'reproduces' if f['reproduced'] else 'does not reproduce'} — {nums}.")
    lines += ["", "### Eps sweep (mean ratio over surrogate -> target pairs)", ""]
    sweep = []
    for attack in t.attacks:
        for eps in t.eps:
            rr = [r for r in rows if r["attack"] == attack and abs(r["eps"] - eps) < 1e-12]
            bb = [r for r in rr if not r["whitebox"]]
            wb = [r for r in rr if r["whitebox"]]
            sweep.append([attack.upper(), f"{eps:g}", mean_ratio([r for r in bb if r["s_data"] == "d1" and r["s_arch"] == r["t_arch"] and r["s_init"] == r["t_init"]]),
                          mean_ratio([r for r in bb if r["s_data"] == "d1" and r["s_arch"] != r["t_arch"]]),
                          mean_ratio([r for r in bb if r["s_data"] != "d1"]), mean_ratio(bb, "ratio_shuffled"), mean_ratio(wb)])
    lines.append(markdown_table(["attack", "eps", "same arch+init, d1", "different arch, d1", "different data",
                                 "shuffled control", "white-box"], sweep))
    for attack in t.attacks:
        s_l, t_l, m = transfer_matrix(rows, attack, t.main_eps)
        if m.size:
            lines += ["", f"### {attack.upper()} transfer matrix, eps {t.main_eps:g} (rows surrogate, columns target)", "",
                      markdown_table(["surrogate \\ target", *t_l], [[s, *[float(v) for v in m[i]]] for i, s in enumerate(s_l)])]
    if figures:
        lines += [""] + [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in figures]
    return "\n".join(lines)


def write_transfer_report(result: dict[str, Any], t: TransferConfig, profile: str, out: str | Path
                          ) -> list[Path]:
    """Draw the heat maps into out/figures and write report.md and report.html; the figures' paths."""
    out_dir = Path(out)
    figures = transfer_figures(result["rows"], t, out_dir / "figures")
    report = Report(f"medsec transferability study ({profile} profile)")
    report.add("Transferability (Bortsova et al.)", transfer_markdown(result, t, figures, out_dir))
    report.write(out_dir)
    return figures
