"""The engine's extension points: extra loss terms with features, schedules, gradient hooks, separate
gradient/success models, custom success, and the cascade's per-sample record."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from medsec.attacks import (
    FGSM,
    PGD,
    Cascade,
    CrossEntropy,
    ExtraTerm,
    LossInput,
    Margin,
    Selective,
    Weighted,
    mean_of_signs,
)
from medsec.attacks.cascade import CLEAN, ROBUST


def test_extra_term_gets_features_without_a_second_forward(clf):
    model, x, y = clf
    calls = {"forward": 0, "forward_features": 0}
    m = copy.deepcopy(model)
    orig_f, orig_ff = m.forward, m.forward_features

    def fwd(z):
        calls["forward"] += 1
        return orig_f(z)

    def ffwd(z):
        calls["forward_features"] += 1
        return orig_ff(z)

    m.forward, m.forward_features = fwd, ffwd
    seen = {}

    def term(outputs: Tensor, features: Tensor | None, x_adv: Tensor, yy: Tensor) -> Tensor:
        seen["shapes"] = (tuple(outputs.shape), None if features is None else tuple(features.shape),
                          tuple(x_adv.shape), tuple(yy.shape))
        return features.pow(2).sum(1)

    atk = PGD(eps=0.05, steps=5, extra=0.1 * ExtraTerm(term))
    atk(m, x, y)
    n = x.shape[0]
    assert seen["shapes"] == ((n, 3), (n, 16), tuple(x.shape), (n,))
    assert calls == {"forward_features": 5, "forward": 0}  # one pass per step, nothing else
    res = atk.run(m, x, y)
    assert calls == {"forward_features": 10, "forward": 1}  # run() also measures success once
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)


def test_feature_term_pulls_features_to_a_target(clf):
    """Levy et al.'s MGM evasion: CE + lambda * (-||f(x) - mu||^2) keeps features near the clean mean."""
    model, x, y = clf
    with torch.no_grad():
        mu = model.features(x).mean(0)

    def dist(z: Tensor) -> Tensor:
        with torch.no_grad():
            return (model.features(z) - mu).pow(2).sum(1)

    plain = PGD(eps=0.2, steps=20).run(model, x, y)
    term = ExtraTerm(lambda out, f, xa, yy: -(f - mu).pow(2).sum(1), name="mgm")
    adaptive = PGD(eps=0.2, steps=20, extra=0.05 * term).run(model, x, y)
    assert adaptive.success_rate >= 0.8
    assert float(dist(adaptive.x_adv).mean()) < 0.8 * float(dist(plain.x_adv).mean())


def test_weight_schedule_sees_each_step(clf):
    model, x, y = clf
    seen: list[tuple[int, int]] = []

    def weight(step: int, steps: int) -> float:
        seen.append((step, steps))
        return 1.0 - step / steps

    PGD(eps=0.05, steps=4, loss=Weighted(CrossEntropy(), weight)).run(model, x, y)
    assert [s for s, _ in seen[:4]] == [0, 1, 2, 3] and all(n == 4 for _, n in seen)


def test_mean_of_member_signs_is_levy_eq3(clf):
    model, x, y = clf
    torch.manual_seed(3)
    members = []
    for _ in range(3):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        members.append(m)

    class Ensemble(nn.Module):
        def __init__(self, ms: list[nn.Module]) -> None:
            super().__init__()
            self.ms = nn.ModuleList(ms)

        def forward(self, z: Tensor) -> Tensor:
            return torch.stack([m(z).softmax(1) for m in self.ms]).mean(0).log()

    ens = Ensemble(members).eval()
    eps = 0.05
    atk = FGSM(eps=eps, grad_model=members, grad_transform=mean_of_signs, direction="raw")
    res = atk.run(ens, x, y)
    signs = []
    for m in members:
        xx = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(m(xx), y, reduction="sum").backward()
        signs.append(xx.grad.sign())
    expected = (x + eps * torch.stack(signs).mean(0)).clamp(0, 1)
    moved = res.x_adv.ne(x).flatten(1).any(1)  # points where the step beat the clean input
    assert moved.float().mean() > 0.5
    assert torch.allclose(res.x_adv[moved], expected[moved], atol=1e-6)


class Quantised(nn.Module):
    """Gradient-masking preprocessing (rounding to 8 levels): its input gradient is zero."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, z: Tensor) -> Tensor:
        return self.base(torch.round(z * 8) / 8)


def test_separate_gradient_model_breaks_gradient_masking(clf):
    model, x, y = clf
    masked = Quantised(model).eval()
    direct = PGD(eps=0.15, steps=10, random_start=False).run(masked, x, y)
    bpda = PGD(eps=0.15, steps=10, random_start=False, grad_model=model).run(masked, x, y)
    assert direct.success_rate < 0.2
    assert bpda.success_rate > 0.8
    with torch.no_grad():
        assert torch.equal(bpda.success, masked(bpda.x_adv).argmax(1) != y)


def test_custom_success_and_early_stop(clf):
    model, x, y = clf

    def confident(outputs: Tensor, x_adv: Tensor, yy: Tensor) -> Tensor:
        p = outputs.softmax(1)
        return p.gather(1, yy[:, None])[:, 0] < 0.05

    res = PGD(eps=0.2, steps=20, success=confident, early_stop=True).run(model, x, y)
    with torch.no_grad():
        p = model(res.x_adv).softmax(1).gather(1, y[:, None])[:, 0]
    assert torch.equal(res.success, p < 0.05)
    assert res.success_rate > 0.8


def test_cascade_records_which_attack_succeeded(clf):
    model, x, y = clf
    y2 = y.clone()
    y2[0] = (y[0] + 1) % 3  # a sample the model already gets wrong
    weak = FGSM(eps=0.03)
    strong = PGD(eps=0.1, steps=10)
    res = Cascade([weak, strong], names=["fgsm", "pgd"]).run(model, x, y2)
    idx = res.info["attack_index"]
    assert int(idx[0]) == CLEAN and res.info["succeeded_by"][0] == "clean"
    alone = weak.run(model, x[1:], y2[1:]).success
    assert torch.equal(idx[1:] == 0, alone)  # FGSM is first and deterministic: same samples
    assert bool((idx[1:][~alone] != 0).all())
    assert torch.equal(res.success, idx != ROBUST)
    assert {res.info["succeeded_by"][i] for i in range(len(x))} <= {"clean", "fgsm", "pgd", None}
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal((pred != y2)[idx >= 0], torch.ones(int((idx >= 0).sum()), dtype=torch.bool))
    assert float((res.x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert (idx == 1).any()


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_momentum_and_schedules_stay_in_ball(clf, norm, eps):
    model, x, y = clf
    for kw in ({"momentum": 0.9}, {"step_schedule": "cosine"}, {"step_schedule": "linear", "restarts": 2}):
        xa = PGD(eps=eps, steps=5, norm=norm, **kw)(model, x, y)
        d = (xa - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-5) + 1e-7


def test_batchnorm_folding_is_the_same_attack(clf):
    from medsec.attacks.core import fused_model

    model, x, y = clf
    fused = fused_model(model, x[:8])
    assert fused is not None and fused is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert fused_model(model, x[:8]) is fused  # cached
    a = BIM_(fuse_bn=True).run(model, x, y)
    b = BIM_(fuse_bn=False).run(model, x, y)
    assert float((a.x_adv != b.x_adv).float().mean()) < 0.01  # a sign may flip on float rounding
    with torch.no_grad():  # reported success is measured on the original model
        assert torch.equal(a.success, model(a.x_adv).argmax(1) != y)
    # new weights -> a new folded copy
    m2 = copy.deepcopy(model)
    f2 = fused_model(m2, x[:8])
    with torch.no_grad():
        m2.body[1].running_mean.add_(0.1)
    f3 = fused_model(m2, x[:8])
    assert f3 is not None and f3 is not f2
    with torch.no_grad():
        assert torch.allclose(f3(x), m2(x), atol=1e-4)


def test_untraceable_model_falls_back(clf):
    from medsec.attacks.core import fused_model

    model, x, y = clf

    class Branchy(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: Tensor) -> Tensor:
            if float(z.detach().mean()) > 2.0:  # data-dependent control flow: fx cannot trace it
                return -self.inner(z)
            return self.inner(z)

    b = Branchy(model).eval()
    assert fused_model(b, x[:8]) is None
    assert PGD(eps=0.1, steps=5).run(b, x, y).success_rate > 0.5


def BIM_(**kw):
    from medsec.attacks import BIM

    return BIM(eps=0.1, steps=5, **kw)


def test_selective_loss_adds_the_extra_term_only_once_the_goal_is_reached():
    """Selective(goal, extra): where the goal term is <= 0 only the goal counts; past it, goal + w * extra."""
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # sample 0 still correct (margin -2), sample 1 fooled (+3)
    y = torch.tensor([0, 0])
    extra = ExtraTerm(lambda out, f, x, yy: torch.tensor([10.0, 10.0]), needs_features=False)
    inp = LossInput(outputs=z, y=y, targeted=False, task="classification", x_adv=torch.zeros(2, 1, 2, 2))
    got = Selective(Margin(), extra, 0.5)(inp)
    assert torch.allclose(got, torch.tensor([-2.0, 3.0 + 5.0]))


def test_success_condition_is_added_to_the_task_goal(clf):
    """success= is an extra condition: a sample must be misclassified AND pass it (here: never)."""
    model, x, y = clf
    res = PGD(eps=0.3, steps=10, success=lambda out, xa, yy: torch.zeros(len(yy), dtype=torch.bool)).run(model, x, y)
    assert not res.success.any()
    res = PGD(eps=0.3, steps=10, success=lambda out, xa, yy: torch.ones(len(yy), dtype=torch.bool)).run(model, x, y)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
