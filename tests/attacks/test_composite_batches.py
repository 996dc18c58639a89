"""Composite attacks (the adaptive recipes, BestOf, ...) honour batch_size: the model never sees more than
that many images at once, so a full-profile row (1000 images at 224 px) fits a GPU, and the result keeps
the attack contract (shape, [0, 1], the eps ball)."""

from __future__ import annotations

import torch

from medsec.attacks.adaptive.recipes import RBFRecipe
from medsec.models.networks import build_model


def test_recipe_attacks_in_chunks_of_batch_size():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, num_outputs=3, task="classification", width=0.25,
                        depth=0.34).eval()
    seen: list[int] = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    x, y = torch.rand(5, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1])
    res = RBFRecipe(0.03, steps=2, restarts=1, seed=0, batch_size=2).run(model, x, y)
    assert seen and max(seen) <= 2
    assert res.x_adv.shape == x.shape and res.success.shape == (5,)
    assert float((res.x_adv - x).abs().max()) <= 0.03 + 1e-6 and 0 <= float(res.x_adv.min()) <= float(res.x_adv.max()) <= 1
    seen.clear()
    RBFRecipe(0.03, steps=2, restarts=1, seed=0).run(model, x, y)
    assert max(seen) == 5  # without batch_size: all at once, as before
