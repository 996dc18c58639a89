"""Every attack lowers accuracy and keeps the contract (shape, dtype, [0, 1], ball, model untouched)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medsec.attacks import APGD, BIM, CW, FGSM, MIM, PGD, Cascade, CWLinf, DeepFool

EPS, EPS2 = 0.1, 1.0

ATTACKS = {
    "fgsm": lambda: FGSM(eps=EPS),
    "bim": lambda: BIM(eps=EPS, steps=10),
    "pgd": lambda: PGD(eps=EPS, steps=10),
    "pgd-l2": lambda: PGD(eps=EPS2, steps=10, norm="l2"),
    "mim": lambda: MIM(eps=EPS, steps=10),
    "cw-linf": lambda: CWLinf(eps=EPS, steps=10),
    "apgd-ce": lambda: APGD(eps=EPS, steps=10),
    "apgd-dlr": lambda: APGD(eps=EPS, steps=10, loss="dlr"),
    "apgd-l2": lambda: APGD(eps=EPS2, steps=10, norm="l2"),
    "cw": lambda: CW(eps=EPS2, steps=30, binary_search_steps=3),
    "deepfool": lambda: DeepFool(eps=EPS2),
    "deepfool-linf": lambda: DeepFool(eps=EPS, norm="linf"),
    "cascade": lambda: Cascade.standard(EPS, steps=10),
}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_lowers_accuracy_and_keeps_contract(clf, name):
    model, x, y = clf
    atk = ATTACKS[name]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sentinel = {n: torch.full_like(p, 0.5) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n]
    res = atk.run(model, x, y)
    xa = res.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    d = (xa - x).flatten(1)
    if atk.norm == "linf":
        assert float(d.abs().max()) <= atk.eps + 1e-6
    else:
        assert float(d.norm(dim=1).max()) <= atk.eps * (1 + 1e-5)
    assert accuracy(model, xa, y) < 0.5, f"{name}: accuracy only fell to {accuracy(model, xa, y)}"
    # reported success is what the model does on the returned points
    with torch.no_grad():
        assert torch.equal(res.success, model(xa).argmax(1) != y)
    # the model is untouched: parameters/buffers, mode, requires_grad and .grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training and all(not m.training for m in model.modules())
    for n, p in model.named_parameters():
        assert p.requires_grad and p.grad is sentinel[n]
        p.grad = None


def test_float64_input_keeps_dtype(clf):
    model, x, y = clf
    xa = PGD(eps=EPS, steps=3)(model, x.double(), y)
    assert xa.dtype == torch.float64 and xa.shape == x.shape
    m64 = copy.deepcopy(model).double()
    xb = PGD(eps=EPS, steps=3)(m64, x, y)
    assert xb.dtype == torch.float32 and accuracy(model, xb, y) < 0.5


def test_same_seed_same_result_and_global_rng_untouched(clf):
    model, x, y = clf
    state = torch.random.get_rng_state()
    a = PGD(eps=EPS, steps=3, seed=7)(model, x, y)
    b = PGD(eps=EPS, steps=3, seed=7)(model, x, y)
    c = PGD(eps=EPS, steps=3, seed=8)(model, x, y)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("make", [
    lambda: PGD(eps=0.2, steps=20, targeted=True),
    lambda: APGD(eps=0.2, steps=20, targeted=True),
    lambda: CW(steps=50, binary_search_steps=3, targeted=True),
], ids=["pgd", "apgd", "cw"])
def test_targeted_hits_target(clf, make):
    model, x, y = clf
    target = (y + 1) % 3
    res = make().run(model, x, target)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert float((pred == target).float().mean()) >= 0.9
    assert torch.equal(res.success, pred == target)


def test_train_mode_model_without_stateful_layers_stays_in_train_mode(clf):
    _, x, y = clf
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    model.train()
    PGD(eps=EPS, steps=2)(model, x, y)
    assert model.training


def test_train_mode_eval_option_restores_mode(clf):
    model, x, y = clf
    model.train()
    try:
        stats = model.body[1].running_mean.clone()
        xa = PGD(eps=EPS, steps=3, train_mode="eval")(model, x, y)
        assert model.training and model.body[1].training
        assert torch.equal(stats, model.body[1].running_mean)
    finally:
        model.eval()
    assert accuracy(model, xa, y) < 0.5


def test_restarts_and_early_stop_never_worse(clf):
    model, x, y = clf
    one = PGD(eps=0.05, steps=5).run(model, x, y)
    many = PGD(eps=0.05, steps=5, restarts=4, early_stop=True).run(model, x, y)
    assert many.success_rate >= one.success_rate


def test_early_stop_removes_fooled_samples(clf):
    model, x, y = clf
    rows: list[int] = []
    h = model.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        res = PGD(eps=0.2, steps=10, early_stop=True, fuse_bn=False).run(model, x, y)
    finally:
        h.remove()
    assert res.success.all()
    assert min(rows) < x.shape[0]  # fooled samples left the batch
    assert sum(rows) < x.shape[0] * 11


def test_batch_size_chunks(clf):
    model, x, y = clf
    res = PGD(eps=EPS, steps=5, batch_size=10).run(model, x, y)
    assert res.x_adv.shape == x.shape and res.success.shape == (x.shape[0],)
    assert float((res.x_adv - x).abs().max()) <= EPS + 1e-6


def test_eps_zero_returns_input(clf):
    model, x, y = clf
    assert torch.equal(PGD(eps=0.0)(model, x, y), x)


def test_cw_unbounded_finds_small_perturbations(clf):
    model, x, y = clf
    res = CW(steps=50, binary_search_steps=4).run(model, x, y)
    assert res.success.all()
    df = DeepFool().run(model, x, y)
    assert df.success.all()
    # C&W optimises the norm: on average no larger than DeepFool's (which overshoots)
    assert float(res.info["l2"].mean()) <= float(df.info["size"].mean()) * 1.1


def test_int32_labels_are_accepted(clf):
    model, x, y = clf
    res = PGD(eps=EPS, steps=5).run(model, x, y.int())
    assert res.success_rate > 0.5


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "mim", "cw-linf", "apgd-ce", "apgd-dlr", "cascade"])
def test_registry_builds_linf_attacks(clf, name):
    from medsec.attacks import build_attack

    model, x, y = clf
    atk = build_attack(name, 0.1, steps=5, num_classes=3)
    xa = atk(model, x, y)
    assert float((xa - x).abs().max()) <= 0.1 + 1e-6
    assert accuracy(model, xa, y) < 0.5


def test_registry_l2_defaults(clf):
    from medsec.attacks import build_attack
    from medsec.errors import MedsecError

    assert build_attack("cw", 1.0).norm == "l2" and build_attack("deepfool", 1.0).norm == "l2"
    with pytest.raises(MedsecError, match="cw-linf"):
        build_attack("cw", 0.1, norm="linf")
