import numpy as np
import pytest
import torch

from medsec.config import load_config
from medsec.data import load_dataset
from medsec.errors import DataError, MedsecError
from medsec.models import ARCHS, build_model, load_checkpoint, save_checkpoint
from medsec.models.networks import CLASSIFIER_ARCHS
from medsec.models.victims import get_victim


def tiny_cfg(cache_dir, **train):
    return load_config("quick", {
        "cache_dir": str(cache_dir), "data": {"image_size": 24, "n_train": 120, "n_val": 40, "n_test": 60},
        "train": {"epochs": 4, "batch_size": 32, "patience": 4, **train},
        "victims": {"toy-blobs": {"arch": "resnet20", "width": 0.5, "depth": 0.34}}})


@pytest.mark.parametrize("arch", CLASSIFIER_ARCHS)
def test_classifiers_expose_features(arch):
    m = build_model(arch, in_channels=1, num_outputs=3, task="classification", width=0.125, depth=0.25).eval()
    x = torch.rand(2, 1, 32, 32)
    logits, feats = m.forward_features(x)
    assert logits.shape == (2, 3) and feats.shape == (2, m.feature_dim)
    assert torch.allclose(m(x), logits) and torch.allclose(m.head(m.features(x)), logits)


def test_unet_segments_and_arch_errors():
    m = build_model("unet", in_channels=3, num_outputs=2, task="segmentation", width=0.125, depth=0.6)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    with pytest.raises(MedsecError, match="unknown architecture 'vgg'"):
        build_model("vgg", in_channels=1, num_outputs=2, task="classification")
    with pytest.raises(MedsecError, match="segmentation"):
        build_model("resnet18", in_channels=1, num_outputs=2, task="segmentation")
    assert "unet" in ARCHS


def test_victim_beats_chance_and_is_cached(cache_dir):
    cfg = tiny_cfg(cache_dir)
    v = get_victim(cfg, "toy-blobs")
    assert not v.from_cache
    assert v.meta["test"]["accuracy"] > 0.75  # chance is ~0.5
    again = get_victim(cfg, "toy-blobs")
    assert again.from_cache and again.meta == v.meta
    x = v.data.test.images()[:8]
    assert torch.allclose(v.model(x), again.model(x))


def test_corrupted_checkpoint_is_retrained(cache_dir):
    cfg = tiny_cfg(cache_dir, epochs=1)
    v = get_victim(cfg, "toy-blobs")
    v.checkpoint.write_bytes(b"not a checkpoint")
    again = get_victim(cfg, "toy-blobs")
    assert not again.from_cache and again.checkpoint.stat().st_size > 1000


def test_corrupted_dataset_cache_is_regenerated(cache_dir):
    a = load_dataset("toy-blobs", size=16, n_train=10, n_val=4, n_test=4, seed=3)
    files = list((cache_dir / "data").glob("toy-blobs-*.npz"))
    assert len(files) == 1
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    b = load_dataset("toy-blobs", size=16, n_train=10, n_val=4, n_test=4, seed=3)
    assert np.array_equal(a.train.pixels, b.train.pixels)


def test_unknown_dataset_and_checkpoint_errors(cache_dir, tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'chest99'"):
        load_dataset("chest99")
    with pytest.raises(MedsecError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    m = build_model("resnet20", in_channels=1, num_outputs=2, task="classification", width=0.25)
    with pytest.raises(MedsecError, match="lacks"):
        save_checkpoint(m, tmp_path / "m.pt", {"arch": "resnet20"})


def test_same_seed_same_victim(tmp_path):
    import torch

    a = get_victim(tiny_cfg(tmp_path / "a", epochs=1), "toy-blobs")
    torch.rand(100)  # global RNG state differs between the two trainings
    b = get_victim(tiny_cfg(tmp_path / "b", epochs=1), "toy-blobs")
    for (ka, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
