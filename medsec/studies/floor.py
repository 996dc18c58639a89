"""Attacks run until they converge: the row's floor and its adaptive attack.

A table row can only blame the victim ("it resists this eps, whatever the defence does") when no attack on
the undefended victim gets below the paper's value, and it can only say that a defence holds when the
adaptive attack had as much budget as it could use. A value from one short run bounds neither: an attack that
has not converged under-states what it can do. So both are run by :func:`converge`:

- per image, the best image found so far is kept (seeded with every image set the row already has, so the
  floor is never weaker per image than anything else in the row);
- the attack runs with the row's step budget, then doubles the steps and adds a restart each round, attacking
  only the images the system still handles (for segmentation: whose Dice is above the attacks' own success
  threshold, ``medsec.attacks.core.DICE_SUCCESS``; the attacks stop on an image once it is reached), until
  the value moves by less than ``tol`` points between two rounds or ``max_rounds`` are spent;
- every round is recorded, so the report can show the convergence, and whether it converged.

The floor (:func:`converged_floor`) is APGD (margin loss; Dice loss for segmentation) on the UNDEFENDED
victim; the adaptive attack (``medsec.studies.levy.adaptive_stage``) is the defence's recipe on the defended
system, judged on that system.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsec.attacks.apgd import APGD
from medsec.attacks.core import DICE_SUCCESS
from medsec.metrics.system import handled, percent
from medsec.models.inference import batched

# attack(steps, restarts, round, images to attack) -> adversarial versions of those images
RoundAttack = Callable[[int, int, int, Tensor], Tensor]
# scores(adversarial images, their indices) -> per image in [0, 1], lower = better for the attacker
Scores = Callable[[Tensor, Tensor], np.ndarray]


def converge(attack: RoundAttack, scores: Scores, x: Tensor, *, steps: int, task: str, label: str,
             prior: Sequence[Tensor] = (), prior_label: str = "the row's other attacks", tol: float = 2.0,
             max_rounds: int = 4, done_at: float | None = None) -> dict[str, Any]:
    """Run `attack` with doubling steps and one restart more each round until the value (mean score, percent)
    moves by less than `tol`; {"value", "converged", "rounds": [{"attack", "steps", "restarts", "attacked",
    "value"}, ...], "tol", "x_adv"} (x_adv: per image the best image found; not for JSON).

    prior: adversarial versions of x (from `prior_label`) that seed the per-image best, before any round.
    done_at: an image whose score is at most this is not attacked again (default: 0, and for segmentation the
    attacks' success threshold DICE_SUCCESS, where they stop on an image anyway)."""
    if done_at is None:
        done_at = DICE_SUCCESS if task == "segmentation" else 0.0
    all_idx = torch.arange(x.shape[0], device=x.device)
    best = np.full(x.shape[0], np.inf)
    x_best = x.clone()
    rounds: list[dict[str, Any]] = []

    def keep(xa: Tensor, idx: Tensor) -> None:
        s = scores(xa, idx)
        pos = idx.cpu().numpy()
        better = s < best[pos]
        best[pos] = np.where(better, s, best[pos])
        mask = torch.as_tensor(better, device=x.device)
        x_best[idx[mask]] = xa[mask]

    for xp in prior:
        keep(xp, all_idx)
    if prior:
        rounds.append({"attack": prior_label, "steps": 0, "restarts": 0, "attacked": 0,
                       "value": percent(best)})
    s_steps, restarts, previous, converged = steps, 1, None, False
    for r in range(max_rounds):
        todo = np.flatnonzero(best > done_at)
        if todo.size:
            idx = torch.as_tensor(todo, device=x.device)
            keep(attack(s_steps, restarts, r, idx), idx)
        value = percent(best)
        rounds.append({"attack": label, "steps": s_steps, "restarts": restarts, "attacked": int(todo.size),
                       "value": value})
        if previous is not None and previous - value < tol:
            converged = True
            break
        if not todo.size:  # every image already falls: nothing stronger can move it
            converged = True
            break
        previous, s_steps, restarts = value, s_steps * 2, restarts + 1
    return {"value": percent(best), "converged": converged, "rounds": rounds, "tol": tol, "x_adv": x_best}


def victim_scores(model: nn.Module, x: Tensor, y: Tensor, task: str, finding: Tensor | None = None) -> np.ndarray:
    """Per image in [0, 1]: 1 when the undefended victim still handles the (adversarial) image, the Dice for
    segmentation."""
    z = batched(lambda xb: model(xb).float(), x, 64)
    return handled(z, y, task, adversarial=True, finding=finding).numpy()


def converged_floor(model: nn.Module, x: Tensor, y: Tensor, task: str, eps: float, *, steps: int, seed: int,
                    finding: Tensor | None = None, prior: Sequence[Tensor] = (), tol: float = 2.0,
                    max_rounds: int = 4) -> dict[str, Any]:
    """The converged floor on the undefended `model` (see :func:`converge` for what it returns).

    prior: adversarial versions of x from the row's other attacks; they seed the per-image best."""
    loss = "dice" if task == "segmentation" else "margin"

    def attack(s: int, restarts: int, r: int, idx: Tensor) -> Tensor:
        return APGD(eps=eps, steps=s, restarts=restarts, loss=loss, seed=seed + r, batch_size=64)(model, x[idx], y[idx])

    def scores(xa: Tensor, idx: Tensor) -> np.ndarray:
        return victim_scores(model, xa, y[idx], task, None if finding is None else finding[idx])

    return converge(attack, scores, x, steps=steps, task=task, label=f"APGD ({loss} loss)", prior=prior, tol=tol,
                    max_rounds=max_rounds)
