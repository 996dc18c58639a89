"""Defences of medical-imaging classifiers and segmenters, behind one protocol (see base.py).

MGM, ISO, OCSVM (feature-space detectors), GMM (SSAT + per-class Gaussians), Ensemble (adversarially
trained members), Denoiser (embedded denoising auto-encoder), RBF (kernelized manifold mapping).
"""

from medsec.defences.base import (
    REGISTRY,
    ClassifierDetector,
    Defence,
    Detector,
    NotFittedError,
    TrainedNetworkDefence,
    adversarial_risk,
    defended_accuracy,
    handled,
    load_defence,
)
from medsec.defences.denoiser import Denoiser, DenoisingAutoEncoder, DenoisingClassifier
from medsec.defences.detectors import DETECTORS, ISO, MGM, OCSVM, FeatureDetector
from medsec.defences.ensemble import Ensemble, fgsm_training_loss
from medsec.defences.gaussian import Gaussian
from medsec.defences.gmm import GMM
from medsec.defences.nets import attach_spec, build_network, network_spec, spec_from_meta
from medsec.defences.rbf import RBF, KernelizedManifoldMapping, build_rbf_model

__all__ = [
    "DETECTORS", "GMM", "ISO", "MGM", "OCSVM", "RBF", "REGISTRY", "Defence", "DenoisingAutoEncoder",
    "ClassifierDetector", "DenoisingClassifier", "Denoiser", "Detector", "Ensemble", "FeatureDetector", "Gaussian",
    "KernelizedManifoldMapping", "NotFittedError", "TrainedNetworkDefence", "adversarial_risk", "attach_spec",
    "build_network", "build_rbf_model", "defended_accuracy", "fgsm_training_loss", "handled", "load_defence",
    "network_spec", "spec_from_meta",
]
