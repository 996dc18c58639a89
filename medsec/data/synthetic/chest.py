"""Chest-radiograph phantoms: `chest14` (14 findings, multi-label), `chest2` (any finding) and `rsna`.

A PA chest radiograph drawn as attenuation (bright = dense): trunk soft tissue, two lung fields with
apices, costophrenic angles and diaphragm domes (the right one higher), mediastinum, spine, trachea,
aortic knob, heart shadow, hila, posterior and anterior ribs, clavicles, vessel-like lung markings,
optional breast shadows and gastric bubble, exposure jitter and quantum noise. Patient position, size and
anatomy vary per image. Each finding of ChestX-ray14 has its own visual pattern (see FINDING_PATTERNS).

Findings are drawn as in the NIH data: about half the images are abnormal; within an abnormal image each
finding appears independently with its own probability (COND_PREVALENCE), at least one per abnormal
image. So each label is an independent pattern with its own prevalence (about 4-19 %), and `chest2`
(any finding) is balanced. `rsna` draws its pneumonia fainter, spread out and textured (RSNA_RENDERING), so
its victim falls to small perturbations as real pneumonia classifiers do (docs/synthetic.md); a higher
difficulty draws it fainter still.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsec.data.base import DatasetInfo, Split
from medsec.data.synthetic import SyntheticSpec, register
from medsec.data.synthetic._common import (
    F32,
    blur,
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

FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
F = {name: i for i, name in enumerate(FINDINGS)}



@dataclass(frozen=True)
class Rendering:
    """How the findings and the background are drawn (docs/synthetic.md, "Behaviour under attack").

    The defaults draw the patterns as designed (chest14, chest2); RSNA_RENDERING draws the faint,
    spread-out pneumonia the rsna stand-in is calibrated with.
    """

    finding_gain: float = 1.0  # finding strength relative to the drawn pattern (contrast and geometric change)
    finding_blur: float = 0.0  # the additive findings are blurred by this std (fraction of the width)
    texture_sd: float = 0.0  # anatomical background: 1/f^texture_beta texture over the trunk, std in [0, 1]
    texture_beta: float = 2.0
    marking_gain: float = 1.0  # lung markings (vessels) and parenchymal mottle relative to the drawn level
    opacity_texture: float = 0.0  # fine (alveolar) texture of the air-space opacities, std at their centre
    opacity_spread: float = 1.0  # size of the air-space opacities (pneumonia, infiltration) relative to drawn
    noise_gain: float = 1.0  # quantum (white + fine correlated) noise relative to the drawn level


CHEST14_RENDERING = Rendering()
# rsna: pneumonia at 0.7 of the drawn strength, spread out and textured. Calibrated on the paper's clean and
# no-defence columns of the Denoiser row (BIM-10 transferred at eps 0.02); Levy et al.'s GMM row (FGSM at eps
# 0.002) draws it fainter still through its difficulty (the profiles' reproduce.row_overrides; docs/synthetic.md).
RSNA_RENDERING = Rendering(finding_gain=0.7, opacity_spread=1.5, opacity_texture=0.02, noise_gain=0.05)

P_ABNORMAL = 0.5
# P(finding | abnormal image), ordered as FINDINGS. Ranked like the NIH label frequencies, floored so the
# rare ones still have positives in a 1000-image training split.
COND_PREVALENCE = np.array(
    [0.24, 0.12, 0.28, 0.36, 0.14, 0.16, 0.09, 0.13, 0.12, 0.10, 0.10, 0.09, 0.11, 0.08], dtype=np.float64
)

FINDING_PATTERNS: dict[str, str] = {
    "Atelectasis": "plate-like basal band opacity with elevation of that hemidiaphragm (volume loss)",
    "Cardiomegaly": "heart shadow widened (cardiothoracic ratio above ~0.55)",
    "Effusion": "basal opacity with a lateral meniscus blunting the costophrenic angle (one or both sides)",
    "Infiltration": "ill-defined, hazy, patchy opacity in one zone",
    "Mass": "round, slightly lobulated opacity of 8-13 % of the chest width",
    "Nodule": "one or two small, well-defined round opacities",
    "Pneumonia": "dense patchy air-space opacity with air bronchograms, mid/lower zone, sometimes bilateral",
    "Pneumothorax": "lucent apical/lateral rim without lung markings behind a thin visceral pleural line",
    "Consolidation": "homogeneous lobar opacity sharply bounded by a fissure",
    "Edema": "bilateral perihilar 'bat-wing' haze with Kerley B lines at the lateral bases",
    "Emphysema": "hyperlucent, hyperinflated lungs, sparse markings, flattened diaphragm, apical bullae",
    "Fibrosis": "coarse reticular (net-like) pattern in the peripheral lower zones with volume loss",
    "Pleural_Thickening": "smooth dense band along the lateral chest wall and an apical cap",
    "Hernia": "retrocardiac round gas-containing opacity with an air-fluid level (hiatal hernia)",
}


def _draw_findings(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 14) float32 0/1 findings: abnormal with P_ABNORMAL, then independent findings, at least one."""
    abnormal = rng.random(n) < P_ABNORMAL
    lab = rng.random((n, len(FINDINGS))) < COND_PREVALENCE[None, :]
    fallback = rng.choice(len(FINDINGS), size=n, p=COND_PREVALENCE / COND_PREVALENCE.sum())
    none = abnormal & ~lab.any(axis=1)
    lab[np.flatnonzero(none), fallback[none]] = True
    lab[~abnormal] = False
    return lab.astype(F32)


def _draw_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-image anatomy and finding parameters (drawn for every image; used only where needed)."""
    u = rng.random
    p: dict[str, np.ndarray] = {
        "dx": rng.normal(0, 0.025, n), "dy": rng.normal(0, 0.025, n), "scale": 0.9 + 0.14 * u(n),
        "lung_w": 0.74 + 0.08 * u(n), "top": -0.86 + 0.08 * u(n), "base": 0.5 + 0.12 * u(n),
        "right_high": 0.02 + 0.05 * u(n), "dome_h": 0.08 + 0.06 * u(n),
        "hx": 0.12 + rng.normal(0, 0.02, n), "hy": 0.24 + rng.normal(0, 0.03, n),
        "hw": 0.33 + 0.06 * u(n), "hh": 0.24 + 0.04 * u(n),
        "rib_sp": 0.14 + 0.03 * u(n), "rib_ph": u(n), "rib_ph2": u(n), "rib_amp": 0.06 + 0.04 * u(n),
        "breast": (u(n) < 0.4).astype(F32), "bubble": (u(n) < 0.6).astype(F32),
        "gain": 0.85 + 0.25 * u(n), "bias": rng.normal(0, 0.03, n), "gamma": 0.85 + 0.35 * u(n),
        "noise": 0.015 + 0.015 * u(n),
    }
    for k in range(len(FINDINGS)):
        p[f"side{k}"] = rng.integers(0, 2, n).astype(F32)
        p[f"a{k}"] = u(n)  # lateral position within the lung, 0..1
        p[f"v{k}"] = u(n)  # vertical position within the lung, 0..1
        p[f"s{k}"] = u(n)  # size
        p[f"t{k}"] = u(n)  # a spare shape parameter
        p[f"b{k}"] = (u(n) < 0.3).astype(F32)  # bilateral / second focus
    p["mass_amps"] = 0.12 * u((n, 4))
    p["mass_phases"] = 2 * np.pi * u((n, 4))
    return {k: np.asarray(v) for k, v in p.items()}


def _render(
    p: dict[str, np.ndarray], lab: np.ndarray, sl: slice, size: int, rng: np.random.Generator, difficulty: float,
    look: Rendering,
) -> np.ndarray:
    """Render images sl of a batch as float32 (m, size, size) in [0, 1]."""
    P = {k: v[sl] for k, v in p.items()}
    L = lab[sl]
    m = L.shape[0]
    c = contrast(difficulty) * look.finding_gain
    px = pixel(size)
    e = max(0.03, px)
    y0, x0 = grid(size)
    X = (x0 - col(P["dx"])) / col(P["scale"])  # (m, 1, W)
    Y = (y0 - col(P["dy"])) / col(P["scale"])  # (m, H, 1)
    has = {k: L[:, i] > 0 for k, i in F.items()}

    # ---- geometry, including the findings that change it ----
    top = col(P["top"])
    base_l = P["base"].copy()  # image-right lung = patient's left
    base_r = P["base"] - P["right_high"]
    dome_h = P["dome_h"].copy()
    atel_side = P[f"side{F['Atelectasis']}"]
    base_r = base_r - 0.06 * c * has["Atelectasis"] * (atel_side == 0)
    base_l = base_l - 0.06 * c * has["Atelectasis"] * (atel_side == 1)
    emph = has["Emphysema"].astype(F32)
    base_r, base_l = base_r + 0.07 * c * emph, base_l + 0.07 * c * emph
    dome_h = dome_h * (1 - 0.7 * c * emph)
    fib = has["Fibrosis"].astype(F32)
    base_r, base_l = base_r - 0.04 * c * fib, base_l - 0.04 * c * fib
    cardio = 1 + 0.4 * c * has["Cardiomegaly"]

    sides = []
    for sign, base in ((-1.0, base_r), (1.0, base_l)):
        a = sign * X
        b = col(base)
        u = np.clip((Y - top) / (b - top), 0, 1)
        med = 0.11 + 0.03 * u
        lat = med + (col(P["lung_w"]) - med) * np.sin(0.5 * np.pi * np.minimum(u / 0.75, 1.0)) ** 0.7
        dome = b - col(dome_h) * gauss(((a - 0.42) / 0.16) ** 2)
        lung = soft_step(a - med, e) * soft_step(lat - a, e) * soft_step(Y - top, e) * soft_step(dome - Y, e)
        sides.append({"a": a, "u": u, "lat": lat, "base": b, "dome": dome, "lung": lung})
    hw, hh = col(P["hw"] * cardio), col(P["hh"] * np.sqrt(cardio))
    heart = soft_step(1 - np.sqrt(((X - col(P["hx"])) / hw) ** 2 + ((Y - col(P["hy"])) / hh) ** 2), 0.1)
    for sd in sides:  # the heart shadow hides the lung behind it
        sd["lung"] = sd["lung"] * (1 - heart)
    lungs = sides[0]["lung"] + sides[1]["lung"]
    dome_any = np.where(X < 0, sides[0]["dome"], sides[1]["dome"])

    def pick(key: str, side: np.ndarray, idx: np.ndarray) -> np.ndarray:
        s = col(side)
        return np.where(s > 0.5, sides[1][key][idx], sides[0][key][idx])

    # ---- factors on the lung markings (pneumothorax removes them, emphysema thins them) ----
    mark_f = np.ones((m, size, size), F32) * (1 - 0.55 * c * col(emph))
    ptx_line = np.zeros((m, size, size), F32)
    ptx_dark = np.zeros((m, size, size), F32)
    idx = np.flatnonzero(has["Pneumothorax"])
    if idx.size:
        k = F["Pneumothorax"]
        side = P[f"side{k}"][idx]
        a, lat, lung = pick("a", side, idx), pick("lat", side, idx), pick("lung", side, idx)
        depth = np.minimum(lat - a, (Y[idx] - top[idx]) * 0.9)
        gap = col((0.07 + 0.08 * P[f"s{k}"][idx]) * (0.6 + 0.4 * c))
        upper = soft_step(0.3 - Y[idx], 0.15)
        rim = soft_step(gap - depth, px) * lung * upper
        mark_f[idx] *= 1 - rim
        ptx_dark[idx] = rim
        ptx_line[idx] = gauss(((depth - gap) / max(0.008, 0.5 * px)) ** 2) * lung * upper

    # ---- normal anatomy ----
    ax = np.abs(X)
    shoulder = 1.6 * np.clip(-0.6 - Y, 0, None) ** 1.5  # the trunk narrows over the shoulders to the neck
    body = soft_step(0.93 - shoulder - ax * (1.0 - 0.08 * Y), 0.05)
    arms = soft_step(ax - 0.97 + 0.1 * Y, 0.04) * 0.5  # upper arms beside the trunk
    img = 0.10 + 0.42 * np.maximum(body, arms) + 0.08 * soft_step(Y - 0.55, 0.3) * body
    img = img - (0.33 + 0.1 * c * col(emph)) * lungs
    img = img + 0.04 * heart
    img = img + 0.04 * soft_step(0.07 - ax, 0.02) * (0.6 + 0.4 * np.cos(np.pi * Y / 0.11) ** 2)  # spine
    img = img - 0.09 * soft_step(0.03 - ax, 0.015) * soft_step(-0.1 - Y, 0.05)  # trachea
    img = img + 0.08 * gauss(((X - 0.13) ** 2 + (Y + 0.35) ** 2) / 0.06**2)  # aortic knob
    hil = gauss(((ax - 0.2) ** 2 + (Y + 0.03) ** 2) / 0.08**2)
    img = img + 0.08 * hil
    thorax = soft_step(0.9 - ax, 0.05) * soft_step(dome_any + 0.06 - Y, 0.05)
    ph = (Y + 0.12 * ax - 0.4 * ax**2) / col(P["rib_sp"]) + col(P["rib_ph"])
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * ph)) ** 4 * soft_step(ax - 0.06, 0.03)
    ph2 = (Y + 0.45 * ax - 0.2 * ax**2) / col(1.3 * P["rib_sp"]) + col(P["rib_ph2"])
    ribs = ribs + 0.35 * (0.5 + 0.5 * np.cos(2 * np.pi * ph2)) ** 4
    img = img + col(P["rib_amp"]) * ribs * thorax * (0.35 + 0.65 * np.clip(lungs, 0, 1))
    clav_y = -0.72 + 0.12 * (ax - 0.1)
    img = img + 0.12 * gauss(((Y - clav_y) / 0.03) ** 2) * soft_step(0.62 - ax, 0.05) * soft_step(ax - 0.06, 0.03)
    img = img + 0.08 * col(P["breast"]) * soft_step(Y - 0.15, 0.2) * soft_step(ax - 0.45, 0.2) * body
    bubble = gauss((X - 0.38) ** 2 / 0.1**2 + (Y - col(base_l) - 0.12) ** 2 / 0.06**2)
    img = img - 0.12 * col(P["bubble"]) * bubble
    dist_h = np.sqrt((ax - 0.2) ** 2 + (Y + 0.03) ** 2)
    vessels = gauss((smooth_noise(rng, m, size, 0.012) / 0.3) ** 2)
    mottle = smooth_noise(rng, m, size, 0.03)
    img = img + look.marking_gain * lungs * mark_f * ((0.05 * np.exp(-dist_h / 0.4) + 0.012) * vessels + 0.012 * mottle)
    img = img - 0.06 * c * ptx_dark + 0.12 * c * ptx_line

    # ---- additive findings (each only on the images that have it) ----
    def region(k: int, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        side = P[f"side{k}"][idx]
        a, lung, lat = pick("a", side, idx), pick("lung", side, idx), pick("lat", side, idx)
        b = pick("base", side, idx)
        ca = col(0.22 + 0.38 * P[f"a{k}"][idx])
        return side, a, lung, lat, b, ca

    lesions = np.zeros((m, size, size), F32)

    def alveolar(k: int) -> np.ndarray | float:  # fine texture of air-space opacities (drawn only when used)
        return look.opacity_texture * smooth_noise(rng, k, size, 0.012) if look.opacity_texture > 0 else 0.0

    def add(name: str, fn) -> None:  # noqa: ANN001
        idx = np.flatnonzero(has[name])
        if idx.size:
            lesions[idx] += fn(F[name], idx)

    def atelectasis(k: int, idx: np.ndarray) -> np.ndarray:
        _, a, lung, _, b, ca = region(k, idx)
        cy = top[idx] + (b - top[idx]) * col(0.65 + 0.2 * P[f"v{k}"][idx])
        ang = col(0.6 * (P[f"t{k}"][idx] - 0.5))
        dp = (a - ca) * np.cos(ang) + (Y[idx] - cy) * np.sin(ang)
        dq = -(a - ca) * np.sin(ang) + (Y[idx] - cy) * np.cos(ang)
        th = max(0.035, 0.8 * px)
        return 0.24 * c * lung * gauss((dp / 0.17) ** 2 + (dq / th) ** 2)

    def effusion(k: int, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((idx.size, size, size), F32)
        h = col((0.17 + 0.17 * P[f"s{k}"][idx]) * (0.6 + 0.4 * c))
        for s in (0, 1):
            on = col(((P[f"side{k}"][idx] == s) | (P[f"b{k}"][idx] > 0)).astype(F32))
            sd = sides[s]
            thr = sd["base"][idx] - h - 0.14 * np.clip(sd["a"][idx] / col(P["lung_w"][idx]), 0, 1) ** 2
            out += on * sd["lung"][idx] * soft_step(Y[idx] - thr, 0.05)
        return 0.33 * c * np.clip(out, 0, 1)

    def infiltration(k: int, idx: np.ndarray) -> np.ndarray:
        _, a, lung, _, b, ca = region(k, idx)
        cy = top[idx] + (b - top[idx]) * col(0.35 + 0.5 * P[f"v{k}"][idx])
        rad = col(0.18 + 0.1 * P[f"s{k}"][idx]) * look.opacity_spread
        patch = soft_step(smooth_noise(rng, idx.size, size, 0.035) + 0.2, 1.2)
        zone = lung * gauss(((a - ca) ** 2 + (Y[idx] - cy) ** 2) / rad**2)
        return zone * (0.17 * c * patch + alveolar(idx.size))

    def round_opacity(idx: np.ndarray, k: int, radius: np.ndarray, amps: np.ndarray | None,
                      v_lo: float, second: bool) -> np.ndarray:
        out = np.zeros((idx.size, size, size), F32)
        for j in range(2 if second else 1):
            side = (P[f"side{k}"][idx] + j) % 2
            lung = pick("lung", side, idx)
            sign = np.where(side > 0.5, 1.0, -1.0)
            pa = (P[f"a{k}"][idx] + 0.47 * j) % 1.0
            pv = (P[f"v{k}"][idx] + 0.61 * j) % 1.0
            b = np.where(side > 0.5, base_l[idx], base_r[idx])
            cx = sign * (0.22 + 0.36 * pa)
            cy = P["top"][idx] + (b - P["top"][idx]) * (v_lo + (0.8 - v_lo) * pv)
            r, th = polar(Y[idx], X[idx], col(cy), col(cx))
            if amps is None:
                bound = col(radius)
            else:
                bound = harmonic_radius(th, radius, amps, P["mass_phases"][idx])
            blob = soft_step(bound - r, max(0.015, 0.7 * px)) * soft_step(lung - 0.3, 0.4)
            on = 1.0 if j == 0 else col(P[f"b{k}"][idx])
            out += on * blob
        return out

    def mass(k: int, idx: np.ndarray) -> np.ndarray:
        rad = (0.08 + 0.05 * P[f"s{k}"][idx]) * (0.75 + 0.25 * c)
        return 0.3 * c * round_opacity(idx, k, rad, P["mass_amps"][idx], 0.2, False)

    def nodule(k: int, idx: np.ndarray) -> np.ndarray:
        rad = np.maximum((0.03 + 0.025 * P[f"s{k}"][idx]) * (0.8 + 0.2 * c), 1.2 * px)
        return 0.34 * c * round_opacity(idx, k, rad, None, 0.1, True)

    def pneumonia(k: int, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((idx.size, size, size), F32)
        patch = soft_step(smooth_noise(rng, idx.size, size, 0.03) + 0.4, 1.0)
        bronch = gauss((smooth_noise(rng, idx.size, size, 0.012) / 0.25) ** 2)
        for j in range(2):
            side = (P[f"side{k}"][idx] + j) % 2
            sd_a, lung = pick("a", side, idx), pick("lung", side, idx)
            b = np.where(side > 0.5, base_l[idx], base_r[idx])
            pv = (P[f"v{k}"][idx] + 0.37 * j) % 1.0
            cy = col(P["top"][idx] + (b - P["top"][idx]) * (0.45 + 0.4 * pv))
            ca = col(0.25 + 0.35 * ((P[f"a{k}"][idx] + 0.53 * j) % 1.0))
            rx = col((0.16 + 0.12 * P[f"s{k}"][idx]) * (0.7 + 0.3 * c) * look.opacity_spread)
            ry = rx * 0.8
            on = 1.0 if j == 0 else col(P[f"b{k}"][idx])
            out += on * lung * gauss(((sd_a - ca) / rx) ** 2 + ((Y[idx] - cy) / ry) ** 2)
        zone = np.clip(out, 0, 1)
        return zone * (0.3 * c * patch * (1 - 0.35 * bronch) + alveolar(idx.size))

    def consolidation(k: int, idx: np.ndarray) -> np.ndarray:
        _, a, lung, _, b, ca = region(k, idx)
        yf = top[idx] + (b - top[idx]) * col(0.4 + 0.2 * P[f"v{k}"][idx]) + 0.25 * (a - 0.4)
        lower = col((P[f"t{k}"][idx] < 0.6).astype(F32))
        d = np.where(lower > 0.5, Y[idx] - yf, yf - Y[idx])
        extent = np.clip(1.5 * gauss(((a - ca) / 0.3) ** 2), 0, 1)
        texture = 1 + 0.1 * smooth_noise(rng, idx.size, size, 0.03)
        return 0.3 * c * lung * soft_step(d, max(0.02, px)) * extent * texture

    def edema(k: int, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((idx.size, size, size), F32)
        period = max(0.05, 3 * px)
        for sd in sides:
            a, lung, lat = sd["a"][idx], sd["lung"][idx], sd["lat"][idx]
            wing = gauss(((a - 0.28) / 0.22) ** 2 + ((Y[idx] + 0.02) / 0.32) ** 2)
            kerley = (0.5 + 0.5 * np.cos(2 * np.pi * Y[idx] / period)) ** 6
            kerley = kerley * soft_step(a - (lat - 0.1), px) * soft_step(Y[idx] - 0.15, 0.05)
            out += lung * (0.2 * wing + 0.08 * kerley)
        return c * out

    def emphysema(k: int, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((idx.size, size, size), F32)
        for j, sd in enumerate(sides):
            cy = top[idx] + col(0.12 + 0.1 * P[f"v{k}"][idx])
            ca = col(0.28 + 0.2 * ((P[f"a{k}"][idx] + 0.5 * j) % 1.0))
            r = np.sqrt((sd["a"][idx] - ca) ** 2 + (Y[idx] - cy) ** 2)
            rad = 0.07 + 0.04 * col(P[f"s{k}"][idx])
            wall = max(0.01, 0.6 * px)
            out += sd["lung"][idx] * (-0.08 * soft_step(rad - r, wall) + 0.05 * gauss(((r - rad) / wall) ** 2))
        return c * out

    def fibrosis(k: int, idx: np.ndarray) -> np.ndarray:
        net = gauss((smooth_noise(rng, idx.size, size, 0.01) / 0.3) ** 2)
        out = np.zeros((idx.size, size, size), F32)
        for sd in sides:
            a, lung, lat, b = sd["a"][idx], sd["lung"][idx], sd["lat"][idx], sd["base"][idx]
            w = soft_step(a - (lat - 0.3), 0.12) * soft_step(Y[idx] - (top[idx] + 0.4 * (b - top[idx])), 0.15)
            out += lung * w * (0.1 * net + 0.04)
        return c * out

    def pleural_thickening(k: int, idx: np.ndarray) -> np.ndarray:
        _, a, lung, lat, _, _ = region(k, idx)
        t = col(np.maximum(0.03 + 0.03 * P[f"s{k}"][idx], 1.2 * px))
        band = soft_step(t - (lat - a), px) + soft_step(1.5 * t - (Y[idx] - top[idx]), px)
        return 0.26 * c * np.clip(band, 0, 1) * soft_step(lung - 0.2, 0.4)

    def hernia(k: int, idx: np.ndarray) -> np.ndarray:
        cx = col(P["hx"][idx] - 0.04 + 0.1 * P[f"a{k}"][idx])
        cy = col(P["hy"][idx] + 0.06 + 0.06 * P[f"v{k}"][idx])
        rad = col(0.09 + 0.04 * P[f"s{k}"][idx])
        r, _ = polar(Y[idx], X[idx], cy, cx)
        level = cy + col(-0.02 + 0.05 * P[f"t{k}"][idx])
        inside = soft_step(rad - r, max(0.015, px))
        wall = max(0.012, 0.7 * px)
        gas = inside * soft_step(level - Y[idx], max(0.01, px))
        return c * (-0.2 * gas + 0.06 * inside * (1 - gas) + 0.12 * gauss(((r - rad) / wall) ** 2))

    for name, fn in (
        ("Atelectasis", atelectasis), ("Effusion", effusion), ("Infiltration", infiltration),
        ("Mass", mass), ("Nodule", nodule), ("Pneumonia", pneumonia), ("Consolidation", consolidation),
        ("Edema", edema), ("Emphysema", emphysema), ("Fibrosis", fibrosis),
        ("Pleural_Thickening", pleural_thickening), ("Hernia", hernia),
    ):
        add(name, fn)
    img = img + blur(lesions, look.finding_blur)
    if look.texture_sd > 0:
        img = img + look.texture_sd * powerlaw_noise(rng, m, size, look.texture_beta) * body

    # ---- exposure, detector response and quantum noise ----
    img = np.clip(img, 0, 1) ** col(P["gamma"]) * col(P["gain"]) + col(P["bias"])
    sigma = col(P["noise"]) * (0.6 + 1.2 * difficulty) * look.noise_gain
    img = img + sigma * rng.standard_normal((m, size, size), dtype=F32)
    img = img + 0.5 * sigma * smooth_noise(rng, m, size, 0.006)
    return np.clip(img, 0, 1).astype(F32)


def render_chest(n: int, size: int, rng: np.random.Generator, difficulty: float,
                 findings: np.ndarray | None = None, rendering: Rendering = CHEST14_RENDERING,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels uint8 (n, 1, size, size), findings (n, 14) float32, patient ids) for a chest phantom batch.

    Findings are drawn from `rng` unless given; the anatomy parameters, then the pixel noise, follow
    in a fixed order, so the same rng state always gives the same images.
    """
    lab = _draw_findings(rng, n) if findings is None else np.asarray(findings, dtype=F32)
    pids = patient_ids(rng, n, "CXR")
    p = _draw_params(rng, n)
    px = np.zeros((n, 1, size, size), np.uint8)
    out = np.zeros((n, size, size), np.uint8)
    render_chunks(n, lambda sl: to_uint8(_render(p, lab, sl, size, rng, difficulty, rendering)), out)
    px[:, 0] = out
    return px, lab, pids


def generate_chest14(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """ChestX-ray14-like radiographs with 14 multi-label findings (float32 (n, 14))."""
    px, lab, pids = render_chest(n, size, rng, difficulty)
    return Split(pixels=px, targets=lab, patient_ids=pids)


def generate_chest2(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """The chest14 images for the same rng, labelled 1 when any finding is present."""
    px, lab, pids = render_chest(n, size, rng, difficulty)
    return Split(pixels=px, targets=np.asarray(lab.any(axis=1), dtype=np.int64), patient_ids=pids,
                 extra={"findings": lab})


RSNA_DISTRACTORS = ("Cardiomegaly", "Nodule", "Pleural_Thickening", "Emphysema", "Hernia", "Atelectasis")


def generate_rsna(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """RSNA-pneumonia-like radiographs: label 1 = pneumonia (patchy air-space opacities, often bilateral).

    Half the images have pneumonia. As in the RSNA data, where 'not normal, no lung opacity' counts as
    negative, 20 % of all images also carry one non-opacity finding (cardiomegaly, nodule, pleural
    thickening, emphysema, hernia, plate atelectasis), so the label means opacity, not "abnormal".
    """
    y = (rng.random(n) < 0.5).astype(np.int64)
    lab = np.zeros((n, len(FINDINGS)), F32)
    lab[:, F["Pneumonia"]] = y
    distract = rng.random(n) < 0.2
    which = rng.choice([F[d] for d in RSNA_DISTRACTORS], size=n)
    lab[np.flatnonzero(distract), which[distract]] = 1
    px, _, pids = render_chest(n, size, rng, difficulty, findings=lab, rendering=RSNA_RENDERING)
    return Split(pixels=px, targets=y, patient_ids=pids)


_DESC = "procedural PA chest radiograph phantom (synthetic)"
register(SyntheticSpec(
    info=DatasetInfo(name="chest14", task="multilabel", class_names=FINDINGS, channels=1, modality="CR",
                     synthetic=True, description=f"{_DESC}, 14 ChestX-ray14 findings"),
    generate=generate_chest14, default_difficulty=0.3))
register(SyntheticSpec(
    info=DatasetInfo(name="chest2", task="classification", class_names=("No Finding", "Finding"), channels=1,
                     modality="CR", synthetic=True, description=f"{_DESC}, any finding vs none"),
    generate=generate_chest2, default_difficulty=0.3))
register(SyntheticSpec(
    info=DatasetInfo(name="rsna", task="classification", class_names=("Normal", "Pneumonia"), channels=1,
                     modality="CR", synthetic=True, description=f"{_DESC}, pneumonia opacities"),
    generate=generate_rsna, default_difficulty=0.5))
