"""Dermoscopy phantom `isic`: RGB skin lesions with a segmentation mask and a benign/malignant label.

Skin of varying tone with low-frequency colour variation, skin-line texture and sometimes a circular
dermoscope vignette, hairs and a few small freckles outside the lesion (not in the mask, as in ISIC).
The lesion is a pigmented patch:

- benign (label 0): nearly symmetric, round or oval, regular border, one or two close shades of brown
  with a slightly darker centre and a faint regular network;
- malignant (label 1, 30 %): asymmetric and off-centre lobes, irregular border, larger on average,
  colour variegation (dark brown, black, blue-grey veil, red and white regression areas).

The target is the lesion mask (int64 (N, H, W)); extra["label"] holds benign/malignant (int64 (N,)).
As in brain-mri, the visible border is a displaced, softened version of the annotated one.
Difficulty lowers lesion-to-skin contrast, widens the fuzzy border, shrinks lesions and weakens the
malignant features.
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

P_MALIGNANT = 0.3
N_HAIRS = 6
N_FRECKLES = 3
N_HARM = 5
# How the lesion and the skin are rendered (see docs/synthetic.md, "Behaviour under attack").
LESION_GAIN = 0.7  # pigment opacity of the lesion relative to the drawn level
TEXTURE_SD = 0.03  # skin brightness varies as (1 + TEXTURE_SD * 1/f^TEXTURE_BETA texture)
TEXTURE_BETA = 2.0
NOISE_GAIN = 0.5  # sensor noise relative to the drawn level
PALETTE = np.array([  # dark brown, black, blue-grey, red, white (regression)
    [0.32, 0.18, 0.10], [0.10, 0.08, 0.08], [0.42, 0.46, 0.58], [0.72, 0.32, 0.30], [0.85, 0.78, 0.75],
], dtype=F32)


def _params(rng: np.random.Generator, n: int, mal: np.ndarray, d: float) -> dict[str, np.ndarray]:
    u = rng.random
    c = contrast(d, 0.3)
    tone = u(n)
    skin = np.stack([0.92 - 0.35 * tone, 0.74 - 0.35 * tone, 0.66 - 0.33 * tone], axis=1)
    skin = skin * (0.95 + 0.1 * u((n, 1))) + rng.normal(0, 0.02, (n, 3))
    brown = np.stack([0.52 - 0.2 * u(n), 0.30 - 0.13 * u(n), 0.17 - 0.08 * u(n)], axis=1)
    m = mal.astype(F32)
    irregular = (0.05 + 0.09 * u((n, N_HARM))) * c
    regular = 0.03 * u((n, N_HARM))
    return {
        "mal": m, "skin": skin, "brown": brown,
        "cy": rng.normal(0, 0.08, n), "cx": rng.normal(0, 0.08, n),
        "r": np.where(m > 0, 0.36 + 0.3 * u(n), 0.28 + 0.3 * u(n)) * (0.8 + 0.2 * c),
        "harm": np.where(m[:, None] > 0, irregular, regular), "phase": 2 * np.pi * u((n, N_HARM)),
        "border_noise": np.where(m > 0, 0.12 * c, 0.03) + 0.02 * u(n),
        "lobe_dx": np.where(m > 0, rng.normal(0, 0.15, n) * c, 0.0),
        "lobe_dy": np.where(m > 0, rng.normal(0, 0.15, n) * c, 0.0),
        "lobe_r": 0.5 + 0.3 * u(n),
        "var_w": np.where(m[:, None] > 0, (0.4 + 0.6 * u((n, len(PALETTE)))) * c, 0.0) * (u((n, len(PALETTE))) < 0.7),
        "strength": ((0.55 + 0.35 * u(n)) * c + 0.1) * LESION_GAIN,
        "ambig": np.full(n, 0.05 + 0.25 * d), "soft": np.full(n, 0.05 + 0.15 * d),
        "vignette": (u(n) < 0.4).astype(F32), "vig_r": 0.95 + 0.2 * u(n),
        "hairs": rng.integers(0, N_HAIRS + 1, n) * (u(n) < 0.35),
        "h_y": 2 * u((n, N_HAIRS)) - 1, "h_x": 2 * u((n, N_HAIRS)) - 1, "h_ang": np.pi * u((n, N_HAIRS)),
        "h_curv": rng.normal(0, 0.6, (n, N_HAIRS)),
        "freckles": rng.integers(0, N_FRECKLES + 1, n) * (u(n) < 0.4),
        "f_y": 2 * u((n, N_FRECKLES)) - 1, "f_x": 2 * u((n, N_FRECKLES)) - 1,
        "f_r": 0.03 + 0.04 * u((n, N_FRECKLES)),
        "noise": np.full(n, (0.015 + 0.03 * d) * NOISE_GAIN), "light": rng.normal(0, 0.05, (n, 2)),
    }


def _render(p: dict[str, np.ndarray], sl: slice, size: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    P = {k: v[sl] for k, v in p.items()}
    m = len(P["cy"])
    px = pixel(size)
    y, x = grid(size)
    # skin
    skin = P["skin"].astype(F32)[:, :, None, None]  # (m, 3, 1, 1)
    tint = 0.03 * smooth_noise(rng, m, size, 0.2)[:, None]
    lines = 0.02 * smooth_noise(rng, m, size, 0.006)[:, None]
    light = 1 + col(P["light"][:, 0]) * x + col(P["light"][:, 1]) * y
    img = (skin + tint + lines) * light[:, None]
    if TEXTURE_SD > 0:
        img = img * (1 + TEXTURE_SD * powerlaw_noise(rng, m, size, TEXTURE_BETA))[:, None]
    # lesion field: main body plus an off-centre lobe (asymmetry), irregular noisy border
    cy, cx = col(P["cy"]), col(P["cx"])
    r, th = polar(y, x, cy, cx)
    bound = harmonic_radius(th, P["r"], P["harm"], P["phase"])
    field = 1 - r / bound
    lr, _ = polar(y, x, cy + col(P["lobe_dy"]), cx + col(P["lobe_dx"]))
    lobe = 1 - lr / (col(P["r"] * P["lobe_r"]))
    has_lobe = col((np.abs(P["lobe_dx"]) + np.abs(P["lobe_dy"]) > 0).astype(F32))
    field = np.where(has_lobe > 0, np.maximum(field, lobe), field)
    field = field + col(P["border_noise"]) * smooth_noise(rng, m, size, 0.04)
    mask = field > 0
    vis = soft_step(field + col(P["ambig"]) * smooth_noise(rng, m, size, 0.05), col(P["soft"]))
    # pigment: brown with a darker centre, a faint network; variegation for malignant lesions
    centre = np.clip(field, 0, 1)
    brown = P["brown"].astype(F32)[:, :, None, None] * (1 - 0.25 * centre[:, None])
    net = 0.06 * (gauss((smooth_noise(rng, m, size, 0.012) / 0.4) ** 2))[:, None]
    colour = brown - net
    idx = np.flatnonzero(P["var_w"].sum(axis=1) > 0)  # colour variegation: malignant lesions only
    if idx.size:
        sub = colour[idx]
        for k in range(len(PALETTE)):
            w = col(P["var_w"][idx, k]) * soft_step(smooth_noise(rng, idx.size, size, 0.06) - 0.5, 0.6)
            sub = sub * (1 - w[:, None]) + PALETTE[k][None, :, None, None] * w[:, None]
        colour[idx] = sub
    alpha = (col(P["strength"]) * vis)[:, None]
    img = img * (1 - alpha) + colour * alpha
    # freckles outside the annotated lesion
    for k in range(N_FRECKLES):
        on = col((P["freckles"] > k).astype(F32))
        fr, _ = polar(y, x, col(P["f_y"][:, k]), col(P["f_x"][:, k]))
        spot = on * 0.5 * soft_step(col(P["f_r"][:, k]) - fr, max(0.03, px)) * (1 - vis)
        img = img * (1 - spot[:, None]) + P["brown"].astype(F32)[:, :, None, None] * spot[:, None]
    # hairs: thin dark curved strands (only on the images that have hairs)
    idx = np.flatnonzero(P["hairs"] > 0)
    if idx.size:
        hair = np.zeros((idx.size, size, size), F32)
        for k in range(N_HAIRS):
            on = col((P["hairs"][idx] > k).astype(F32))
            a = col(P["h_ang"][idx, k])
            t = (x - col(P["h_x"][idx, k])) * np.cos(a) + (y - col(P["h_y"][idx, k])) * np.sin(a)
            q = -(x - col(P["h_x"][idx, k])) * np.sin(a) + (y - col(P["h_y"][idx, k])) * np.cos(a)
            dist = np.abs(q - col(P["h_curv"][idx, k]) * t**2 * 0.3)
            strand = gauss((dist / max(0.008, 0.5 * px)) ** 2) * soft_step(0.9 - np.abs(t), 0.1)
            hair = np.maximum(hair, on * strand)
        dark = np.array([0.15, 0.1, 0.08], F32)[None, :, None, None]
        img[idx] = img[idx] * (1 - 0.8 * hair[:, None]) + 0.8 * hair[:, None] * dark
    # dermoscope vignette and sensor noise
    rr = np.sqrt(x**2 + y**2)
    vig = 1 - col(P["vignette"]) * soft_step(rr - col(P["vig_r"]), 0.08)
    img = img * vig[:, None]
    img = img + col(P["noise"])[:, None] * rng.standard_normal(img.shape, dtype=F32)
    return np.clip(img, 0, 1).astype(F32), mask


def generate_isic(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """Dermoscopy-like RGB images (n, 3, size, size), lesion masks, and extra['label'] benign/malignant."""
    mal = (rng.random(n) < P_MALIGNANT).astype(np.int64)
    pids = patient_ids(rng, n, "DERM")
    p = _params(rng, n, mal, difficulty)
    pix = np.zeros((n, 3, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.int64)
    for i in range(0, n, CHUNK):
        sl = slice(i, min(n, i + CHUNK))
        img, mask = _render(p, sl, size, rng)
        pix[sl] = to_uint8(img)
        masks[sl] = mask
    return Split(pixels=pix, targets=masks, patient_ids=pids, extra={"label": mal})


register(SyntheticSpec(
    info=DatasetInfo(name="isic", task="segmentation", class_names=("background", "lesion"), channels=3,
                     modality="XC", synthetic=True,
                     description="procedural dermoscopy phantom (synthetic): lesion masks, benign/malignant label"),
    generate=generate_isic, default_difficulty=0.7))
