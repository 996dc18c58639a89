"""Attack names -> attacks, for the CLI and experiment configs (one place that maps a name and the
common settings — eps, steps, alpha, norm, restarts — to a configured attack)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medsec.attacks.apgd import APGD
from medsec.attacks.cascade import Cascade
from medsec.attacks.core import Attack
from medsec.attacks.cw import CW
from medsec.attacks.deepfool import DeepFool
from medsec.attacks.engine import BIM, FGSM, MIM, PGD, CWLinf
from medsec.errors import MedsecError

Factory = Callable[..., Attack]


def _iterative(cls: type) -> Factory:
    def make(eps: float, steps: int | None = None, alpha: float | None = None, norm: str = "linf",
             restarts: int = 1, **kw: Any) -> Attack:
        return cls(eps=eps, alpha=alpha, steps=steps or 10, norm=norm, restarts=restarts, **kw)
    return make


def _fgsm(eps: float, steps: int | None = None, alpha: float | None = None, norm: str = "linf",
          restarts: int = 1, **kw: Any) -> Attack:
    return FGSM(eps=eps, alpha=alpha, norm=norm, **kw)


def _apgd(loss: str) -> Factory:
    def make(eps: float, steps: int | None = None, alpha: float | None = None, norm: str = "linf",
             restarts: int = 1, **kw: Any) -> Attack:
        return APGD(eps=eps, steps=steps or 100, norm=norm, restarts=restarts, loss=loss, **kw)
    return make


def _cw(eps: float, steps: int | None = None, alpha: float | None = None, norm: str = "l2",
        restarts: int = 1, **kw: Any) -> Attack:
    if norm != "l2":
        raise MedsecError("cw is the L2 attack; use cw-linf for the L_inf margin attack")
    return CW(eps=eps, steps=steps or 100, **kw)


def _cw_linf(eps: float, steps: int | None = None, alpha: float | None = None, norm: str = "linf",
             restarts: int = 1, **kw: Any) -> Attack:
    return CWLinf(eps=eps, alpha=alpha, steps=steps or 30, norm=norm, restarts=restarts, **kw)


def _deepfool(eps: float, steps: int | None = None, alpha: float | None = None, norm: str = "l2",
              restarts: int = 1, **kw: Any) -> Attack:
    return DeepFool(eps=eps, steps=steps or 50, norm=norm, **kw)


def _cascade(eps: float, steps: int | None = None, alpha: float | None = None, norm: str = "linf",
             restarts: int = 1, num_classes: int | None = None, **kw: Any) -> Attack:
    return Cascade.standard(eps, norm=norm, num_classes=num_classes, steps=steps or 100, restarts=restarts, **kw)


ATTACKS: dict[str, Factory] = {
    "fgsm": _fgsm,
    "bim": _iterative(BIM),
    "pgd": _iterative(PGD),
    "mim": _iterative(MIM),
    "cw": _cw,
    "cw-linf": _cw_linf,
    "apgd-ce": _apgd("ce"),
    "apgd-dlr": _apgd("dlr"),
    "deepfool": _deepfool,
    "cascade": _cascade,
}
DEFAULT_NORM = {"cw": "l2", "deepfool": "l2"}


def register_attack(name: str, factory: Factory) -> None:
    """Make `name` available to build_attack (and the CLI)."""
    ATTACKS[name.lower()] = factory


def build_attack(name: str, eps: float, *, steps: int | None = None, alpha: float | None = None,
                 norm: str | None = None, restarts: int = 1, **kw: Any) -> Attack:
    """The attack called `name` with the common settings (None = that attack's default)."""
    key = name.lower()
    if key not in ATTACKS:
        raise MedsecError(f"unknown attack {name!r}; available: {', '.join(sorted(ATTACKS))}")
    if key != "cascade":
        kw.pop("num_classes", None)
    return ATTACKS[key](eps, steps=steps, alpha=alpha, norm=norm or DEFAULT_NORM.get(key, "linf"),
                        restarts=restarts, **kw)
