"""Adversarial attacks: one gradient engine, composable losses, and the standard attacks.

Every attack follows DESIGN.md's call shape: ``PGD(eps=8/255, alpha=2/255, steps=10)(model, x, y) -> x_adv``
with x in [0, 1]; ``attack.run(model, x, y)`` also returns per-sample success. See docs/attacks.md.
"""

from medsec.attacks.apgd import APGD
from medsec.attacks.cascade import Cascade
from medsec.attacks.core import Attack, AttackContext, AttackResult, Speed, Tracker, project
from medsec.attacks.cw import CW
from medsec.attacks.deepfool import DeepFool
from medsec.attacks.engine import BIM, FGSM, MIM, PGD, CWLinf, GradientAttack, mean_of_signs
from medsec.attacks.losses import (
    BCE,
    DLR,
    CrossEntropy,
    Dice,
    ExtraTerm,
    Loss,
    LossInput,
    Margin,
    Selective,
    Sum,
    Weighted,
)
from medsec.attacks.onepixel import OnePixel
from medsec.attacks.patch import AdversarialPatch
from medsec.attacks.poisoning import BadNets, FeatureCollision
from medsec.attacks.registry import ATTACKS, build_attack, register_attack
from medsec.attacks.transfer import InputDiversity, LogitEnsemble, transfer_attack, translation_invariant
from medsec.attacks.universal import UniversalPerturbation

__all__ = [
    # attacks
    "APGD", "BIM", "CW", "Cascade", "CWLinf", "DeepFool", "FGSM", "GradientAttack", "MIM", "PGD",
    # the survey's attacks
    "AdversarialPatch", "BadNets", "FeatureCollision", "OnePixel", "UniversalPerturbation",
    # losses
    "BCE", "DLR", "CrossEntropy", "Dice", "ExtraTerm", "Loss", "LossInput", "Margin", "Selective", "Sum", "Weighted",
    # engine pieces and helpers
    "ATTACKS", "Attack", "AttackContext", "AttackResult", "Speed", "Tracker", "build_attack", "mean_of_signs",
    "project", "register_attack",
    # transfer-enhancing techniques (limited knowledge)
    "InputDiversity", "LogitEnsemble", "transfer_attack", "translation_invariant",
]
