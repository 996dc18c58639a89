"""Tiny trained victims and defences on the toy-blobs data, shared by the adaptive tests (module scope)."""

from __future__ import annotations

import pytest
import torch

from medsec.config import TrainConfig
from medsec.data import load_dataset
from medsec.data.base import MedicalDataset
from medsec.defences import build_network
from medsec.models.training import train_model

TINY = TrainConfig(epochs=3, batch_size=32, patience=3, augment=False, lr=3e-3)


def spec(arch: str = "resnet20", k: int = 2) -> dict:
    """A tiny network spec (CIFAR ResNet-20 at a quarter width, one block per stage)."""
    return {"factory": "build_model", "args": {"arch": arch, "in_channels": 1, "num_outputs": k,
                                               "task": "classification", "width": 0.25, "depth": 0.34,
                                               "mean": [0.5], "std": [0.25]}}


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> MedicalDataset:
    from medsec.data.synthetic import GENERATORS, register
    from tests.conftest import TOY

    register(TOY)
    d = load_dataset("toy-blobs", size=16, n_train=192, n_val=48, n_test=48, seed=0, difficulty=0.8,
                     cache_dir=str(tmp_path_factory.mktemp("cache")))
    GENERATORS.pop(TOY.info.name, None)
    return d


def trained(data: MedicalDataset, seed: int = 0) -> torch.nn.Module:
    """A tiny classifier trained for a few epochs (seeded)."""
    torch.manual_seed(seed)
    net = build_network(spec())
    train_model(net, data, TINY, seed=seed)
    return net.eval()


@pytest.fixture(scope="session")
def victim(toy_data) -> torch.nn.Module:
    return trained(toy_data)


@pytest.fixture(scope="session")
def toy_gmm(toy_data, victim):
    """A GMM defence (no SSAT) on a copy of the tiny victim, fitted on the toy data."""
    from medsec.defences import GMM

    gmm = GMM(build_network(spec()), 2, ssat_epochs=0)
    gmm.classifier.load_state_dict(victim.state_dict())
    return gmm.fit(toy_data)
