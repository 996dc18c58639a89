"""The one-pixel attack (Su, Vargas & Sakurai, IEEE TEVC 2019): differential evolution over k pixels.

A candidate is k (row, column, value per channel) tuples; the fitness is the model's probability of the
true class (untargeted) or one minus that of the target class (targeted), lower is better. Following Su
et al.: DE/rand/1 with F = 0.5 and no crossover, a child replaces its parent when it is at least as fit,
initial positions uniform, values uniform in [0, 1]. Every image of the batch evolves its own population,
and all candidates of all images are scored in shared forward passes (batched DE). An image stops
evolving as soon as one candidate fools the model. Only black-box queries (probabilities) are used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medsec.attacks.core import AttackResult, CompositeAttack, attack_generator, check_class_labels
from medsec.errors import MedsecError


class OnePixel(CompositeAttack):
    """Change at most `pixels` pixels (all channels of each) to fool a classifier.

    pixels: k, the number of pixels changed. popsize: DE population per image (Su et al.: 400).
    iterations: DE generations (Su et al.: 100). f: DE mutation factor. targeted: y holds target classes.
    eval_batch: candidate images per forward pass. seed: the attack's own generator.
    """

    name = "onepixel"

    def __init__(self, pixels: int = 1, popsize: int = 100, iterations: int = 30, f: float = 0.5,
                 targeted: bool = False, eval_batch: int = 2048, seed: int | None = 0) -> None:
        for name, v, lo in (("pixels", pixels, 1), ("popsize", popsize, 4), ("iterations", iterations, 0),
                            ("eval_batch", eval_batch, 1)):
            if isinstance(v, bool) or int(v) != v or int(v) < lo:
                raise MedsecError(f"OnePixel: {name} must be an integer >= {lo}, got {v!r}")
        if not 0.0 < f <= 2.0:
            raise MedsecError(f"OnePixel: f must be in (0, 2], got {f}")
        super().__init__(targeted=targeted, seed=seed, train_mode="eval")
        self.pixels, self.popsize, self.iterations = int(pixels), int(popsize), int(iterations)
        self.f, self.eval_batch = float(f), int(eval_batch)

    def __repr__(self) -> str:
        return f"OnePixel(pixels={self.pixels}, popsize={self.popsize}, iterations={self.iterations})"

    # -- candidates -> images ----------------------------------------------------------------------------
    @staticmethod
    def apply(x: Tensor, cand: Tensor) -> Tensor:
        """Images x (M, C, H, W) with candidate pixels cand (M, k, 2 + C) written in (positions rounded
        down, clipped to the image; values clipped to [0, 1])."""
        m, c, h, w = x.shape
        out = x.clone()
        rows = cand[..., 0].floor().long().clamp(0, h - 1)
        cols = cand[..., 1].floor().long().clamp(0, w - 1)
        vals = cand[..., 2:].clamp(0.0, 1.0).to(x.dtype)
        ar = torch.arange(m, device=x.device)
        for j in range(cand.shape[1]):
            out[ar, :, rows[:, j], cols[:, j]] = vals[:, j, :]
        return out

    def _fitness(self, model: nn.Module, x: Tensor, y: Tensor, cand: Tensor) -> tuple[Tensor, Tensor]:
        """(M,) fitness (lower is better) and (M,) success of candidates cand (M, k, 2 + C) on images x (M, ...)."""
        fit, succ = [], []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.eval_batch):
                logits = model(self.apply(x[i:i + self.eval_batch], cand[i:i + self.eval_batch])).float()
                yy = y[i:i + self.eval_batch]
                p = logits.softmax(1).gather(1, yy[:, None]).squeeze(1)
                pred = logits.argmax(1)
                fit.append(1.0 - p if self.targeted else p)
                succ.append(pred == yy if self.targeted else pred != yy)
        return torch.cat(fit), torch.cat(succ)

    # -- the attack ------------------------------------------------------------------------------------------
    def _compose(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        """x with at most `pixels` pixels changed per image; success = the model's verdict on the result."""
        check_class_labels(x, y)
        n, c, h, w = x.shape
        k, pop = self.pixels, self.popsize
        gen = attack_generator(self.seed, x.device)
        lo = torch.zeros(2 + c, device=x.device)
        hi = torch.tensor([h - 1e-4, w - 1e-4] + [1.0] * c, device=x.device)
        logits = model(x).float()
        pred = logits.argmax(1)
        done = (pred == y) if self.targeted else (pred != y)
        active = (~done).nonzero().squeeze(1)  # images already fooled are returned unchanged
        if active.numel() == 0:
            return AttackResult(x.clone(), done)
        na = active.numel()
        popu = torch.rand(na, pop, k, 2 + c, generator=gen, device=x.device) * hi
        xa = x[active].repeat_interleave(pop, 0)
        ya = y[active].repeat_interleave(pop)
        fit, succ = self._fitness(model, xa, ya, popu.reshape(na * pop, k, 2 + c))
        fit, succ = fit.view(na, pop), succ.view(na, pop)
        for _ in range(self.iterations):
            won = succ.any(1)
            if bool(won.all()):
                break
            # DE/rand/1: three distinct random members per child (distinct from each other)
            r = torch.argsort(torch.rand(na, pop, pop, generator=gen, device=x.device), dim=2)[..., :3]
            a, b, d = (torch.gather(popu, 1, r[..., i, None, None].expand(-1, -1, k, 2 + c)) for i in range(3))
            child = (a + self.f * (b - d)).clamp(min=lo, max=hi)
            keep_rows = (~won).nonzero().squeeze(1)  # only images not yet fooled evolve
            cf, cs = self._fitness(model, x[active[keep_rows]].repeat_interleave(pop, 0),
                                   y[active[keep_rows]].repeat_interleave(pop),
                                   child[keep_rows].reshape(-1, k, 2 + c))
            cf, cs = cf.view(-1, pop), cs.view(-1, pop)
            better = (cf <= fit[keep_rows]) | cs
            sub_pop, sub_fit, sub_succ = popu[keep_rows], fit[keep_rows], succ[keep_rows]
            sub_pop[better] = child[keep_rows][better]
            sub_fit[better] = cf[better]
            sub_succ[better] = cs[better]
            popu[keep_rows], fit[keep_rows], succ[keep_rows] = sub_pop, sub_fit, sub_succ
        # per image: a successful candidate if any, else the fittest
        score = fit - succ.float() * 10.0
        idx = score.argmin(1)
        chosen = popu[torch.arange(na, device=x.device), idx]
        x_adv = x.clone()
        x_adv[active] = self.apply(x[active], chosen)
        # the success reported is the model's verdict on the returned images
        pred_adv = model(x_adv).argmax(1)
        ok = (pred_adv == y) if self.targeted else (pred_adv != y)
        return AttackResult(x_adv, ok)
