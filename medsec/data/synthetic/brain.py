"""Brain FLAIR phantom `brain-mri`: axial slices with a hyperintense lower-grade-glioma-like lesion and its mask.

Each slice shows the scalp (bright fat), the skull (signal void), a thin dark CSF rim, the brain with a
brighter cortical ribbon over white matter, convoluted dark sulci, the interhemispheric fissure and, on
supraventricular/ventricular levels, the lateral ventricles (dark, CSF is suppressed in FLAIR) with a
faint periventricular rim; a smooth bias field and Rician noise. Slice level, head size and rotation vary.

85 % of the slices carry one irregular hyperintense lesion in one hemisphere (as the TCGA-LGG slices
that show tumour); the target is its mask (int64 (N, H, W), 1 = lesion). The mask is where the lesion
field exceeds its threshold; the image shows the same lesion with a soft, slightly displaced border
(the ambiguity between annotators and signal), so a perfect Dice is not reachable.

Difficulty lowers the lesion contrast, shrinks lesions, widens the fuzzy border and raises the noise.
"""

from __future__ import annotations

import numpy as np

from medsec.data.base import DatasetInfo, Split
from medsec.data.synthetic import SyntheticSpec, register
from medsec.data.synthetic._common import (
    CHUNK,
    F32,
    col,
    contrast,
    gauss,
    grid,
    harmonic_radius,
    patient_ids,
    pixel,
    polar,
    powerlaw_noise,
    smooth_noise,
    soft_step,
    to_uint8,
)

P_LESION = 0.85
# How the lesion and the background are rendered (see docs/synthetic.md, "Behaviour under attack").
LESION_GAIN = 0.25  # lesion-to-tissue contrast (the lesion's whole departure from normal tissue) relative to the drawn level
TEXTURE_SD = 0.0  # tissue signal varies as (1 + TEXTURE_SD * 1/f^TEXTURE_BETA texture)
TEXTURE_BETA = 2.0
NOISE_GAIN = 0.3  # Rician noise relative to the drawn level


def _params(rng: np.random.Generator, n: int, d: float) -> dict[str, np.ndarray]:
    u = rng.random
    c = contrast(d, 0.3)
    side = np.where(u(n) < 0.5, -1.0, 1.0)
    return {
        "has": (u(n) < P_LESION).astype(F32),
        "ax": 0.66 + 0.1 * u(n), "ay": 0.8 + 0.1 * u(n), "rot": rng.normal(0, 0.08, n),
        "cy": rng.normal(0, 0.03, n), "cx": rng.normal(0, 0.03, n),
        "vent": np.clip(rng.normal(0.7, 0.35, n), 0, 1.2),  # 0 = slice above/below the ventricles
        "gm": 0.44 + 0.04 * u(n), "wm": 0.34 + 0.04 * u(n),
        "l_cx": side * (0.2 + 0.3 * u(n)), "l_cy": -0.45 + 0.9 * u(n),
        "l_r": (0.1 + 0.2 * u(n)) * (0.7 + 0.3 * c),
        "l_harm": 0.05 + 0.15 * u((n, 4)), "l_phase": 2 * np.pi * u((n, 4)),
        "l_amp": (0.32 + 0.12 * u(n)) * c,
        "noise": (0.02 + 0.015 * u(n)) * (0.6 + 1.4 * d) * NOISE_GAIN,
        "ambig": np.full(n, 0.04 + 0.12 * d), "soft": np.full(n, 0.03 + 0.08 * d),
    }


def _render(p: dict[str, np.ndarray], sl: slice, size: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    P = {k: v[sl] for k, v in p.items()}
    m = len(P["ax"])
    px = pixel(size)
    e = max(0.015, px)
    y0, x0 = grid(size)
    rot = col(P["rot"])
    yc, xc = y0 - col(P["cy"]), x0 - col(P["cx"])
    X = xc * np.cos(rot) + yc * np.sin(rot)
    Y = -xc * np.sin(rot) + yc * np.cos(rot)
    ax, ay = col(P["ax"]), col(P["ay"])
    rho = np.sqrt((X / ax) ** 2 + (Y / ay) ** 2)  # 1 on the outer scalp surface
    head = soft_step(1 - rho, e)
    skull_in = soft_step(0.92 - rho, e)
    gyri = 0.012 * smooth_noise(rng, m, size, 0.04)
    brain = soft_step(0.87 + gyri - rho, e)
    img = 0.5 * head * (1 - skull_in) * soft_step(rho - 0.96, e) + 0.06 * skull_in
    depth = 0.87 - rho  # distance from the brain surface, in head units
    cortex = soft_step(0.07 - depth, 0.04)
    tissue = col(P["wm"]) + (col(P["gm"]) - col(P["wm"])) * cortex
    sulci = gauss((smooth_noise(rng, m, size, 0.018) / 0.22) ** 2) * soft_step(0.1 - depth, 0.04)
    fissure = gauss((X / max(0.012, 0.6 * px)) ** 2) * soft_step(np.abs(Y) - 0.2 * col(P["vent"]), 0.1)
    vent = col(P["vent"])
    vx, vy = np.abs(X) - 0.1, Y + 0.05
    va = 0.35
    vent_d = ((vx * np.cos(va) - vy * np.sin(va)) / (0.055 * vent + 1e-3)) ** 2 + (
        (vx * np.sin(va) + vy * np.cos(va)) / (0.24 * vent + 1e-3)) ** 2
    vents = soft_step(1 - np.sqrt(vent_d), 0.3) * soft_step(vent - 0.15, 0.1)
    rim = gauss(((np.sqrt(vent_d) - 1.15) / 0.25) ** 2) * soft_step(vent - 0.15, 0.1)
    tissue = tissue * (1 - 0.85 * np.clip(sulci + fissure, 0, 1)) * (1 - 0.85 * vents) + 0.05 * rim
    tissue = tissue + 0.015 * smooth_noise(rng, m, size, 0.03)
    # lesion: field > 0 inside an irregular boundary; the image border is displaced and softened
    r, th = polar(Y, X, col(P["l_cy"]), col(P["l_cx"]))
    bound = harmonic_radius(th, P["l_r"], P["l_harm"], P["l_phase"])
    field = 1 - r / bound + 0.12 * smooth_noise(rng, m, size, 0.05)
    has = col(P["has"])
    mask = (field > 0) & (brain > 0.5) & (has > 0)
    img_field = field + col(P["ambig"]) * smooth_noise(rng, m, size, 0.04)
    lesion = has * soft_step(img_field, col(P["soft"])) * brain
    lesion = lesion * (1 + 0.15 * smooth_noise(rng, m, size, 0.03))
    tissue = tissue + LESION_GAIN * lesion * (col(P["gm"]) + col(P["l_amp"]) - 0.6 * tissue)
    if TEXTURE_SD > 0:
        tissue = tissue * (1 + TEXTURE_SD * powerlaw_noise(rng, m, size, TEXTURE_BETA))
    img = img + brain * tissue
    bias = 1 + 0.1 * smooth_noise(rng, m, size, 0.3)
    img = img * bias
    sig = col(P["noise"])
    n1 = rng.standard_normal((m, size, size), dtype=F32)
    n2 = rng.standard_normal((m, size, size), dtype=F32)
    img = np.sqrt((img + sig * n1) ** 2 + (sig * n2) ** 2)  # Rician magnitude noise
    return np.clip(img, 0, 1).astype(F32), mask


def generate_brain(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """FLAIR-like slices (n, 1, size, size) with lesion masks (n, size, size) int64."""
    pids = patient_ids(rng, n, "MR")
    p = _params(rng, n, difficulty)
    pix = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.int64)
    for i in range(0, n, CHUNK):
        sl = slice(i, min(n, i + CHUNK))
        img, mask = _render(p, sl, size, rng)
        pix[sl] = to_uint8(img)
        masks[sl] = mask
    return Split(pixels=pix[:, None], targets=masks, patient_ids=pids,
                 extra={"has_lesion": np.asarray(masks.reshape(n, -1).any(axis=1), dtype=np.int64)})


register(SyntheticSpec(
    info=DatasetInfo(name="brain-mri", task="segmentation", class_names=("background", "lesion"), channels=1,
                     modality="MR", synthetic=True,
                     description="procedural axial FLAIR brain phantom (synthetic) with lesion masks"),
    generate=generate_brain, default_difficulty=0.7))
