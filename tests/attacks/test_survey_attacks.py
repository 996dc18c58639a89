"""Survey attacks on a tiny victim: one-pixel, patch, universal perturbation, BadNets, feature collision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsec.attacks.onepixel import OnePixel
from medsec.attacks.patch import AdversarialPatch, patch_side
from medsec.attacks.poisoning import BadNets, FeatureCollision, retrain, retrain_head
from medsec.attacks.universal import UniversalPerturbation
from medsec.config import load_config
from medsec.errors import MedsecError
from medsec.metrics import accuracy
from medsec.models.training import predict
from medsec.models.victims import get_victim


@pytest.fixture(scope="module")
def _victim_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("survey-cache")


@pytest.fixture
def victim(_victim_cache):
    """A tiny ResNet-20 on the toy-blobs dataset (registered by the root conftest for every test);
    trained by the first test that asks, then read from the module's cache."""
    cfg = load_config("quick", {
        "cache_dir": str(_victim_cache),
        "data": {"image_size": 24, "n_train": 300, "n_val": 60, "n_test": 80},
        "train": {"epochs": 6, "batch_size": 32, "patience": 6, "lr": 0.003},
        "victims": {"toy-blobs": {"arch": "resnet20", "width": 0.5, "depth": 0.34}}})
    return cfg, get_victim(cfg, "toy-blobs")


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(model, before):
    return all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_onepixel_changes_at_most_k_pixels_and_fools_some(victim):
    _, v = victim
    x, y = v.data.test.images()[:24], v.data.test.target_tensor()[:24]
    before = _params(v.model)
    for k in (1, 3):
        res = OnePixel(pixels=k, popsize=20, iterations=5, seed=1).run(v.model, x, y)
        x_adv, ok = res.x_adv, res.success
        changed = (x_adv != x).any(1).flatten(1).sum(1)  # pixels (all channels) changed per image
        assert int(changed.max()) <= k
        assert x_adv.shape == x.shape and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        pred = predict(v.model, x_adv).argmax(1)
        assert torch.equal(ok, pred != y)
    assert _same(v.model, before) and not v.model.training
    with pytest.raises(MedsecError, match="pixels"):
        OnePixel(pixels=0)


def test_onepixel_more_pixels_fool_more(victim):
    _, v = victim
    x, y = v.data.test.images()[:24], v.data.test.target_tensor()[:24]
    rates = [float(OnePixel(pixels=k, popsize=16, iterations=4, seed=0).run(v.model, x, y).success.float().mean())
             for k in (1, 40)]
    assert rates[1] >= rates[0]


def test_patch_stays_inside_its_mask_and_fools(victim):
    _, v = victim
    xtr, ytr = v.data.train.images()[:200], v.data.train.target_tensor()[:200]
    x, y = v.data.test.images()[:40], v.data.test.target_tensor()[:40]
    before = _params(v.model)
    patch = AdversarialPatch(size=0.15, steps=60, lr=0.1, seed=0).fit(v.model, xtr, ytr)
    assert _same(v.model, before)
    x_adv, mask = patch.apply(x)
    side = patch.patch.shape[-1]
    assert side == patch_side(0.15, 24, 24)
    assert torch.equal(x_adv[~mask.expand_as(x)], x[~mask.expand_as(x)])  # outside: untouched
    assert int(mask[0].sum()) == side * side and bool((mask.flatten(1).sum(1) == side * side).all())
    inside = x_adv[mask.expand_as(x)].view(len(x), -1)
    assert torch.allclose(inside, patch.patch.flatten().repeat(len(x), 1))
    clean_acc = accuracy(predict(v.model, x), y)
    adv_acc = accuracy(predict(v.model, x_adv), y)
    assert adv_acc < clean_acc - 0.1
    # call shape: fitted patch, random positions
    assert patch(v.model, x, y).shape == x.shape


def test_patch_larger_than_image_is_an_error(victim):
    _, v = victim
    x, y = v.data.test.images()[:4], v.data.test.target_tensor()[:4]
    with pytest.raises(MedsecError, match="larger than the 24x24 image"):
        AdversarialPatch(size=30, steps=1).fit(v.model, x, y)
    with pytest.raises(MedsecError, match="larger than"):
        patch_side(25, 24, 24)
    with pytest.raises(MedsecError, match="fit the patch first"):
        AdversarialPatch(size=0.1).apply(x)


def test_uap_is_one_tensor_within_eps_and_fools_unseen_images(victim):
    _, v = victim
    xtr, ytr = v.data.train.images()[:200], v.data.train.target_tensor()[:200]
    x = v.data.test.images()
    uap = UniversalPerturbation(eps=0.1, epochs=5, seed=0).fit(v.model, xtr, ytr)
    d = uap.perturbation
    assert d.shape == x.shape[1:] and float(d.abs().max()) <= 0.1 + 1e-7
    x_adv = uap(v.model, x, v.data.test.target_tensor())
    assert torch.allclose(x_adv, (x + d).clamp(0, 1))
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert uap.fooling_rate(v.model, x) > 0.2  # on test images it never saw
    with pytest.raises(MedsecError, match="eps"):
        UniversalPerturbation(eps=0)


def test_badnets_keeps_clean_accuracy_and_trigger_works(victim):
    cfg, v = victim
    attack = BadNets(rate=0.05, target_class=0, trigger_size=0.25, seed=0)
    poisoned = attack.poison(v.data)
    assert poisoned.n_poisons == round(0.05 * len(v.data.train))
    assert (poisoned.dataset.train.targets[poisoned.indices] == 0).all()
    assert np.array_equal(v.data.train.pixels[0], v.data.train.pixels[0])  # the original is not modified
    x, y = v.data.test.images(), v.data.test.target_tensor()
    model = retrain(v.meta, poisoned.dataset, cfg.train, seed=cfg.seed)
    clean = accuracy(predict(v.model, x), y)
    poisoned_acc = accuracy(predict(model, x), y)
    assert poisoned_acc >= clean - 0.05  # 80 test images: one image is 1.25 points
    assert attack.success_rate(model, x, y) >= 0.9
    assert attack.success_rate(v.model, x, y) < 0.5  # the unpoisoned model ignores the trigger
    stamped = attack(v.model, x, y)
    _, mask = attack.trigger_mask(1, 24, 24)
    assert torch.equal(stamped[:, :, ~mask[0]], x[:, :, ~mask[0]])


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_badnets_rejects_bad_rates(rate):
    with pytest.raises(MedsecError, match=r"poisoning rate must be in \[0, 1\]"):
        BadNets(rate=rate)


def test_feature_collision_collides_features_with_clean_labels(victim):
    _, v = victim
    data = v.data
    fc = FeatureCollision(n_poisons=3, steps=100, lr=0.02, eps=0.15, seed=0)
    t = int(np.flatnonzero(data.test.targets == 0)[0])
    poisoned = fc.poison(v.model, data, t, 1)
    assert poisoned.n_poisons == 3 and len(poisoned.dataset.train) == len(data.train) + 3
    assert (poisoned.dataset.train.targets[poisoned.indices] == 1).all()  # clean labels: the bases' own class
    assert poisoned.info["linf_from_base"] <= 0.15 + 1e-6
    with torch.no_grad():
        ft = v.model.features(data.test.images(np.array([t])))
        fb = v.model.features(data.train.images(np.array(poisoned.info["base_indices"])))
    base_dist = (fb - ft).norm(dim=1)
    assert max(poisoned.info["feature_distance"]) < 0.5 * float(base_dist.min())
    assert np.mean(poisoned.info["feature_distance"]) < 0.25 * float(base_dist.mean())
    assert np.array_equal(poisoned.dataset.train.pixels[: len(data.train)], data.train.pixels)
    model = retrain_head(v.model, poisoned.dataset, epochs=20)
    assert model is not v.model and torch.equal(model.features(data.test.images()[:4]),
                                                v.model.features(data.test.images()[:4]))
    with pytest.raises(MedsecError, match="own class"):
        fc.poison(v.model, data, t, 0)
