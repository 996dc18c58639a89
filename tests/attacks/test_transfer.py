"""Transfer-enhancing options (momentum, input diversity, translation invariance, logit ensemble): shapes,
the threat ball, determinism under a seed, and that success is judged on the point itself."""

from __future__ import annotations

import pytest
import torch

from medsec.attacks import PGD, GradientAttack, mean_of_signs
from medsec.attacks.transfer import (
    InputDiversity,
    LogitEnsemble,
    gaussian_kernel,
    ti_kernel_size,
    transfer_attack,
    translation_invariant,
)
from medsec.errors import MedsecError


def _in_ball(x_adv, x, eps):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float((x_adv - x).abs().max()) <= eps + 1e-6


def test_input_diversity_keeps_the_shape_and_is_seeded():
    x = torch.rand(4, 1, 16, 16)
    di = InputDiversity(p=1.0, low=0.7)
    outs = [di(x, torch.Generator().manual_seed(s)) for s in (0, 0, 1, 2, 3)]
    assert all(o.shape == x.shape for o in outs)
    assert torch.equal(outs[0], outs[1])  # same seed, same draw
    assert any(not torch.equal(outs[0], o) for o in outs[2:])  # other seeds, other sizes/offsets
    assert not torch.equal(outs[0], x)  # p = 1: always transformed (shrunk by at least one pixel and padded)
    assert torch.equal(InputDiversity(p=0.0)(x, torch.Generator().manual_seed(0)), x)
    xa = x.clone().requires_grad_(True)
    di(xa, torch.Generator().manual_seed(0)).sum().backward()
    assert xa.grad is not None and float(xa.grad.abs().sum()) > 0  # differentiable
    with pytest.raises(MedsecError):
        InputDiversity(p=1.5)
    with pytest.raises(MedsecError):
        InputDiversity(low=1.0)


def test_translation_invariance_smooths_each_gradient():
    k = gaussian_kernel(5)
    assert k.shape == (5, 5) and abs(float(k.sum()) - 1) < 1e-6 and float(k[2, 2]) == float(k.max())
    g = torch.zeros(2, 1, 9, 9)
    g[:, :, 4, 4] = 1.0
    out = translation_invariant(5)([g, g])
    assert out.shape == g.shape
    assert torch.allclose(out[0, 0, 2:7, 2:7], 2 * k)  # a point gradient becomes the kernel, summed over members
    signs = translation_invariant(3, then=mean_of_signs)([g, -g])
    assert float(signs.abs().max()) == 0  # combined by eq. 3 after smoothing
    assert ti_kernel_size(299) == 15 and ti_kernel_size(224) == 11
    assert ti_kernel_size(64) == ti_kernel_size(28) == 7  # a 3 px kernel would barely smooth
    with pytest.raises(MedsecError):
        gaussian_kernel(4)


def test_transfer_options_stay_in_the_ball_and_are_deterministic(clf):
    model, x, y = clf
    eps = 0.1

    def mi_di_ti(seed: int) -> GradientAttack:  # 8 px images: shrink to at least half the side
        return GradientAttack(eps=eps, alpha=eps / 10, steps=10, momentum=1.0, random_start=False, seed=seed,
                              input_transform=InputDiversity(p=0.7, low=0.5), grad_transform=translation_invariant(3))

    atk = mi_di_ti(5)
    a = atk(model, x, y)
    _in_ball(a, x, eps)
    assert torch.equal(a, mi_di_ti(5)(model, x, y))
    assert not torch.equal(a, mi_di_ti(6)(model, x, y))  # other DI draws
    _in_ball(transfer_attack(eps, steps=10, ti_size=3)(model, x, y), x, eps)  # the preset
    res = atk.run(model, x, y)
    with torch.no_grad():
        fooled = model(res.x_adv).argmax(1) != y
    assert torch.equal(res.success, fooled)  # judged on x_adv itself, not on its diversified copy
    assert float(fooled.float().mean()) > 0.5
    # DI works with any gradient attack of the engine, e.g. PGD with an L2 ball
    b = PGD(eps=1.0, norm="l2", steps=5, input_transform=InputDiversity(p=0.5), seed=0)(model, x, y)
    assert float((b - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    with pytest.raises(MedsecError, match="input_transform"):
        GradientAttack(eps=eps, input_transform="resize")  # type: ignore[arg-type]


def test_logit_ensemble_averages_logits(clf):
    model, x, _ = clf
    ens = LogitEnsemble([model, model])
    assert torch.allclose(ens(x), model(x), atol=1e-6)
    with pytest.raises(MedsecError):
        LogitEnsemble([])
