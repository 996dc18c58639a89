"""Shared building blocks for the procedural phantoms: coordinate grids, smooth noise, soft shapes.

All phantoms draw in normalised coordinates (x, y in [-1, 1], y pointing down as in an image), so the
same parameters give the same picture at 64 px and at 224 px. Everything is float32 and vectorised over
a batch of images; generators render in chunks of CHUNK images to bound memory at large sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

CHUNK = 128  # images rendered at once (fixed, so results never depend on it)

F32 = np.float32


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates in [-1, 1], shapes (1, size, 1) and (1, 1, size)."""
    c = ((np.arange(size, dtype=F32) + 0.5) / size * 2.0 - 1.0).astype(F32)
    return c.reshape(1, size, 1), c.reshape(1, 1, size)


def pixel(size: int) -> float:
    """Width of one pixel in normalised units; soft edges never get thinner than this."""
    return 2.0 / size


def col(a: np.ndarray) -> np.ndarray:
    """Per-image parameters (m,) as float32 (m, 1, 1), ready to broadcast against images."""
    return np.asarray(a, dtype=F32).reshape(-1, 1, 1)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, float32, safe for large |z|."""
    return (0.5 * (1.0 + np.tanh(0.5 * np.clip(z, -30, 30)))).astype(F32)


def soft_step(dist: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """~1 where `dist` > 0, ~0 where it is < 0, with a transition `width` wide (a soft edge)."""
    return sigmoid(dist / (np.asarray(width, dtype=F32) * 0.25))


def gauss(d2: np.ndarray) -> np.ndarray:
    """exp(-d2/2) for a squared, already-scaled distance."""
    return np.exp(-0.5 * d2).astype(F32)


def _freq2(size: int, full: bool = False) -> np.ndarray:
    fy = np.fft.fftfreq(size).astype(F32)
    fx = (np.fft.fftfreq(size) if full else np.fft.rfftfreq(size)).astype(F32)
    return (fy[:, None] ** 2 + fx[None, :] ** 2).astype(F32)


def _gauss_filter(size: int, sigma_px: float) -> tuple[np.ndarray, float]:
    """Half-spectrum Gaussian transfer function and the std it gives unit white noise."""
    h = np.exp(-2.0 * np.pi**2 * sigma_px**2 * _freq2(size)).astype(F32)
    h_full = np.exp(-2.0 * np.pi**2 * sigma_px**2 * _freq2(size, full=True))
    return h, float(np.sqrt(np.mean(h_full**2)))


def smooth_noise(rng: np.random.Generator, m: int, size: int, scale: float) -> np.ndarray:
    """Gaussian random fields (m, size, size) with zero mean and unit variance (in expectation).

    `scale` is the correlation length as a fraction of the image width, so the texture looks the
    same at every resolution (white noise filtered in the Fourier domain, in float32).
    """
    white = rng.standard_normal((m, size, size), dtype=F32)
    sigma_px = max(scale * size, 0.3)
    h, std = _gauss_filter(size, sigma_px)
    spec = sfft.rfft2(white, workers=1)
    spec *= h / std
    return sfft.irfft2(spec, s=(size, size), workers=1).astype(F32, copy=False)


@lru_cache(maxsize=32)
def _powerlaw_filter(size: int, beta: float, lowest: float) -> np.ndarray:
    """Half-spectrum amplitude filter |f|^(-beta/2), flat below `lowest` cycles per image, scaled so that
    filtered unit white noise has unit variance (computed once per size and exponent)."""
    f = np.sqrt(_freq2(size)) * size  # cycles per image
    h = np.maximum(f, lowest) ** (-beta / 2.0)
    h[0, 0] = 0.0  # zero mean
    # variance of the filtered field = mean over the full spectrum of h^2 (rfft halves counted twice)
    full = np.sqrt(_freq2(size, full=True)) * size
    hf = np.maximum(full, lowest) ** (-beta / 2.0)
    hf[0, 0] = 0.0
    h = h / np.sqrt(np.mean(hf**2))
    h.setflags(write=False)
    return h.astype(F32)


def powerlaw_noise(rng: np.random.Generator, m: int, size: int, beta: float = 2.0, lowest: float = 2.0) -> np.ndarray:
    """Zero-mean, unit-variance random fields (m, size, size) with power spectrum 1/f^beta.

    Anatomical background ("anatomical noise") of radiographs, mammograms and CT has such a power-law
    spectrum (beta about 2-3): texture at every scale, most of its variance at low frequencies. `lowest`
    (cycles per image) flattens the spectrum below it, so a single huge gradient does not dominate. The
    frequency axis is in cycles per image, so the texture looks the same at 64 px and at 224 px (finer
    detail is added at higher resolution). The filter is cached per (size, beta, lowest).
    """
    white = rng.standard_normal((m, size, size), dtype=F32)
    spec = sfft.rfft2(white, workers=1)
    spec *= _powerlaw_filter(size, float(beta), float(lowest))
    return sfft.irfft2(spec, s=(size, size), workers=1).astype(F32, copy=False)


def blur(img: np.ndarray, scale: float) -> np.ndarray:
    """Gaussian blur of (m, H, W) images with std `scale` (fraction of the width)."""
    size = img.shape[-1]
    sigma_px = scale * size
    if sigma_px < 0.3:
        return img.astype(F32)
    h, _ = _gauss_filter(size, sigma_px)
    return sfft.irfft2(sfft.rfft2(img.astype(F32), workers=1) * h, s=img.shape[-2:], workers=1).astype(F32)


def polar(y: np.ndarray, x: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radius and angle of every pixel around per-image centres (cy, cx given as (m, 1, 1))."""
    dy = y - cy
    dx = x - cx
    return np.sqrt(dx * dx + dy * dy).astype(F32), np.arctan2(dy, dx).astype(F32)


def harmonic_radius(theta: np.ndarray, radius: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Boundary radius R(theta) = radius * (1 + sum_k amps[:, k] cos((k+2) theta + phases[:, k])).

    amps and phases are (m, K): harmonics 2..K+1 give ovals, lobulation and irregular borders.
    """
    r = np.ones_like(theta)
    for k in range(amps.shape[1]):
        r = r + col(amps[:, k]) * np.cos((k + 2) * theta + col(phases[:, k]))
    return (col(radius) * r).astype(F32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 (rounded, clipped)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def patient_ids(rng: np.random.Generator, n: int, prefix: str) -> np.ndarray:
    """Synthetic patient ids like 'SYN-CXR-3F9A61C2' (one per image, drawn from the split's rng)."""
    codes = rng.integers(0, 2**32, size=n, dtype=np.uint64)
    return np.array([f"SYN-{prefix}-{int(c):08X}" for c in codes])


def render_chunks(n: int, render: Callable[[slice], np.ndarray], out: np.ndarray) -> np.ndarray:
    """Fill `out[i:j]` with `render(slice(i, j))` for consecutive chunks of CHUNK images."""
    for i in range(0, n, CHUNK):
        sl = slice(i, min(n, i + CHUNK))
        out[sl] = render(sl)
    return out


def contrast(difficulty: float, lo: float = 0.3) -> float:
    """Finding strength for a difficulty: 1 at difficulty 0 falling linearly to `lo` at difficulty 1."""
    return float(1.0 - (1.0 - lo) * np.clip(difficulty, 0.0, 1.0))
