"""Networks rebuilt from JSON specs, so saved defences need no pickled code.

A spec is ``{"factory": name, "args": {...}}``. ``build_network`` builds it and records the spec on the
module (``medsec_spec``); ``network_spec`` reads it back. Victims trained by the foundation carry their
build arguments in the checkpoint metadata: ``spec_from_meta`` turns those into a spec.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from medsec.errors import MedsecError
from medsec.models.checkpoint import BUILD_KEYS
from medsec.models.networks import build_model

FACTORIES: dict[str, Callable[..., nn.Module]] = {"build_model": build_model}


def register_factory(name: str, fn: Callable[..., nn.Module]) -> None:
    """Make `fn(**args)` available to specs under `name`."""
    FACTORIES[name] = fn


def build_network(spec: dict[str, Any]) -> nn.Module:
    """Build the network a spec describes and remember the spec on it."""
    factory = spec.get("factory")
    if factory not in FACTORIES:
        raise MedsecError(f"unknown network factory {factory!r}; known: {', '.join(FACTORIES)}")
    net = FACTORIES[factory](**spec.get("args", {}))
    net.medsec_spec = copy.deepcopy(spec)  # type: ignore[assignment]
    return net


def spec_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The spec of a foundation victim from its checkpoint metadata (the build_model arguments)."""
    missing = [k for k in BUILD_KEYS if k not in meta]
    if missing:
        raise MedsecError(f"victim metadata lacks {', '.join(missing)}: cannot record how to rebuild it")
    return {"factory": "build_model", "args": {k: meta[k] for k in BUILD_KEYS}}


def network_spec(net: nn.Module) -> dict[str, Any]:
    """The spec recorded on a network built by `build_network` (or given with `attach_spec`)."""
    spec = getattr(net, "medsec_spec", None)
    if not isinstance(spec, dict):
        raise MedsecError(f"{type(net).__name__} carries no build spec: build it with medsec.defences.nets."
                          "build_network, or use Defence.from_victim / attach_spec(net, spec)")
    return copy.deepcopy(spec)


def attach_spec(net: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Record how `net` was built (e.g. a victim loaded from a checkpoint); returns net."""
    net.medsec_spec = copy.deepcopy(spec)  # type: ignore[assignment]
    return net
