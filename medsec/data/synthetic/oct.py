"""Retinal OCT phantom `oct`: foveal B-scans in four classes, CNV, DME, DRUSEN and NORMAL (Kermany-like).

A B-scan (depth down, lateral across) of a curved, slightly tilted retina: dark vitreous; the retinal
layers by reflectivity — RNFL (bright, thicker on the nasal side), GCL, IPL, INL (dark), OPL, ONL
(dark), ELM, the ellipsoid zone (bright), the RPE (brightest) — the foveal pit where the inner layers
thin out, then the choroid with dark vessel lumens fading into the sclera; multiplicative speckle,
log compression and detector noise.

- NORMAL: the above.
- DRUSEN: 3-6 dome-shaped RPE elevations with medium-reflective material beneath, outer layers lifted.
- DME: retinal thickening (the pit fills in) with hyporeflective cystoid spaces in the INL/OPL/ONL.
- CNV: a broad RPE elevation (fibrovascular PED, heterogeneous material) with a dark subretinal
  fluid pocket above it and sometimes intraretinal fluid.
Difficulty shrinks heights, sizes and contrast of these features and strengthens the speckle.
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
    patient_ids,
    pixel,
    powerlaw_noise,
    render_chunks,
    smooth_noise,
    soft_step,
    to_uint8,
)

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
N_DRUSEN = 6
N_CYSTS = 7
SPECKLE_GRID = 256  # speckle grains across a B-scan
# How the lesions and the background are rendered (see docs/synthetic.md, "Behaviour under attack").
FEATURE_GAIN = 0.4  # lesion size/height/contrast relative to the drawn pattern
LESION_TEXTURE = 0.12  # fine reflectivity texture of the diseased tissue (relative std): microcystic inner retina
# (DME), heterogeneous sub-RPE/subretinal material (CNV), irregular RPE band (DRUSEN)
TEXTURE_SD = 0.0  # tissue reflectivity varies as (1 + TEXTURE_SD * 1/f^TEXTURE_BETA texture)
TEXTURE_BETA = 2.0
SPECKLE_GAIN = 0.3  # speckle strength relative to the drawn level
NOISE_GAIN = 0.1  # detector noise relative to the drawn level


def _params(rng: np.random.Generator, n: int, y: np.ndarray, d: float) -> dict[str, np.ndarray]:
    u = rng.random
    c = contrast(d, 0.3) * FEATURE_GAIN
    cls = y
    return {
        "cls": cls.astype(F32),
        "y0": 0.3 + rng.normal(0, 0.06, n), "curv": 0.1 + 0.15 * u(n), "tilt": rng.normal(0, 0.08, n),
        "fx": rng.normal(0, 0.12, n), "pit": 0.7 + 0.25 * u(n), "pit_w": 0.12 + 0.06 * u(n),
        "t_in": 0.42 + 0.1 * u(n), "nasal": np.where(u(n) < 0.5, -1.0, 1.0),
        # drusen
        "dr_n": rng.integers(3, N_DRUSEN + 1, n), "dr_x": 1.6 * u((n, N_DRUSEN)) - 0.8,
        "dr_h": (0.06 + 0.08 * u((n, N_DRUSEN))) * c, "dr_w": 0.05 + 0.07 * u((n, N_DRUSEN)),
        # dme
        "thick": 1 + (0.4 + 0.4 * u(n)) * c, "cy_n": rng.integers(3, N_CYSTS + 1, n),
        "cy_x": rng.normal(0, 0.25, (n, N_CYSTS)), "cy_d": 0.35 + 0.5 * u((n, N_CYSTS)),
        "cy_r": (0.04 + 0.05 * u((n, N_CYSTS))) * (0.6 + 0.4 * c),
        # cnv
        "ped_x": rng.normal(0, 0.15, n), "ped_h": (0.1 + 0.1 * u(n)) * c, "ped_w": 0.14 + 0.12 * u(n),
        "srf_h": (0.06 + 0.08 * u(n)) * c, "irf": (u(n) < 0.25).astype(F32),
        "speckle": (0.5 + 0.6 * d + 0.2 * u(n)) * SPECKLE_GAIN, "gain": 0.9 + 0.2 * u(n),
        "noise": np.full(n, (0.03 + 0.03 * d) * NOISE_GAIN),
        "contrast": c * np.ones(n),
    }


def _render(p: dict[str, np.ndarray], sl: slice, size: int, rng: np.random.Generator) -> np.ndarray:
    P = {k: v[sl] for k, v in p.items()}
    m = len(P["y0"])
    px = pixel(size)
    e = max(0.008, 0.6 * px)
    Y, X = grid(size)
    cls = P["cls"]
    is_ = {name: col((cls == i).astype(F32)) for i, name in enumerate(CLASSES)}
    c = col(P["contrast"])
    dx = X - col(P["fx"])
    rpe = col(P["y0"]) + col(P["curv"]) * X**2 + col(P["tilt"]) * X  # top of the RPE, (m, 1, W)
    # RPE elevations: drusen bumps and the CNV pigment-epithelial detachment
    lift = np.zeros((m, 1, size), F32)
    for k in range(N_DRUSEN):
        on = col(((P["dr_n"] > k) & (cls == 2)).astype(F32))
        lift = lift + on * col(P["dr_h"][:, k]) * gauss(((X - col(P["dr_x"][:, k])) / col(P["dr_w"][:, k])) ** 2)
    ped = is_["CNV"] * col(P["ped_h"]) * gauss(((X - col(P["ped_x"])) / col(P["ped_w"])) ** 2)
    lift = lift + ped
    srf = is_["CNV"] * col(P["srf_h"]) * gauss(((X - col(P["ped_x"])) / (1.4 * col(P["ped_w"]))) ** 2)
    rpe_top = rpe - lift
    # inner retina thickness: foveal pit, thicker nasally, thickened in DME
    nasal = 1 + 0.25 * np.clip(col(P["nasal"]) * dx, 0, 1)
    pit = col(P["pit"]) * gauss((dx / col(P["pit_w"])) ** 2)
    thick = 1 + is_["DME"] * (col(P["thick"]) - 1)
    pit = pit * (1 - 0.8 * is_["DME"] * c)
    t_in = col(P["t_in"]) * nasal * (1 - pit) * thick
    t_out = 0.2 * (1 + 0.25 * gauss((dx / col(P["pit_w"])) ** 2)) * (1 + 0.3 * (thick - 1))
    ez = rpe_top - srf - 0.05  # ellipsoid zone sits above the RPE; subretinal fluid pushes it up
    opl = ez - t_out + 0.6 * lift  # the outer nuclear layer is compressed over RPE elevations
    ilm = opl - t_in
    # reflectivity as steps at the layer boundaries (depth increases downwards)
    b = [
        (ilm, 0.75), (ilm + 0.12 * t_in + 0.012, -0.4), (ilm + 0.45 * t_in, 0.12), (ilm + 0.65 * t_in, -0.3),
        (ilm + 0.85 * t_in, 0.25), (opl, -0.35), (ez - 0.02, 0.2), (ez - 0.012, -0.2), (ez, 0.55),
        (ez + 0.02, -0.5), (rpe_top - srf, 0.0), (rpe_top, 0.75), (rpe_top + 0.035, -0.87),
    ]
    img: np.ndarray = np.full((m, size, size), 0.02, F32)
    for bound, step in b:
        img = img + step * soft_step(Y - bound, e)
    # material beneath elevated RPE (drusen, PED): medium reflective, fills rpe_top+0.035 .. rpe+0.035
    under = soft_step(Y - (rpe_top + 0.035), e) * soft_step(rpe + 0.035 - Y, e) * (lift > 0.004)
    het = 1 + 0.3 * is_["CNV"] * smooth_noise(rng, m, size, 0.03)
    img = img + 0.3 * under * het
    # subretinal fluid: dark between ez+0.02 .. rpe_top - 0 (already step 0); make it hypo-reflective
    srf_zone = soft_step(Y - (ez + 0.02), e) * soft_step(rpe_top - Y, e) * (srf > 0.004)
    img = img * (1 - 0.9 * srf_zone * np.sqrt(c))
    # choroid below the RPE band, with vessel lumens, fading into the sclera
    chor = soft_step(Y - (rpe + 0.035), e)
    depth_c = np.clip(Y - (rpe + 0.035), 0, None)
    lumens = soft_step(smooth_noise(rng, m, size, 0.025) - 0.6, 0.6)
    img = img + chor * (0.38 * np.exp(-depth_c / 0.14) * (1 - 0.6 * lumens))
    # intraretinal cysts (DME always, CNV sometimes)
    cyst_on = is_["DME"] + is_["CNV"] * col(P["irf"])
    cysts = np.zeros((m, size, size), F32)
    for k in range(N_CYSTS):
        on = cyst_on * col((P["cy_n"] > k).astype(F32))
        cxk = col(P["fx"] + P["cy_x"][:, k])
        xi = np.clip(((cxk + 1) / 2 * size).astype(int), 0, size - 1)
        top = np.take_along_axis(ilm, xi.reshape(-1, 1, 1), axis=2)
        bot = np.take_along_axis(ez, xi.reshape(-1, 1, 1), axis=2)
        cyk = top + col(P["cy_d"][:, k]) * (bot - top)
        r = col(P["cy_r"][:, k])
        cysts = np.maximum(cysts, on * soft_step(1 - np.sqrt(((X - cxk) / (0.8 * r)) ** 2 + ((Y - cyk) / r) ** 2), 0.3))
    img = img * (1 - 0.9 * cysts * c)
    zone = (is_["DME"] * soft_step(Y - ilm, e) * soft_step(opl - Y, e)
            + is_["CNV"] * soft_step(Y - (ez - 0.03), e) * soft_step(rpe + 0.06 - Y, e)
            * gauss(((X - col(P["ped_x"])) / (2 * col(P["ped_w"]))) ** 2)
            + is_["DRUSEN"] * gauss(((Y - rpe_top - 0.015) / 0.035) ** 2))
    img = img * (1 + LESION_TEXTURE * zone * smooth_noise(rng, m, size, 0.012))
    # speckle: fully developed speckle is gamma-distributed; a pixel of a downsampled B-scan averages
    # about (SPECKLE_GRID / size)^2 grains (Kermany scans are ~500 px wide), so it is smoother at 64 px
    if TEXTURE_SD > 0:
        img = img * (1 + TEXTURE_SD * powerlaw_noise(rng, m, size, TEXTURE_BETA))
    grains = max(1.0, (SPECKLE_GRID / size) ** 2)
    shape = grains / np.maximum(col(P["speckle"]), 1e-3) ** 2
    sp = rng.gamma(np.broadcast_to(shape, (m, size, size)), 1.0).astype(F32) / shape
    img = np.clip(img, 0, None) * sp * col(P["gain"])
    img = np.log1p(6 * img) / np.log1p(6.0)
    img = img + col(P["noise"]) * rng.standard_normal((m, size, size), dtype=F32)
    return np.clip(img, 0, 1).astype(F32)


def generate_oct(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """Foveal OCT B-scans (n, 1, size, size), classes CNV / DME / DRUSEN / NORMAL in equal shares."""
    y = rng.integers(0, len(CLASSES), n).astype(np.int64)
    pids = patient_ids(rng, n, "OCT")
    p = _params(rng, n, y, difficulty)
    out = np.zeros((n, size, size), np.uint8)
    render_chunks(n, lambda sl: to_uint8(_render(p, sl, size, rng)), out)
    return Split(pixels=out[:, None], targets=y, patient_ids=pids)


register(SyntheticSpec(
    info=DatasetInfo(name="oct", task="classification", class_names=CLASSES, channels=1, modality="OPT",
                     synthetic=True, description="procedural retinal OCT B-scan phantom (synthetic), 4 classes"),
    generate=generate_oct, default_difficulty=0.8))
