"""The ensemble trains as its recipe says: static (Paul et al.) or on-the-fly adversarial training, members that
differ only in their initialisation, probabilities averaged."""

from __future__ import annotations

import pytest
import torch

import medsec.models.training as training
from medsec.attacks import FGSM
from medsec.config import TrainConfig, load_config
from medsec.data import load_dataset
from medsec.defences import Ensemble, build_network, load_defence
from medsec.defences.ensemble import craft_adversarial_training_set
from medsec.errors import MedsecError

TINY = TrainConfig(epochs=1, batch_size=32, patience=1, augment=False)
EPS = 0.03


def _spec() -> dict:
    return {"factory": "build_model", "args": {"arch": "resnet20", "in_channels": 1, "num_outputs": 2,
                                               "task": "classification", "width": 0.25, "depth": 0.34,
                                               "mean": [0.5], "std": [0.25]}}


@pytest.fixture
def toy(cache_dir):
    return load_dataset("toy-blobs", size=16, n_train=64, n_val=32, n_test=32, seed=0)


@pytest.fixture
def crafter(toy):
    torch.manual_seed(7)
    net = build_network(_spec())
    training.train_model(net, toy, TINY, seed=7)
    return net.eval()


@pytest.fixture
def member_calls(monkeypatch):
    """Every call of the trainer: the member's weights before training and what it was given."""
    calls: list[dict] = []
    real = training.train_model

    def spy(model, data, cfg, **kw):
        calls.append({"initial": {k: v.clone() for k, v in model.state_dict().items()}, "cfg": cfg, **kw})
        return real(model, data, cfg, **kw)

    monkeypatch.setattr(training, "train_model", spy)
    return calls


def _members(calls: list[dict]) -> list[dict]:
    return [c for c in calls if c["description"].startswith("ensemble member")]


def test_static_recipe_adds_fgsm_images_crafted_beforehand_by_the_victim(toy, crafter, member_calls):
    x, y = toy.train.images(), toy.train.target_tensor()
    expected_adv = FGSM(eps=EPS, seed=None)(crafter.eval(), x, y)
    crafter_before = {k: v.clone() for k, v in crafter.state_dict().items()}
    crafter.train()  # whatever mode the victim is in, it is left in it
    ens = Ensemble.build([_spec()] * 2, adv_eps=EPS, crafter=crafter).fit(toy, TINY, seed=3)

    members = _members(member_calls)
    assert len(members) == 2 and len(member_calls) == 2  # the victim crafts: no extra network is trained
    for call in members:
        xt, yt = call["train_set"]
        assert call["extra_loss"] is None  # nothing is crafted while the members train
        assert xt.shape[0] == 2 * len(x)  # the originals plus one adversarial copy of each
        torch.testing.assert_close(xt[:len(x)], x)
        adv = xt[len(x):]
        torch.testing.assert_close(adv, expected_adv)  # made by the victim, with the stated eps
        assert (adv - x).abs().max() <= EPS + 1e-6
        assert ((adv - x).abs() > EPS - 1e-6).float().mean() > 0.5  # FGSM moves (almost) every pixel by eps
        assert torch.equal(yt, torch.cat([y, y]))
    assert all(torch.equal(v, crafter.state_dict()[k]) for k, v in crafter_before.items())
    assert crafter.training  # the victim is left as it was
    assert ens.adversarial_training == "static" and ens.fitted


def test_static_recipe_without_a_victim_trains_a_plain_crafter_first(toy, member_calls):
    Ensemble.build([_spec()] * 2, adv_eps=EPS, adv_source="plain").fit(toy, TINY, seed=0)
    descriptions = [c["description"] for c in member_calls]
    assert descriptions[0].startswith("ensemble: plain network")  # crafted before any member trains
    assert member_calls[0].get("train_set") is None and member_calls[0].get("extra_loss") is None
    assert all(d.startswith("ensemble member") for d in descriptions[1:]) and len(descriptions) == 3
    assert all(c["train_set"][0].shape[0] == 2 * len(toy.train) for c in member_calls[1:])


def test_on_the_fly_recipe_crafts_per_batch_against_the_member(toy, member_calls):
    ens = Ensemble.build([_spec()] * 2, adv_eps=EPS, adversarial_training="on_the_fly").fit(toy, TINY)
    for call in _members(member_calls):
        assert call["train_set"] is None  # the clean training set only
        loss = call["extra_loss"]
        assert loss is not None
    # the extra loss attacks whatever model it is given, batch by batch: CE on FGSM(model, x) of that batch
    m = ens.members[0]
    x, y = toy.train.images()[:16], toy.train.target_tensor()[:16]
    x_adv = FGSM(eps=EPS, train_mode="eval", seed=None)(m, x, y)
    expected = torch.nn.functional.cross_entropy(m(x_adv), y)
    torch.testing.assert_close(_members(member_calls)[0]["extra_loss"](m, x, y), expected)


def test_members_differ_only_in_initialisation(toy, crafter, member_calls):
    Ensemble.build([_spec()] * 3, adv_eps=EPS, crafter=crafter).fit(toy, TINY, seed=5)
    members = _members(member_calls)
    assert {c["seed"] for c in members} == {5}  # one training seed: same order, same augmentation draws
    first = members[0]["train_set"]
    for c in members[1:]:
        assert all(torch.equal(a, b) for a, b in zip(c["train_set"], first, strict=True))
    inits = [c["initial"] for c in members]
    for i, init in enumerate(inits):  # member i starts from the weights its architecture draws from seed + i
        torch.manual_seed(5 + i)
        ref = build_network(_spec()).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in init.items())
    w = next(k for k, v in inits[0].items() if v.ndim == 4 and v.numel() > 1)  # the first conv kernel
    assert not torch.equal(inits[0][w], inits[1][w]) and not torch.equal(inits[1][w], inits[2][w])


def test_static_members_take_the_optimiser_steps_of_the_budget_on_the_original_images(toy, crafter, member_calls):
    budget = TINY.model_copy(update={"epochs": 3})
    Ensemble.build([_spec()] * 2, adv_eps=EPS, crafter=crafter).fit(toy, budget)
    assert [c["cfg"].epochs for c in _members(member_calls)] == [2, 2]  # ceil(3 * 64 / 128) over the doubled set
    Ensemble.build([_spec()] * 2, adv_eps=EPS, adversarial_training="on_the_fly").fit(toy, budget)
    assert [c["cfg"].epochs for c in _members(member_calls)[2:]] == [3, 3]


def test_members_train_deterministically_from_their_seed(toy, crafter):
    a = Ensemble.build([_spec()] * 2, adv_eps=EPS, crafter=crafter).fit(toy, TINY, seed=1)
    b = Ensemble.build([_spec()] * 2, adv_eps=EPS, crafter=crafter).fit(toy, TINY, seed=1)
    for ma, mb in zip(a.members, b.members, strict=True):
        assert all(torch.equal(v, mb.state_dict()[k]) for k, v in ma.state_dict().items())


def test_probabilities_are_averaged_and_recipe_survives_save(toy, crafter, tmp_path):
    ens = Ensemble.build([_spec()] * 2, adv_eps=EPS, crafter=crafter).fit(toy, TINY)
    x = toy.test.images()
    probs = torch.stack([torch.softmax(m(x), 1) for m in ens.members]).mean(0)
    torch.testing.assert_close(ens.predict(x).exp(), probs, rtol=1e-5, atol=1e-6)
    ens.save(tmp_path / "e.pt")
    loaded = load_defence(tmp_path / "e.pt")
    assert (loaded.adversarial_training, loaded.adv_eps, loaded.adv_source) == ("static", EPS, "victim")
    assert loaded.crafter is None  # the crafter is not part of the defence
    torch.testing.assert_close(loaded.predict(x), ens.predict(x))


def test_crafted_set_keeps_pixels_in_range():
    net = build_network(_spec()).eval()
    x = torch.rand(10, 1, 16, 16)
    x[0] = 0.0
    x[1] = 1.0
    xt, yt = craft_adversarial_training_set(net, x, torch.zeros(10, dtype=torch.long), 0.05)
    assert xt.shape == (20, 1, 16, 16) and yt.shape == (20,)
    assert xt.min() >= 0 and xt.max() <= 1


def test_bad_recipe_settings_are_errors():
    with pytest.raises(MedsecError, match="adversarial_training"):
        Ensemble.build([_spec()], adversarial_training="sometimes")
    with pytest.raises(MedsecError, match="adv_source"):
        Ensemble.build([_spec()], adv_source="oracle")
    with pytest.raises(MedsecError, match="adv_eps"):
        Ensemble.build([_spec()], adv_eps=2.0)


def test_config_defaults_are_the_papers_recipe():
    e = load_config("quick").defences.ensemble
    assert (e.adversarial_training, e.adv_source, e.members) == ("static", "victim", 3)
    assert load_config("quick", {"defences": {"ensemble": {"adversarial_training": "on_the_fly"}}})
