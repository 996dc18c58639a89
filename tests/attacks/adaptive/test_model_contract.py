"""One model contract: a user's own CNN with features(x) (no forward_features) serves a defence and the
attacks on it alike."""

from __future__ import annotations

import logging

import torch
from torch import nn

from medsec.attacks.adaptive import MGMRecipe, recipe_for
from medsec.defences import MGM
from medsec.models.training import train_model
from tests.attacks.adaptive.conftest import TINY


class Net(nn.Module):
    """What a user brings: logits from forward, hidden features from features(x), nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                  nn.Linear(128, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_users_cnn_with_features_works_for_defence_and_attack(toy_data, caplog):
    torch.manual_seed(0)
    net = Net()
    train_model(net, toy_data, TINY, seed=0)
    net.zero_grad(set_to_none=True)
    mgm = MGM(net.eval()).fit(toy_data)
    x, y = toy_data.test.images()[:16], toy_data.test.target_tensor()[:16]
    recipe = recipe_for(mgm, 0.1, steps=4, restarts=1)
    assert isinstance(recipe, MGMRecipe)
    with caplog.at_level(logging.INFO, logger="medsec.models.inference"):
        res = recipe.run(mgm, x, y)
    assert res.x_adv.shape == x.shape and float((res.x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert sum("two passes" in r.getMessage() for r in caplog.records) <= 1  # said once, not per step
    assert not net.training and all(p.grad is None for p in net.parameters())  # the model is left as it was
