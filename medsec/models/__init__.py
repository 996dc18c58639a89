"""Victim networks, their training and their checkpoints."""

from medsec.models.checkpoint import load_checkpoint, save_checkpoint
from medsec.models.networks import ARCHS, Classifier, Segmenter, build_model, describe
from medsec.models.training import predict, train_model

__all__ = ["ARCHS", "Classifier", "Segmenter", "build_model", "describe", "load_checkpoint", "predict",
           "save_checkpoint", "train_model"]
