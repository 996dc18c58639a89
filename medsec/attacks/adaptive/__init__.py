"""Adaptive (defence-aware) attacks: Levy et al.'s five strategies as pieces, and one recipe per defence.

See docs/adaptive.md. ``recipe_for(defence, eps)(defence, x, y) -> x_adv``.
"""

from medsec.attacks.adaptive.orthogonal import OrthogonalPGD, SelectivePGD, evasion_quality
from medsec.attacks.adaptive.recipes import (
    DenoiserRecipe,
    DetectorRecipe,
    EnsembleRecipe,
    GMMRecipe,
    MGMRecipe,
    RBFRecipe,
    Recipe,
    recipe_for,
    task_of,
)
from medsec.attacks.adaptive.strategies import (
    BPDA,
    BestOf,
    SurrogateTransfer,
    accepted_by,
    bpda,
    class_mean_term,
    detector_term,
    feature_distance_term,
    gaussian_scale,
    patient_attacks,
    quality,
    ramp,
    sign_average,
)
from medsec.defences.base import exposed, is_detector, rejected

__all__ = [
    "BPDA", "BestOf", "DenoiserRecipe", "DetectorRecipe", "EnsembleRecipe", "GMMRecipe", "MGMRecipe",
    "OrthogonalPGD", "RBFRecipe", "Recipe", "SelectivePGD", "SurrogateTransfer", "accepted_by", "bpda",
    "class_mean_term", "detector_term", "evasion_quality", "exposed", "feature_distance_term", "gaussian_scale",
    "is_detector", "patient_attacks", "quality", "ramp", "recipe_for",
    "rejected", "sign_average", "task_of",
]
