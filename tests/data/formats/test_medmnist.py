"""MedMNIST .npz reader: file choice by size, resizing, tasks, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medsec.data import load_dataset
from medsec.data.formats.medmnist import MEDMNIST, choose_file
from medsec.errors import DataError
from tests.data.fixtures_real import make_medmnist
from tests.data.formats.helpers import assert_interface


def test_medmnist_official_splits_and_tasks(tmp_path):
    fx = make_medmnist(tmp_path)
    ds = load_dataset("pneumoniamnist", data_root=tmp_path, size=64)
    assert_interface(ds, 64, 1)
    with np.load(fx.root / "pneumoniamnist_64.npz") as z:  # exact size: read unchanged
        np.testing.assert_array_equal(ds.test.pixels[:, 0], z["test_images"])
        np.testing.assert_array_equal(ds.train.targets, z["train_labels"][:, 0])
    assert ds.info.class_names == ("normal", "pneumonia")
    chest = load_dataset("chestmnist", data_root=tmp_path, size=28)
    assert chest.info.task == "multilabel" and chest.train.targets.shape == (12, 14)
    assert chest.train.targets.dtype == np.float32
    derma = load_dataset("dermamnist", data_root=tmp_path, size=32)
    assert_interface(derma, 32, 3)
    assert derma.info.num_outputs == 7 and derma.info.channels == 3


def test_medmnist_file_choice(tmp_path):
    make_medmnist(tmp_path, names=("pneumoniamnist",), sizes=(28, 64, 128))
    root = tmp_path / "medmnist"
    assert choose_file(tmp_path, "pneumoniamnist", 28).name == "pneumoniamnist.npz"
    assert choose_file(tmp_path, "pneumoniamnist", 32).name == "pneumoniamnist_64.npz"
    assert choose_file(root, "pneumoniamnist", 224).name == "pneumoniamnist_128.npz"


def test_medmnist_errors(tmp_path):
    with pytest.raises(DataError, match=r"no pathmnist\.npz"):
        load_dataset("pathmnist", data_root=tmp_path, size=28)
    np.savez(tmp_path / "octmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.zeros((2, 1)))
    with pytest.raises(DataError, match=r"octmnist\.npz has no key val_images"):
        load_dataset("octmnist", data_root=tmp_path, size=28)
    assert "organamnist" in MEDMNIST and len(MEDMNIST["organamnist"][1]) == 11
