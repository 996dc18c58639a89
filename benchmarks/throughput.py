"""PGD-10 throughput: medsec vs torchattacks on the same model and batch, in one run (the machine may be
shared: the contenders alternate and the median of several repeats is reported).

Prints image-steps/s for each, the ratio medsec / torchattacks, effective TFLOP/s (FLOPs of one
forward + input-gradient pass counted by torch.utils.flop_counter), the attack success rate of each on
the same images and, on a GPU, the fraction of a measured bf16 matmul peak. On CUDA medsec runs with its
defaults (bf16 autocast + channels_last) and once more in fp32, so the success rates can be compared.

    PYTHONPATH=. python benchmarks/throughput.py                       # CPU: small trained victim
    PYTHONPATH=. python benchmarks/throughput.py --model random --arch resnet50 --size 224 --batch 256
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import interleaved, load_victim, machine, median, torchattacks_or_exit
from torch.utils.flop_counter import FlopCounterMode

from medsec.attacks import PGD


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one attack step on the batch: forward plus the backward to the input."""
    xx = x.clone().requires_grad_(True)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:  # as in the attack: no weight gradients
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as fc:
            loss = torch.nn.functional.cross_entropy(model(xx), y)
            loss.backward()
    finally:
        for p, rg in flags:
            p.requires_grad_(rg)
    return int(fc.get_total_flops())


def bf16_peak(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 matmul TFLOP/s on this GPU."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    for _ in range(iters):
        a @ b
    ev1.record()
    torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (ev0.elapsed_time(ev1) / 1e3) / 1e12


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("victim", "random"), default="victim",
                    help="a trained cached victim (CPU default) or a randomly initialised network")
    ap.add_argument("--dataset", default="oct")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--width", type=float, default=1.0, help="width scale for --model random")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=4 / 255)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--compile", action="store_true", help="also time medsec with torch.compile")
    a = ap.parse_args(argv)
    ta = torchattacks_or_exit()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.model == "victim":
        model, x, y, dlabel, alabel = load_victim(a.dataset, a.arch, a.size, 800, max(a.batch, 64), 6)
        x, y = x[: a.batch], y[: a.batch]
        while len(x) < a.batch:  # repeat the test images to fill the batch
            x, y = torch.cat([x, x])[: a.batch], torch.cat([y, y])[: a.batch]
        what = f"{dlabel} / {alabel}"
    else:
        from medsec.models.networks import build_model

        model = build_model(a.arch, in_channels=3, num_outputs=14, task="classification", width=a.width).to(dev)
        model.eval()
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.rand(a.batch, 3, a.size, a.size, generator=g).to(dev)
        y = torch.randint(0, 14, (a.batch,), generator=g).to(dev)
        what = f"{a.arch} (random init, width x{a.width})"
    model = model.to(dev).eval()
    x, y = x.to(dev), y.to(dev)
    alpha = a.eps / 4
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    ms_default = PGD(eps=a.eps, alpha=alpha, steps=a.steps)  # precision "auto": bf16 on CUDA, fp32 on CPU
    ms_fp32 = PGD(eps=a.eps, alpha=alpha, steps=a.steps, precision="fp32", channels_last=False)
    ms_early = PGD(eps=a.eps, alpha=alpha, steps=a.steps, early_stop=True)
    tap = ta.PGD(model, eps=a.eps, alpha=alpha, steps=a.steps, random_start=True)
    runs = {"medsec": lambda: ms_default(model, x, y), "torchattacks": lambda: tap(x, y)}
    if dev.type == "cuda":
        runs["medsec fp32"] = lambda: ms_fp32(model, x, y)
    runs["medsec early-exit"] = lambda: ms_early(model, x, y)
    if a.compile:
        ms_comp = PGD(eps=a.eps, alpha=alpha, steps=a.steps, compile=True)
        runs["medsec compile"] = lambda: ms_comp(model, x, y)
    for f in runs.values():  # warm-up (cudnn autotune, compile, allocator)
        f()
    sync()
    times = interleaved(runs, a.repeats, sync)
    flops = step_flops(model, x, y)

    def asr(xa: torch.Tensor) -> float:
        with torch.no_grad():
            return 100.0 * float((model(xa).argmax(1) != y).float().mean())

    peak = bf16_peak(dev) if dev.type == "cuda" else None
    print(f"# PGD-{a.steps} throughput: {what}, batch {a.batch} x {tuple(x.shape[1:])}, eps {a.eps:.5f}  "
          f"[{machine()}]; {a.repeats} alternating repeats, median")
    print(f"# one step = {flops / 1e9:.3f} GFLOP for the batch (forward + input gradient)")
    if peak:
        print(f"# measured bf16 matmul peak: {peak:.0f} TFLOP/s")
    print()
    print("| run | median s | image-steps/s | ratio vs torchattacks | effective TFLOP/s |"
          + (" fraction of bf16 peak |" if peak else "") + " attack success % |")
    print("|---|---:|---:|---:|---:|" + ("---:|" if peak else "") + "---:|")
    t_ta = median(times["torchattacks"])
    outs = {k: f() for k, f in runs.items()}
    for k, ts in times.items():
        t = median(ts)
        ips = a.batch * a.steps / t
        tf = flops * a.steps / t / 1e12
        row = f"| {k} | {t:.3f} | {ips:.0f} | {t_ta / t:.2f} | {tf:.4f} |"
        if peak:
            row += f" {tf / peak:.3f} |"
        row += f" {asr(outs[k]):.1f} |"
        print(row)
    print()
    print("(early-exit stops each image once it is fooled: less work, the same success; it is not PGD-10 work "
          "for every image, so its ratio is reported apart from the like-for-like one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
