"""Report figures (matplotlib, Agg backend, PNG): sample strips, metric-vs-eps curves, detection ROC curves.

Every function writes one PNG atomically and returns its path, so a report can link it relatively.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsec.errors import MedsecError  # noqa: E402
from medsec.paths import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> Path:
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return p


def _img(t: torch.Tensor) -> np.ndarray:
    a = t.detach().float().cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a[:3], (1, 2, 0))


def amplified_perturbation(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """The perturbation mapped to [0, 1] for display: 0.5 + (x_adv - x) / (2 eps) (grey = unchanged)."""
    if eps <= 0:
        return torch.full_like(x, 0.5)
    return (0.5 + (x_adv - x) / (2 * eps)).clamp(0, 1)


def sample_strip(x: torch.Tensor, x_adv: torch.Tensor, eps: float, path: str | Path, title: str = "",
                 captions: Sequence[str] | None = None) -> Path:
    """One row per image: clean, adversarial, and the perturbation amplified to the full grey range."""
    if x.shape != x_adv.shape or x.ndim != 4 or x.shape[0] == 0:
        raise MedsecError(f"sample_strip needs two equal (N, C, H, W) batches, got {tuple(x.shape)} and "
                          f"{tuple(x_adv.shape)}")
    n = x.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n), squeeze=False)
    amp = amplified_perturbation(x, x_adv, eps)
    heads = ("clean", "adversarial", f"perturbation (x 1/(2 eps), eps={eps:g})")
    for i in range(n):
        for j, (t, h) in enumerate(zip((x[i], x_adv[i], amp[i]), heads, strict=True)):
            ax = axes[i][j]
            ax.imshow(_img(t), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(h, fontsize=8)
            if j == 0 and captions is not None and i < len(captions):
                ax.set_ylabel(captions[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def metric_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, ylabel: str,
                  title: str = "", eps_mark: float | None = None) -> Path:
    """Lines of a metric (percent) against eps, one per attack (e.g. original vs adaptive)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for name, pts in curves.items():
        pts = sorted(pts)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if eps_mark is not None:
        ax.axvline(eps_mark, color="grey", linestyle=":", linewidth=1, label=f"row eps {eps_mark:g}")
    ax.set_xlabel("eps (L_inf, [0,1] pixels)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def roc_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
               title: str = "") -> Path:
    """Detection ROC curves (FPR, TPR), one per attack, with the chance diagonal."""
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    for name, (fpr, tpr) in curves.items():
        ax.plot(list(fpr), list(tpr), label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-positive rate (clean rejected)")
    ax.set_ylabel("true-positive rate (adversarial rejected)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def heatmap(m: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], path: str | Path, title: str,
            xlabel: str, ylabel: str, colorbar: str) -> Path:
    """A matrix of percentages as a heat map with its values written in the cells (NaN cells left blank)."""
    import textwrap

    fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 0.9 * len(col_labels)), max(3.5, 1.8 + 0.4 * len(row_labels))))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=max(100.0, float(np.nanmax(m)) if m.size else 100.0))
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j] == m[i, j]:
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 60 else "black")
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=8)
    fig.colorbar(im, ax=ax, label=colorbar)
    fig.tight_layout()
    return _save(fig, path)


def line_plot(lines: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, xlabel: str, ylabel: str,
              ylim: tuple[float, float] = (0, 100)) -> Path:
    """One line per label through its (x, y) points (sorted by x)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label, pts in lines.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
