"""What one cell of the full profile costs: a Table-1 row at full sizes (224 px, the published network),
measured on a few images and attack steps and extrapolated per image and per step.

    python benchmarks/full_cell_cost.py --row mgm-chest14 --images 4 --steps 2 6 --device cpu --json cost.json
    python benchmarks/full_cell_cost.py --networks          # the per-network table of docs/scale.md

How it measures (CPU seconds of this process, so other load on the machine does not inflate them; wall
seconds are printed beside them; run with OMP_NUM_THREADS=1 for one core's cost):
1. the row's victim network at 224 px: one training step (forward + backward + Adam) on a batch of
   ``--batch`` images, and one forward pass without gradients, per image (after a warm-up batch);
2. the row's cells (victim, fitted defence, row: ``levy_cells`` of ``medsec reproduce``, run by the grid
   runner) on ``--images`` test images at two adaptive step budgets, the victim and defence trained once on
   the full-smoke sizes and loaded from the cache in both timed runs. The
   difference between the two runs, per image and per step, is what every further step of the table's
   step-budgeted attacks (the adaptive recipe with the profile's restarts, and the APGD floor) costs;
3. the extrapolation to the full profile: victim training <= n_train x epochs x (step cost per image) +
   n_val x epochs x (forward per image) (early stopping may stop sooner); the row's attacks ~ per-image-step
   cost x n_test x steps, plus the curves' points (n_curve images at max(10, steps/3) steps per multiplier).
   The defence's own fit (MGM/GMM: a feature pass over the training set; Ensemble, Denoiser, RBF: networks
   trained like the victim) is listed per stage in docs/scale.md.
Everything else (the fixed cost of a row: clean and detector passes, FGSM, figures) is in the intercept and
does not grow with steps. The same script on a GPU (``--device cuda``) gives that GPU's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from medsec.config import ExperimentConfig, load_config
from medsec.models.inference import resolve_device
from medsec.models.networks import build_model
from medsec.models.training import task_loss
from medsec.models.victims import experiment_dataset, victim_config
from medsec.studies.common import StudyOutput
from medsec.studies.grid import run_grid
from medsec.studies.levy import ROWS, curve_steps, levy_cells


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(t: tuple[float, float]) -> tuple[float, float]:
    c, w = _clock()
    return c - t[0], w - t[1]


def network_costs(cfg: Any, dataset: str, batch: int, device: torch.device) -> dict[str, float]:
    """CPU and wall seconds per image of one training step and one no-grad forward pass of the victim."""
    vc = victim_config(cfg, dataset)
    info = experiment_dataset(cfg, dataset).info
    width = vc.width if vc.width is not None else cfg.model.width
    depth = vc.depth if vc.depth is not None else cfg.model.depth
    model = build_model(vc.arch, in_channels=info.channels, num_outputs=info.num_outputs, task=info.task,
                        width=width, depth=depth).to(device)
    size = cfg.data.image_size
    x = torch.rand(batch, info.channels, size, size, device=device)
    out = model(x[:2])
    if info.task == "segmentation":
        y = torch.randint(0, info.num_outputs, (batch, size, size), device=device)
    elif info.task == "multilabel":
        y = torch.randint(0, 2, (batch, out.shape[1]), device=device).float()
    else:
        y = torch.randint(0, info.num_outputs, (batch,), device=device)
    loss_fn = task_loss(info.task)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        model.train()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    sync()  # warm-up
    t = _clock()
    step()
    sync()
    train_c, train_w = _since(t)
    model.eval()
    with torch.no_grad():
        model(x)
        sync()
        t = _clock()
        model(x)
        sync()
        fwd_c, fwd_w = _since(t)
    params = sum(p.numel() for p in model.parameters())
    return {"arch": vc.arch, "params_millions": round(params / 1e6, 2), "batch": batch,
            "train_step_cpu_s_per_image": train_c / batch, "train_step_wall_s_per_image": train_w / batch,
            "forward_cpu_s_per_image": fwd_c / batch, "forward_wall_s_per_image": fwd_w / batch}


# the networks of the full profile at 224 px: (name, what builds it, input channels)
NETWORKS = (("densenet121", "densenet121", 1), ("resnet18", "resnet18", 1), ("resnet34", "resnet34", 1),
            ("resnet34+rbf", "rbf-classification", 1), ("resnet20", "resnet20", 1), ("unet", "unet", 1),
            ("unet+rbf", "rbf-segmentation", 3), ("resnet50", "resnet50", 1), ("vgg16", "vgg16", 1))


def one_network(kind: str, channels: int, batch: int, size: int = 224) -> dict[str, Any]:
    """CPU seconds and peak memory per image of one training step (forward + backward) of a network at full
    width and depth; run in a fresh process (peak memory is per process). ``batch`` must be > 2."""
    import resource

    from medsec.defences.rbf import build_rbf_model

    if kind.startswith("rbf-"):
        task = kind.split("-", 1)[1]
        model = build_rbf_model(task, channels, 2)  # type: ignore[arg-type]
    else:
        model = build_model(kind, in_channels=channels, num_outputs=2,
                            task="segmentation" if kind == "unet" else "classification")
    x = torch.rand(batch, channels, size, size)
    model(x[:2]).float().logsumexp(1).mean().backward()  # warm-up
    model.zero_grad(set_to_none=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = _clock()
    model(x).float().logsumexp(1).mean().backward()
    c, w = _since(t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # KiB on Linux
    # the warm-up's 2 images already set the peak once: what `batch` images add beyond it is the memory of
    # batch - 2 more images (the marginal memory per image, what a larger batch costs)
    return {"network": kind, "channels": channels, "batch": batch, "cpu_s_per_image": round(c / batch, 3),
            "wall_s_per_image": round(w / batch, 3), "memory_mb_per_image": round(peak / 1024 / max(1, batch - 2))}


def network_table(batch: int) -> list[dict[str, Any]]:
    """one_network for every network of NETWORKS, each in its own process."""
    import subprocess
    import sys

    rows = []
    for name, kind, ch in NETWORKS:
        out = subprocess.run([sys.executable, __file__, "--one-network", kind, str(ch), "--batch", str(batch)],
                             capture_output=True, text=True, check=True).stdout
        rows.append({**json.loads(out.strip().splitlines()[-1]), "network": name})
    return rows


def row_cost(row_id: str, images: int, steps: tuple[int, int], batch: int, device_name: str,
             cache_dir: str, out: Path) -> dict[str, Any]:
    """Measure the row at two step budgets and extrapolate to the full profile."""
    row = next(r for r in ROWS if r.id == row_id)
    full = load_config("full")
    base = load_config("full-smoke", {"cache_dir": cache_dir, "device": device_name,
                                      "reproduce": {"rows": [row_id], "n_test": images}})
    device = resolve_device(device_name)
    net = network_costs(base, row.dataset, batch, device)

    def cfg_for(steps_: int) -> ExperimentConfig:
        return base.model_copy(update={"reproduce": base.reproduce.model_copy(update={"steps": steps_})})

    def run(steps_: int, folder: Path) -> dict[str, Any]:
        cfg = cfg_for(steps_)
        o = StudyOutput.at(folder)
        cells, keys, _ = levy_cells(cfg, o)
        return run_grid(cells, o.store, title=f"{row_id}, {steps_} steps")[keys[row_id]]

    t = _clock()
    first = run(steps[0], out / "setup")  # trains the victim and fits the defence (cached for the timed runs)
    setup_c, setup_w = _since(t)
    runs = []
    for s in steps:
        t = _clock()
        r = run(s, out / f"steps{s}")
        c, w = _since(t)
        assert r["defence_from_cache"], "the defence should come from the cache on the timed runs"
        runs.append({"steps": s, "cpu_s": round(c, 2), "wall_s": round(w, 2),
                     "adaptive_wall_s": r["adaptive_seconds"]})
    d_steps = steps[1] - steps[0]
    per_img_step = (runs[1]["cpu_s"] - runs[0]["cpu_s"]) / (d_steps * images)
    intercept_per_img = (runs[0]["cpu_s"] - per_img_step * steps[0] * images) / images
    fr, ft = full.reproduce, full.train
    n_curve_steps = curve_steps(fr.steps)
    est = {
        "victim_training_cpu_h_at_most": (full.data.n_train * ft.epochs * net["train_step_cpu_s_per_image"]
                                          + full.data.n_val * ft.epochs * net["forward_cpu_s_per_image"]) / 3600,
        "row_attacks_cpu_h": (per_img_step * fr.n_test * fr.steps + intercept_per_img * fr.n_test) / 3600,
        "row_curves_cpu_h": per_img_step * fr.n_curve * n_curve_steps * len(fr.curve_multipliers) / 3600,
    }
    return {"row": row_id, "defence": row.defence, "dataset": row.dataset, "victim": net["arch"],
            "image_size": base.data.image_size, "device": str(device), "torch_threads": torch.get_num_threads(),
            "images": images, "restarts": base.reproduce.restarts, "network": net,
            "first_run_incl_fit_cpu_s": round(setup_c, 1), "first_run_incl_fit_wall_s": round(setup_w, 1),
            "first_run_result_seconds": first["seconds"], "runs": runs,
            "attack_cpu_s_per_image_per_step": round(per_img_step, 3),
            "fixed_cpu_s_per_image": round(intercept_per_img, 3),
            "full_profile": {"n_train": full.data.n_train, "epochs": ft.epochs, "n_test": fr.n_test,
                             "steps": fr.steps, "restarts": fr.restarts, "n_curve": fr.n_curve,
                             "curve_steps": n_curve_steps, "curve_multipliers": fr.curve_multipliers},
            "estimate": {k: round(v, 1) for k, v in est.items()},
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", action="append", help="Table-1 row id (repeatable; default mgm-chest14)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, nargs=2, default=(2, 6))
    ap.add_argument("--batch", type=int, default=8, help="batch of the per-network timing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=".cache/medsec-cost")
    ap.add_argument("--out", type=Path, default=Path("reports/full-cell-cost"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--networks", action="store_true", help="only the per-network table (training step cost "
                                                            "and memory per image at 224 px)")
    ap.add_argument("--one-network", nargs=2, metavar=("KIND", "CHANNELS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if a.one_network:
        print(json.dumps(one_network(a.one_network[0], int(a.one_network[1]), a.batch)))
        return
    if a.networks:
        table = network_table(a.batch)
        for r in table:
            print(f"{r['network']:14s} {r['cpu_s_per_image']:6.2f} CPU s/image  {r['memory_mb_per_image']:5d} MB/image")
        if a.json:
            a.json.write_text(json.dumps(table, indent=2))
        return
    results = [row_cost(r, a.images, tuple(a.steps), a.batch, a.device, a.cache_dir, a.out)
               for r in (a.row or ["mgm-chest14"])]
    for r in results:
        n = r["network"]
        print(f"{r['row']} ({r['victim']}, {r['image_size']} px, {r['device']}, {r['torch_threads']} thread(s)): "
              f"train step {n['train_step_cpu_s_per_image']:.3f} s/image, forward {n['forward_cpu_s_per_image']:.3f} "
              f"s/image; attacks {r['attack_cpu_s_per_image_per_step']:.3f} s per image per step "
              f"(restarts {r['restarts']}), fixed {r['fixed_cpu_s_per_image']:.2f} s/image")
        e = r["estimate"]
        print(f"  full profile on this device: victim training <= {e['victim_training_cpu_h_at_most']:.1f} h, "
              f"the row's attacks ~ {e['row_attacks_cpu_h']:.1f} h, its curves ~ {e['row_curves_cpu_h']:.1f} h")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
