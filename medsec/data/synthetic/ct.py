"""CT nodule-crop phantom `ct-slices`: benign vs malignant lung nodules (LUNA16-like crops, lung window).

Each image is an axial CT crop centred (with jitter) on a nodule, shown in a lung window (W 1500 / L -600
HU mapped to 0..255): aerated parenchyma with fine texture, vessels cut across or along the plane
(bright dots and tubes) and branching vessel-like ridges, sometimes a chest wall with fat, muscle and a
rib, sometimes a fissure, and correlated CT noise.

- benign (label 0): small-to-medium, round or oval, smooth sharp margin; 30 % calcified (dense core);
- malignant (label 1): larger on average, lobulated, spiculated (thin radiating strands), a
  ground-glass halo in 30 %; sizes overlap between the classes.

Difficulty lowers spiculation and lobulation of malignant nodules, adds irregularity to benign ones,
makes the size distributions overlap more and raises the noise.
"""

from __future__ import annotations

import numpy as np

from medsec.data.base import DatasetInfo, Split
from medsec.data.synthetic import SyntheticSpec, register
from medsec.data.synthetic._common import (
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
    render_chunks,
    smooth_noise,
    soft_step,
    to_uint8,
)

N_VESSELS = 10
N_SPIKES = 12
N_HARM = 5
# How the nodules and the background are rendered (see docs/synthetic.md, "Behaviour under attack").
FEATURE_GAIN = 1.0  # spiculation length and lobulation of malignant nodules relative to the drawn pattern
SIZE_OVERLAP = 0.0  # extra overlap of the benign and malignant size distributions (0 = as drawn, 1 = same)
TEXTURE_SD = 0.0  # parenchymal background: 1/f^TEXTURE_BETA texture, std in [0, 1] units
TEXTURE_BETA = 2.0
NOISE_GAIN = 1.0  # CT noise relative to the drawn level


def _segment_dist(y: np.ndarray, x: np.ndarray, cy: np.ndarray, cx: np.ndarray, ang: np.ndarray,
                  half: np.ndarray) -> np.ndarray:
    """Distance of every pixel to a line segment of half-length `half` through (cy, cx) at angle `ang`."""
    dy, dx = y - cy, x - cx
    t = dx * np.cos(ang) + dy * np.sin(ang)
    q = -dx * np.sin(ang) + dy * np.cos(ang)
    tc = np.clip(t, -half, half)
    return np.sqrt((t - tc) ** 2 + q**2).astype(F32)


def _params(rng: np.random.Generator, n: int, y: np.ndarray, d: float) -> dict[str, np.ndarray]:
    u = rng.random
    mal = y.astype(F32)
    c = contrast(d, 0.25) * FEATURE_GAIN
    overlap = 0.5 * d + SIZE_OVERLAP * (1 - 0.5 * d)  # size distributions move towards each other with difficulty
    r_benign = 0.16 + 0.14 * u(n)
    r_malig = 0.2 + 0.22 * u(n)
    radius = np.where(mal > 0, r_malig * (1 - 0.25 * overlap), r_benign * (1 + 0.25 * overlap))
    harm = np.where(mal[:, None] > 0, (0.06 + 0.14 * u((n, N_HARM))) * c,
                    0.025 * u((n, N_HARM)) + 0.06 * d * u((n, N_HARM)))
    p = {
        "cy": rng.normal(0, 0.06, n), "cx": rng.normal(0, 0.06, n), "radius": radius,
        "harm": harm / np.arange(1, N_HARM + 1)[None, :] ** 0.5, "phase": 2 * np.pi * u((n, N_HARM)),
        "n_spikes": np.where(mal > 0, rng.integers(6, N_SPIKES + 1, n), 0),
        "spike_ang": 2 * np.pi * u((n, N_SPIKES)), "spike_len": (0.5 + 0.8 * u((n, N_SPIKES))) * c,
        "calcified": ((mal == 0) & (u(n) < 0.3)).astype(F32), "halo": ((mal > 0) & (u(n) < 0.3)).astype(F32),
        "density": 0.55 + 0.15 * u(n), "edge": np.where(mal > 0, 0.02 + 0.02 * u(n), 0.008 + 0.01 * u(n)),
        "lung": 0.10 + 0.08 * u(n),
        "v_cy": 2 * u((n, N_VESSELS)) - 1, "v_cx": 2 * u((n, N_VESSELS)) - 1,
        "v_ang": np.pi * u((n, N_VESSELS)), "v_half": 0.1 * u((n, N_VESSELS)) ** 2,
        "v_rad": 0.012 + 0.03 * u((n, N_VESSELS)) ** 2, "v_int": 0.25 + 0.3 * u((n, N_VESSELS)),
        "wall": (u(n) < 0.35).astype(F32), "wall_ang": 2 * np.pi * u(n), "wall_d": 0.55 + 0.3 * u(n),
        "fissure": (u(n) < 0.3).astype(F32), "fis_ang": np.pi * u(n), "fis_off": rng.normal(0, 0.4, n),
        "noise": (0.015 + 0.01 * u(n)) * (0.7 + 1.3 * d) * NOISE_GAIN,
    }
    return p


def _render(p: dict[str, np.ndarray], sl: slice, size: int, rng: np.random.Generator) -> np.ndarray:
    P = {k: v[sl] for k, v in p.items()}
    m = len(P["cy"])
    px = pixel(size)
    y, x = grid(size)
    img: np.ndarray = np.broadcast_to(col(P["lung"]), (m, size, size)).astype(F32)
    img = img + 0.025 * smooth_noise(rng, m, size, 0.02)
    ridge = gauss((smooth_noise(rng, m, size, 0.07) / 0.12) ** 2)
    img = img + 0.15 * ridge * soft_step(smooth_noise(rng, m, size, 0.1) - 0.3, 1.0)
    for k in range(N_VESSELS):
        dist = _segment_dist(y, x, col(P["v_cy"][:, k]), col(P["v_cx"][:, k]), col(P["v_ang"][:, k]),
                             col(P["v_half"][:, k]))
        rad = np.maximum(col(P["v_rad"][:, k]), 0.6 * px)
        img = img + col(P["v_int"][:, k]) * soft_step(rad - dist, max(0.02, 2 * px))
    # fissure: a thin faint line
    fa = col(P["fis_ang"])
    fd = np.abs(x * np.sin(fa) - y * np.cos(fa) - col(P["fis_off"]))
    img = img + 0.18 * col(P["fissure"]) * gauss((fd / max(0.008, 0.5 * px)) ** 2)
    # nodule
    cy, cx = col(P["cy"]), col(P["cx"])
    r, th = polar(y, x, cy, cx)
    bound = harmonic_radius(th, P["radius"], P["harm"], P["phase"])
    edge = np.maximum(col(P["edge"]), px)
    nod = soft_step(bound - r, edge)
    spikes = np.zeros((m, size, size), F32)
    thick = max(0.025, 0.8 * px)
    idx = np.flatnonzero(P["n_spikes"] > 0)  # spiculated (malignant) nodules only
    for k in range(N_SPIKES if idx.size else 0):
        on = col((P["n_spikes"][idx] > k).astype(F32))
        ang = col(P["spike_ang"][idx, k])
        length = col(P["radius"][idx] * (1 + P["spike_len"][idx, k]))
        t = (x - cx[idx]) * np.cos(ang) + (y - cy[idx]) * np.sin(ang)
        q = -(x - cx[idx]) * np.sin(ang) + (y - cy[idx]) * np.cos(ang)
        taper = np.clip(1 - t / length, 0, 1)
        line = gauss((q / (thick * (0.5 + taper))) ** 2) * soft_step(t, px) * np.sqrt(taper)
        spikes[idx] = np.maximum(spikes[idx], on * line)
    halo = col(P["halo"]) * 0.25 * soft_step(1.5 * bound - r, 0.1)
    core = col(P["calcified"]) * soft_step(0.45 * col(P["radius"]) - r, max(0.02, px))
    dens = col(P["density"])
    img = np.maximum(img, np.maximum(dens * nod, np.maximum(dens * spikes, halo)))
    img = img + 0.35 * core
    # chest wall: soft tissue with a fat stripe and a rib beyond a curved pleural line
    wa = col(P["wall_ang"])
    s = x * np.cos(wa) + y * np.sin(wa)
    tt = -x * np.sin(wa) + y * np.cos(wa)
    pleura = col(P["wall_d"]) + 0.15 * tt**2
    wall = col(P["wall"]) * soft_step(s - pleura, max(0.015, px))
    rib = gauss(((s - pleura - 0.18) / 0.07) ** 2 + (tt / 0.35) ** 2)
    fat = gauss(((s - pleura - 0.06) / 0.025) ** 2)
    img = img * (1 - wall) + wall * (0.62 - 0.2 * fat + 0.35 * rib)
    if TEXTURE_SD > 0:
        img = img + TEXTURE_SD * powerlaw_noise(rng, m, size, TEXTURE_BETA)
    img = img + col(P["noise"]) * (smooth_noise(rng, m, size, 0.006) + 0.5 * rng.standard_normal(img.shape, F32))
    return np.clip(img, 0, 1).astype(F32)


def generate_ct(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """LUNA16-like nodule crops; label 1 = malignant (half of the images)."""
    y = (rng.random(n) < 0.5).astype(np.int64)
    pids = patient_ids(rng, n, "CT")
    p = _params(rng, n, y, difficulty)
    out = np.zeros((n, size, size), np.uint8)
    render_chunks(n, lambda sl: to_uint8(_render(p, sl, size, rng)), out)
    return Split(pixels=out[:, None], targets=y, patient_ids=pids)


register(SyntheticSpec(
    info=DatasetInfo(name="ct-slices", task="classification", class_names=("Benign", "Malignant"), channels=1,
                     modality="CT", synthetic=True,
                     description="procedural lung-window CT nodule crop phantom (synthetic), benign vs malignant"),
    generate=generate_ct, default_difficulty=0.6))
