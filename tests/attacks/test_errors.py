"""Bad input gets a clear MedsecError, never a silent wrong answer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsec.attacks import APGD, CW, DLR, FGSM, PGD, Cascade, DeepFool, ExtraTerm
from medsec.errors import MedsecError


@pytest.mark.parametrize("make", [
    lambda: PGD(eps=-0.1), lambda: FGSM(eps=-1e-3), lambda: APGD(eps=-1), lambda: CW(eps=-1),
    lambda: DeepFool(eps=-1), lambda: PGD(eps=float("nan")), lambda: PGD(eps=0.1, alpha=-0.1),
    lambda: PGD(eps=0.1, steps=0), lambda: PGD(eps=0.1, restarts=0), lambda: PGD(eps=0.1, norm="l1"),
    lambda: PGD(eps=0.1, loss="nope"), lambda: PGD(eps=0.1, precision="fp8"), lambda: PGD(train_mode="x"),
    lambda: Cascade([]), lambda: DeepFool(targeted=True), lambda: PGD(eps=0.1, step_schedule="zigzag"),
])
def test_bad_parameters(make):
    with pytest.raises(MedsecError):
        make()


def test_single_step_alpha_above_eps():
    with pytest.raises(MedsecError, match="alpha"):
        FGSM(eps=0.01, alpha=0.02)
    with pytest.raises(MedsecError, match="alpha"):
        PGD(eps=0.01, alpha=0.02, steps=1, random_start=False)
    PGD(eps=0.01, alpha=0.02, steps=5)  # allowed for iterative attacks: the projection bounds it


def test_bad_images(clf):
    model, x, y = clf
    atk = PGD(eps=0.05, steps=2)
    with pytest.raises(MedsecError, match=r"\[0, 1\]"):
        atk(model, x * 2, y)
    with pytest.raises(MedsecError, match=r"\[0, 1\]"):
        atk(model, x - 0.5, y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(MedsecError, match="NaN"):
        atk(model, bad, y)
    with pytest.raises(MedsecError, match="shape"):
        atk(model, x[:, 0], y)
    with pytest.raises(MedsecError, match="float"):
        atk(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(MedsecError):
        atk(model, x.numpy(), y)


def test_bad_labels(clf, multilabel, seg):
    model, x, y = clf
    atk = PGD(eps=0.05, steps=2)
    with pytest.raises(MedsecError, match="rows"):
        atk(model, x, y[:-1])
    with pytest.raises(MedsecError, match="do not fit"):
        atk(model, x, y[:, None])
    with pytest.raises(MedsecError, match=r"\[0, 3\)"):
        atk(model, x, y + 3)
    with pytest.raises(MedsecError, match="integers"):
        atk(model, x, y.float())
    mm, mx, my = multilabel
    with pytest.raises(MedsecError, match="0/1"):
        atk(mm, mx, my * 2)
    sm, sx, sy = seg
    with pytest.raises(MedsecError, match="masks"):
        atk(sm, sx, sy[:, :8])
    with pytest.raises(MedsecError, match="findings"):
        PGD(eps=0.05, findings=[7])(mm, mx, my)


def test_train_mode_batchnorm_is_refused(clf):
    model, x, y = clf
    model.train()
    try:
        with pytest.raises(MedsecError, match="eval"):
            PGD(eps=0.05, steps=2)(model, x, y)
        assert model.training  # mode untouched by the refusal
    finally:
        model.eval()


def test_loss_errors(clf):
    model, x, y = clf
    with pytest.raises(MedsecError, match="per-sample"):
        PGD(eps=0.05, steps=1, extra=ExtraTerm(lambda o, f, xa, yy: o.sum(), needs_features=False))(model, x, y)
    two = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    with pytest.raises(MedsecError, match="3 classes"):
        APGD(eps=0.05, steps=2, loss=DLR())(two, x, y % 2)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    with pytest.raises(MedsecError, match="forward_features"):
        PGD(eps=0.05, steps=1, extra=ExtraTerm(lambda o, f, xa, yy: f.sum(1)))(plain, x, y)
    with pytest.raises(MedsecError, match="Module"):
        PGD(eps=0.05)(lambda z: z, x, y)


def test_model_returning_non_tensor(clf):
    _, x, y = clf

    class Dicty(nn.Module):
        def forward(self, z):
            return {"logits": z.flatten(1)[:, :3]}

    with pytest.raises(MedsecError, match="logits tensor"):
        PGD(eps=0.05)(Dicty(), x, y)
