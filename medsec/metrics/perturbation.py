"""Perturbation size: L_inf and L2 in [0, 1] pixel units, PSNR and SSIM per image."""

from __future__ import annotations

import math

import torch

from medsec.errors import MedsecError


def _ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win: int = 7) -> torch.Tensor:
    """Mean SSIM per image with a uniform window (Wang et al. constants), channels averaged."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    win = min(win, x.shape[-1], x.shape[-2])
    pool = torch.nn.functional.avg_pool2d
    mx, my = pool(x, win, 1), pool(y, win, 1)
    sxx = pool(x * x, win, 1) - mx * mx
    syy = pool(y * y, win, 1) - my * my
    sxy = pool(x * y, win, 1) - mx * my
    n = win * win
    cov_norm = n / (n - 1)  # sample covariance, as scikit-image
    sxx, syy, sxy = sxx * cov_norm, syy * cov_norm, sxy * cov_norm
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image size of x_adv - x: L_inf and L2 (in [0,1] pixel units), PSNR (dB) and SSIM."""
    if x.shape != x_adv.shape:
        raise MedsecError(f"perturbation_norms: shapes differ, {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    x, x_adv = x.detach().float(), x_adv.detach().float()
    d = (x_adv - x).flatten(1)
    mse = d.pow(2).mean(1)
    psnr = torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-20)), torch.full_like(mse, math.inf))
    return {"linf": d.abs().amax(1), "l2": d.norm(dim=1), "psnr": psnr,
            "ssim": _ssim_per_image(x.double(), x_adv.double()).float()}  # float64: variances cancel


def summarize_perturbation(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    """Mean of each perturbation measure over the batch (PSNR averaged over perturbed images only)."""
    n = perturbation_norms(x, x_adv)
    finite = n["psnr"][torch.isfinite(n["psnr"])]
    return {"linf": float(n["linf"].mean()), "l2": float(n["l2"].mean()),
            "psnr": float(finite.mean()) if len(finite) else math.inf, "ssim": float(n["ssim"].mean())}
