"""Multi-label and segmentation attacks."""

from __future__ import annotations

import torch

from medsec.attacks import APGD, PGD, Dice
from medsec.metrics import dice_per_sample, seg_prediction


def test_multilabel_top_finding_is_flipped(multilabel):
    model, x, y = multilabel
    with torch.no_grad():
        clean = model(x)
    top = clean.argmax(1)
    # attack the model's own prediction of its top finding, as Li & Zhu (labels unknown to the attacker)
    ref = (clean > 0).float()
    res = PGD(eps=0.15, steps=20, findings="top").run(model, x, ref)
    with torch.no_grad():
        adv = model(res.x_adv)
    rows = torch.arange(len(x))
    flipped = (adv[rows, top] > 0) != (clean[rows, top] > 0)
    assert float(flipped.float().mean()) >= 0.9
    assert torch.equal(res.success, flipped)


def test_multilabel_all_findings_and_targeted(multilabel):
    model, x, y = multilabel
    res = PGD(eps=0.3, steps=30, findings="all").run(model, x, y)
    with torch.no_grad():
        clean_wrong = ((model(x) > 0).float() != y).float().mean()
        adv_wrong = ((model(res.x_adv) > 0).float() != y).float().mean()
    assert float(adv_wrong) > float(clean_wrong) + 0.5
    target = torch.zeros_like(y)  # make the model report no finding at all
    res_t = APGD(eps=0.3, steps=30, findings="all", targeted=True).run(model, x, target)
    with torch.no_grad():
        assert float((model(res_t.x_adv) > 0).float().mean()) < 0.1


def _dice(model, x, y):
    with torch.no_grad():
        return dice_per_sample(seg_prediction(model(x)), y, 2)


def test_segmentation_untargeted_lowers_dice(seg):
    model, x, y = seg
    clean = _dice(model, x, y).mean()
    assert clean > 0.8
    for atk in (PGD(eps=0.15, steps=20), PGD(eps=0.15, steps=20, loss="dice"), APGD(eps=0.15, steps=20, loss=Dice())):
        res = atk.run(model, x, y)
        assert float((res.x_adv - x).abs().max()) <= 0.15 + 1e-6
        assert _dice(model, res.x_adv, y).mean() < clean - 0.5


def test_segmentation_targeted_erases_lesion(seg):
    model, x, y = seg
    empty = torch.zeros_like(y)
    res = PGD(eps=0.15, steps=30, targeted=True).run(model, x, empty)
    with torch.no_grad():
        fg_clean = float((seg_prediction(model(x)) == 1).float().sum())
        fg_adv = float((seg_prediction(model(res.x_adv)) == 1).float().sum())
    assert fg_adv < 0.1 * fg_clean
    assert res.success_rate >= 0.8
