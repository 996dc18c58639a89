"""Attack strength: medsec's attacks next to torchattacks' equivalents at identical settings, on the
same images of the same victim. medsec must be at least as strong: its robust accuracy may exceed
torchattacks' by at most 1 point on every pair (exit code 1 otherwise).

Minimal-norm attacks (C&W L2, DeepFool) are scored at an L2 budget: an adversarial image counts only
when ||x_adv - x||_2 <= eps_l2 (medsec's versions take that budget; torchattacks' run unbounded and are
scored with it). torchattacks is a benchmark-only extra (pip install --no-deps torchattacks; it imports
without torchvision).

    PYTHONPATH=. python benchmarks/strength.py [--dataset oct] [--n 200] [--eps 0.008] ...
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from common import load_victim, machine, torchattacks_or_exit

from medsec.attacks import APGD, CW, FGSM, PGD, Cascade, DeepFool


def robust_accuracy(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, norm: str,
                    eps: float) -> float:
    """Percent of images still classified correctly, or whose perturbation exceeds the budget."""
    with torch.no_grad():
        correct = torch.cat([model(x_adv[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]) == y
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    over = size > eps * (1 + 1e-4) + 1e-6
    return 100.0 * float((correct | over).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="oct")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n", type=int, default=200, help="test images attacked")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--eps", type=float, default=4 / 255, help="L_inf budget")
    ap.add_argument("--eps-l2", type=float, default=0.35, help="L2 budget for C&W and DeepFool")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps")
    ap.add_argument("--apgd-steps", type=int, default=20)
    ap.add_argument("--cw-steps", type=int, default=50)
    ap.add_argument("--autoattack", action="store_true", help="also run torchattacks' full AutoAttack (slow)")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    ta = torchattacks_or_exit()

    model, x, y, dlabel, alabel = load_victim(a.dataset, a.arch, a.size, a.n_train, a.n, a.epochs,
                                              cache_dir=a.cache_dir)
    x, y = x[: a.n], y[: a.n]
    k = int(model(x[:2]).shape[1])
    with torch.no_grad():
        clean = 100.0 * float((model(x).argmax(1) == y).float().mean())
    eps, e2, alpha = a.eps, a.eps_l2, a.eps / 4
    print(f"# strength: {dlabel} / {alabel}, {len(x)} test images, clean accuracy {clean:.1f}%  [{machine()}]")
    print(f"# eps_inf={eps:.5f}, eps_l2={e2}, PGD steps={a.steps} alpha={alpha:.5f}, APGD steps={a.apgd_steps}, "
          f"C&W steps={a.cw_steps}")

    def ta_run(atk) -> Callable[[], torch.Tensor]:
        def f() -> torch.Tensor:
            torch.manual_seed(0)
            return atk(x, y)
        return f

    def ms_run(atk) -> Callable[[], torch.Tensor]:
        return lambda: atk(model, x, y)

    multi = ta.MultiAttack([ta.APGD(model, eps=eps, steps=a.apgd_steps, loss="ce", seed=0),
                            ta.APGD(model, eps=eps, steps=a.apgd_steps, loss="dlr", seed=0)])
    pairs: list[tuple[str, str, float, Callable[[], torch.Tensor], Callable[[], torch.Tensor], str]] = [
        ("FGSM", "linf", eps, ms_run(FGSM(eps=eps)), ta_run(ta.FGSM(model, eps=eps)), "FGSM"),
        (f"PGD-{a.steps}", "linf", eps, ms_run(PGD(eps=eps, alpha=alpha, steps=a.steps)),
         ta_run(ta.PGD(model, eps=eps, alpha=alpha, steps=a.steps, random_start=True)), "PGD"),
        (f"APGD-CE-{a.apgd_steps}", "linf", eps, ms_run(APGD(eps=eps, steps=a.apgd_steps, loss="ce")),
         ta_run(ta.APGD(model, eps=eps, steps=a.apgd_steps, loss="ce", seed=0)), "APGD(ce)"),
        ("C&W-L2 (c=1, 1 search step)", "l2", e2,
         ms_run(CW(eps=e2, c=1.0, kappa=0.0, steps=a.cw_steps, lr=0.01, binary_search_steps=1)),
         ta_run(ta.CW(model, c=1.0, kappa=0.0, steps=a.cw_steps, lr=0.01)), "CW"),
        ("C&W-L2 (5 search steps)", "l2", e2,
         ms_run(CW(eps=e2, c=1.0, kappa=0.0, steps=a.cw_steps, lr=0.01, binary_search_steps=5)),
         ta_run(ta.CW(model, c=1.0, kappa=0.0, steps=a.cw_steps, lr=0.01)), "CW"),
        ("DeepFool-L2", "l2", e2, ms_run(DeepFool(eps=e2, steps=50, overshoot=0.02)),
         ta_run(ta.DeepFool(model, steps=50, overshoot=0.02)), "DeepFool"),
    ]
    casc = Cascade.standard(eps, num_classes=k, steps=a.apgd_steps)
    pairs.append(("Cascade (APGD-CE, APGD-DLR, PGD-margin)", "linf", eps, ms_run(casc), ta_run(multi),
                  "MultiAttack(APGD-CE, APGD-DLR)"))
    if a.autoattack:
        pairs.append(("Cascade vs AutoAttack", "linf", eps, ms_run(casc),
                      ta_run(ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=k, seed=0)),
                      "AutoAttack(standard)"))

    print()
    print("| attack | medsec robust acc. (%) | torchattacks robust acc. (%) | torchattacks attack | difference | "
          "medsec s | torchattacks s | ok |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    failed = False
    for name, norm, budget, ms, tf, tname in pairs:
        t = time.perf_counter()
        xa = ms()
        tm = time.perf_counter() - t
        t = time.perf_counter()
        xb = tf()
        tt = time.perf_counter() - t
        ra = robust_accuracy(model, x, xa, y, norm, budget)
        rb = robust_accuracy(model, x, xb, y, norm, budget)
        ok = ra <= rb + 1.0
        failed |= not ok
        print(f"| {name} | {ra:.1f} | {rb:.1f} | {tname} | {ra - rb:+.1f} | {tm:.1f} | {tt:.1f} | "
              f"{'yes' if ok else 'NO'} |", flush=True)
    print()
    print("all pairs within 1 point" if not failed else "SOME PAIRS FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
