"""How the embedded synthetic stand-in behaves under attack, beside Levy et al.'s Table 1.

For each row of `medsec reproduce` (quick profile unless --profile), this trains (or reads from the cache)
the row's undefended victim through the library's victim cache, then scores, on the first
``reproduce.n_test`` test images, the victim on clean images and under the row's ORIGINAL attack at the
row's eps (the same attack objects `medsec reproduce` uses: FGSM, PGD-10 on the top finding, or BIM-10
transferred from a plain surrogate). These two columns describe the data and the victim, so they are what the
stand-in is calibrated against; the defence and adaptive columns are never looked at here.

Targets per row: clean >= paper clean - 15; original attack without defence <= paper value + 15.

    MEDSEC_CACHE=/tmp/cal OMP_NUM_THREADS=1 python benchmarks/standin_calibration.py [--rows gmm-oct,...]
        [--seeds 0] [--set victims.oct.difficulty=0.7 ...] [--retrain]

--retrain trains every victim a second time in a fresh cache folder and prints both, to check that the same
seed gives the same numbers.

--rsna-rendering '{"marking_gain": 0.0, ...}' draws the rsna phantom with other `chest.Rendering` values
(docs/synthetic.md); the victims then train in a fresh cache folder, since the data cache does not key on it.

--toy TEXTURE,CONTRAST,SD_PX trains the quick ResNet-18 (width x0.25, depth x0.5, 8 epochs, 1200 images,
Adam 0.002) on two-class 64 px images of 1/f texture (std TEXTURE) where the positive class adds one faint
Gaussian opacity (peak CONTRAST, std SD_PX pixels, placed at random in the central half) and prints clean
accuracy and accuracy under FGSM and PGD-10 at eps 0.002 on 256 test images: the phantom without anatomy,
to see how faint and diffuse evidence must be for a victim to fall at half a grey level.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import torch
import yaml


def _nested(assignments: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in assignments:
        key, _, value = a.partition("=")
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = yaml.safe_load(value)
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def measure_row(cfg: Any, row: Any) -> dict[str, Any]:
    """Clean and original-attack (no defence) metric of the row's victim, scored as `medsec reproduce` does
    (medsec.studies.levy: the row's original attack, the undefended victim's handled score)."""
    from medsec.models.inference import resolve_device
    from medsec.models.victims import get_victim
    from medsec.studies.common import defence_config, outputs
    from medsec.studies.levy import TRANSFER, RowRun, original_attack

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    victim = get_victim(cfg, row.dataset)
    t_train = time.perf_counter() - t0
    victim.model.eval()
    data = victim.data
    task = data.info.task
    n = min(cfg.reproduce.n_test, len(data.test))
    x = data.test.images(slice(0, n)).to(device)
    y = data.test.target_tensor(slice(0, n)).to(device)
    z = outputs(victim.model, x)
    # the row without its defence: only what the original attack and the undefended score read
    run = RowRun(cfg, row, None, victim, x, y, task, z.argmax(1) if task == "multilabel" else None,  # type: ignore[arg-type]
                 z)
    if row.original == TRANSFER:
        run.surrogate = get_victim(defence_config(cfg), row.dataset, seed=cfg.seed + 100).model.eval()
    t1 = time.perf_counter()
    xa = original_attack(run, row.eps)(run.plain, x, y)
    t_attack = time.perf_counter() - t1
    clean, attacked = run.undefended(x, adversarial=False), run.undefended(xa, adversarial=True)
    paper_clean, paper_orig = row.paper[0], row.paper[1]
    return {"row": row.id, "victim": victim.meta.get("arch_label"), "n": n, "eps": row.eps,
            "clean": round(float(clean), 1), "paper_clean": paper_clean,
            "original_no_defence": round(float(attacked), 1), "paper_original_no_defence": paper_orig,
            "clean_ok": bool(clean >= paper_clean - 15), "attack_ok": bool(attacked <= paper_orig + 15),
            "victim_test": victim.meta.get("test"), "epochs": victim.meta.get("epochs"),
            "best_epoch": victim.meta.get("best_epoch"), "train_s": round(t_train, 1),
            "attack_s": round(t_attack, 1), "cached": victim.from_cache}


def toy(texture: float, contrast: float, sd_px: float, seed: int, eps: float = 0.002) -> dict[str, Any]:
    """Clean / FGSM / PGD-10 accuracy of the quick ResNet-18 on texture + faint opacity images (--toy)."""
    import numpy as np

    from medsec.attacks.engine import FGSM, PGD
    from medsec.data.synthetic._common import powerlaw_noise
    from medsec.models.networks import build_model

    def draw(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.integers(0, 2, n)
        img = 0.5 + texture * powerlaw_noise(rng, n, 64)
        yy, xx = np.mgrid[0:64, 0:64]
        cy, cx = (rng.uniform(16, 48, (n, 1, 1)) for _ in range(2))
        img = img + contrast * y[:, None, None] * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sd_px**2))
        return torch.tensor(np.clip(img, 0, 1), dtype=torch.float32)[:, None], torch.tensor(y)

    rng = np.random.default_rng(seed)
    (xtr, ytr), (xte, yte) = draw(1200, rng), draw(256, rng)
    torch.manual_seed(seed)
    model = build_model("resnet18", in_channels=1, num_outputs=2, task="classification", width=0.25, depth=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.002, weight_decay=1e-4)
    for _ in range(8):
        model.train()
        for idx in torch.randperm(len(xtr)).split(64):
            loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()

    def acc(x: torch.Tensor) -> float:
        with torch.no_grad():
            return round(100 * float((model(x).argmax(1) == yte).float().mean()), 1)

    return {"texture": texture, "contrast": contrast, "sd_px": sd_px, "seed": seed, "clean": acc(xte),
            "fgsm": acc(FGSM(eps=eps)(model, xte, yte)), "pgd10": acc(PGD(eps=eps, steps=10)(model, xte, yte))}


def main() -> None:
    from medsec.config import load_config
    from medsec.studies.levy import ROWS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--rows", default="", help="comma-separated row ids (default: all eight)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. victims.oct.difficulty=0.7")
    ap.add_argument("--retrain", action="store_true", help="train each victim twice (fresh caches) and compare")
    ap.add_argument("--json", default="", help="also write the rows to this file")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (results can depend on it)")
    ap.add_argument("--rsna-rendering", default="", help="JSON of chest.Rendering fields for the rsna phantom")
    ap.add_argument("--toy", default="", help="TEXTURE,CONTRAST,SD_PX: the texture + opacity toy instead of rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.toy:
        texture, contrast, sd_px = (float(v) for v in args.toy.split(","))
        for seed in (int(s) for s in args.seeds.split(",")):
            print(json.dumps(toy(texture, contrast, sd_px, seed)), flush=True)
        return
    fresh_cache = None
    if args.rsna_rendering:
        import medsec.data.synthetic.chest as chest

        chest.RSNA_RENDERING = chest.Rendering(**json.loads(args.rsna_rendering))
        fresh_cache = tempfile.mkdtemp(prefix="medsec-rendering-")
    rows = [r for r in ROWS if not args.rows or r.id in args.rows.split(",")]
    over = _nested(args.set)
    out = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs = [None, tempfile.mkdtemp(prefix="medsec-standin-")] if args.retrain else [None]
        for r in rows:
            for cache in runs:
                o = _merge({"seed": seed, "device": "cpu"}, over)
                if cache or fresh_cache:
                    o["cache_dir"] = cache or fresh_cache
                cfg = load_config(args.profile, o)
                res = {"seed": seed, "run": 2 if cache else 1, **measure_row(cfg, r)}
                out.append(res)
                flag = ("ok" if res["clean_ok"] else "LOW") + "/" + ("ok" if res["attack_ok"] else "HIGH")
                print(f"seed {seed} run {res['run']} {r.id:20s} eps {r.eps:<6g} clean {res['clean']:5.1f} "
                      f"(paper {res['paper_clean']:5.1f})  original attack, no defence "
                      f"{res['original_no_defence']:5.1f} (paper {res['paper_original_no_defence']:5.1f})  {flag}  "
                      f"[{res['victim']}, epochs {res['epochs']} best {res['best_epoch']}, "
                      f"train {res['train_s']}s, attack {res['attack_s']}s]", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
