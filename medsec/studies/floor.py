"""The floor of a row: the strongest plain attack on the UNDEFENDED victim, run until it converges.

A table row can only blame the victim ("it resists this eps, whatever the defence does") when no attack on
the undefended victim gets below the paper's value. A floor from one short run does not bound anything: an
attack that has not converged under-states how fragile the victim is, and the gap gets wrongly charged to
the victim instead of the defence. So the floor here

- starts from every image set the row already has (the original and the adaptive attack's images, scored
  on the undefended victim): per image, the floor is never weaker than anything else in the row;
- runs APGD (margin loss; Dice loss for segmentation) with the row's step budget, then doubles the steps
  and adds a restart each round, attacking only the images the victim still handles (classification), until
  the floor moves by less than ``tol`` points between two rounds or ``max_rounds`` are spent;
- records every round, so the report can show the convergence, and whether it converged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsec.attacks.apgd import APGD
from medsec.metrics.system import handled, percent
from medsec.models.inference import batched


def victim_scores(model: nn.Module, x: Tensor, y: Tensor, task: str, finding: Tensor | None = None) -> np.ndarray:
    """Per image in [0, 1]: 1 when the undefended victim still handles the (adversarial) image, the Dice for
    segmentation."""
    z = batched(lambda xb: model(xb).float(), x, 64)
    return handled(z, y, task, adversarial=True, finding=finding).numpy()


def converged_floor(model: nn.Module, x: Tensor, y: Tensor, task: str, eps: float, *, steps: int, seed: int,
                    finding: Tensor | None = None, prior: Sequence[Tensor] = (), tol: float = 2.0,
                    max_rounds: int = 4) -> dict[str, Any]:
    """The converged floor on the undefended `model`: {"value", "converged", "rounds": [{"attack", "steps",
    "restarts", "attacked", "value"}, ...], "x_adv"} (x_adv: per image the strongest image found, not for JSON).

    prior: adversarial versions of x from the row's other attacks; they seed the per-image best."""
    best = np.ones(x.shape[0]) if task != "segmentation" else np.full(x.shape[0], np.inf)
    x_best = x.clone()
    rounds: list[dict[str, Any]] = []
    for xp in prior:
        s = victim_scores(model, xp, y, task, finding)
        better = s < best
        best = np.where(better, s, best)
        x_best[torch.as_tensor(better, device=x.device)] = xp[torch.as_tensor(better, device=x.device)]
    if prior:
        rounds.append({"attack": "the row's other attacks", "steps": 0, "restarts": 0, "attacked": 0,
                       "value": percent(best)})
    loss = "dice" if task == "segmentation" else "margin"
    s_steps, restarts, previous, converged = steps, 1, None, False
    for r in range(max_rounds):
        todo = np.flatnonzero(best > 0) if task != "segmentation" else np.arange(x.shape[0])
        if todo.size:
            idx = torch.as_tensor(todo, device=x.device)
            atk = APGD(eps=eps, steps=s_steps, restarts=restarts, loss=loss, seed=seed + r, batch_size=64)
            xa = atk(model, x[idx], y[idx])
            s = victim_scores(model, xa, y[idx], task, None if finding is None else finding[idx])
            better = s < best[todo]
            best[todo] = np.where(better, s, best[todo])
            sel = idx[torch.as_tensor(better, device=x.device)]
            x_best[sel] = xa[torch.as_tensor(better, device=x.device)]
        value = percent(best)
        rounds.append({"attack": f"APGD ({loss} loss)", "steps": s_steps, "restarts": restarts,
                       "attacked": int(todo.size), "value": value})
        if previous is not None and previous - value < tol:
            converged = True
            break
        if not todo.size:  # every image already falls: nothing stronger can move it
            converged = True
            break
        previous, s_steps, restarts = value, s_steps * 2, restarts + 1
    return {"value": percent(best), "converged": converged, "rounds": rounds, "tol": tol, "x_adv": x_best}
