"""Embedded synthetic medical datasets: procedural phantoms, one module per modality.

Each generator is deterministic given its numpy Generator; the registry derives one Generator per
split from the experiment seed, so the same seed always gives the same images.
Everything produced here is synthetic and is labelled so in every report (DatasetInfo.synthetic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medsec.data.base import DatasetInfo, Split

# generate(n, size, rng, difficulty) -> Split with uint8 pixels (n, C, size, size).
# difficulty in [0, 1]: 0 = easy (large, bright findings), 1 = hard (faint, small, noisy).
GenerateFn = Callable[[int, int, np.random.Generator, float], Split]


@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic dataset: what it is, how to draw it, and its default difficulty."""

    info: DatasetInfo
    generate: GenerateFn
    default_difficulty: float = 0.5


GENERATORS: dict[str, SyntheticSpec] = {}


def register(spec: SyntheticSpec) -> SyntheticSpec:
    """Add a synthetic dataset to GENERATORS under its info.name."""
    GENERATORS[spec.info.name] = spec
    return spec
