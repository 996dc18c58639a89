"""The one batched-inference helper, and where a model lives.

Every layer that runs a model (or a defence's score/detect) over many images goes through :func:`batched`,
so chunking, device moves and no-grad are written once. Callers keep their batch size: results are the same
for any batch size up to float round-off of the backend's kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from medsec.errors import MedsecError

log = logging.getLogger(__name__)
_TWO_PASSES: set[str] = set()


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256,
            device: torch.device | str | None = None, *, cpu: bool = False) -> torch.Tensor:
    """fn applied to x in chunks of `batch_size` without gradients, concatenated. device: move each chunk there
    first (None = leave it where it is); cpu: move each result to the CPU (saves device memory)."""
    outs = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        out = fn(xb if device is None else xb.to(device)).detach()
        outs.append(out.cpu() if cpu else out)
    return torch.cat(outs)


def module_device(m: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU if it has none)."""
    for p in m.parameters():
        return p.device
    for b in m.buffers():
        return b.device
    return torch.device("cpu")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedsecError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model contract for losses that read hidden features: (logits, (N, D) features). One pass through
    ``forward_features(x)`` when the model has it (medsec's networks do); else two, ``model(x)`` and
    ``features(x)`` (a user's network that only has ``features``), said once per class in the log."""
    ff = getattr(model, "forward_features", None)
    if callable(ff):
        out, feats = ff(x)
        return out, feats
    feat = getattr(model, "features", None)
    if callable(feat):
        name = type(model).__name__
        if name not in _TWO_PASSES:
            _TWO_PASSES.add(name)
            log.info("%s has features(x) but no forward_features(x): logits and features take two passes", name)
        return model(x), feat(x)
    raise MedsecError(f"the attack's loss needs features but {type(model).__name__} has neither "
                      "forward_features(x) (logits and features in one pass) nor features(x)")
