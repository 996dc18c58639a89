"""A strongest-first cascade of attacks (as AutoAttack runs its attacks): each attack only sees the
samples every earlier attack failed on, and the result records, per sample, which attack succeeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medsec.attacks.apgd import APGD
from medsec.attacks.core import (
    Attack,
    AttackContext,
    AttackResult,
    CompositeAttack,
    check_eps,
    check_norm,
    guarded,
)
from medsec.attacks.engine import PGD
from medsec.errors import MedsecError

CLEAN = -2  # attack_index of samples whose goal was already reached on the clean input
ROBUST = -1  # attack_index of samples no attack broke


class Cascade(CompositeAttack):
    """Run `attacks` in order on the still-robust samples.

    ``run()`` returns an AttackResult whose info holds "attack_index" ((N,) long: the index of the first
    successful attack, CLEAN = -2 for samples already fooled on the clean input, ROBUST = -1 for none),
    "names" (the attacks' names) and "succeeded_by" ((N,) list of names, "clean" or None).
    """

    name = "cascade"

    def __init__(self, attacks: Sequence[Attack], names: Sequence[str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.attacks = list(attacks)
        if not self.attacks or not all(isinstance(a, Attack) for a in self.attacks):
            raise MedsecError("Cascade needs a non-empty list of attacks")
        self.names = list(names) if names is not None else [_auto_name(a, i) for i, a in enumerate(self.attacks)]
        if len(self.names) != len(self.attacks):
            raise MedsecError(f"{len(self.names)} names for {len(self.attacks)} attacks")
        budgets = {(a.norm, a.eps) for a in self.attacks if a.eps is not None}
        if len(budgets) == 1:
            self.norm, self.eps = next(iter(budgets))

    @classmethod
    def standard(cls, eps: float, norm: str = "linf", num_classes: int | None = None, steps: int = 100,
                 restarts: int = 1, **kw: Any) -> Cascade:
        """APGD-CE, then APGD-DLR (when the model has >= 3 classes), then the L_inf/L2 C&W margin by
        PGD with 5 restarts: strongest first, as in AutoAttack's white-box part."""
        e, nm = check_eps(eps), check_norm(norm)
        assert e is not None
        attacks: list[Attack] = [APGD(eps=e, norm=nm, steps=steps, restarts=restarts, loss="ce", **kw)]
        names = ["apgd-ce"]
        if num_classes is None or num_classes >= 3:
            attacks.append(APGD(eps=e, norm=nm, steps=steps, restarts=restarts, loss="dlr", **kw))
            names.append("apgd-dlr")
        attacks.append(PGD(eps=e, norm=nm, steps=steps, restarts=5, loss="margin", early_stop=True, **kw))
        names.append("pgd-margin")
        return cls(attacks, names)

    def _compose(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        n = x.shape[0]
        x_adv = x.detach().clone()
        clean_ok = self._clean_success(model, x, y)
        success = clean_ok.clone()
        index = torch.full((n,), ROBUST, dtype=torch.long, device=x.device)
        index[clean_ok] = CLEAN
        for i, atk in enumerate(self.attacks):
            todo = (~success).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            res = atk.run(model, x[todo], y[todo])
            rows = todo[res.success]
            x_adv[rows] = res.x_adv[res.success].to(x_adv.dtype)
            success[rows] = True
            index[rows] = i
        by = ["clean" if int(j) == CLEAN else (None if int(j) == ROBUST else self.names[int(j)]) for j in index]
        return AttackResult(x_adv, success, {"attack_index": index, "names": list(self.names), "succeeded_by": by})

    def _clean_success(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Which samples already reach the goal of the first attack on the clean input."""
        a = self.attacks[0]
        gms = a._grad_models(model)
        with guarded([model, *gms], a.train_mode):
            ctx = AttackContext(a, model, gms, x.detach(), y.to(x.device), None)
            return ctx.clean_success


def _auto_name(a: Attack, i: int) -> str:
    loss = type(a.loss).__name__.lower()
    return f"{i}:{a.name}-{loss}"
