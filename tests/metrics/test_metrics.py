import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

import medsec.metrics as M
from medsec.errors import MedsecError


def test_accuracy_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert M.accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    assert M.balanced_accuracy(logits, np.array([0, 1, 1, 1])) == pytest.approx(
        balanced_accuracy_score([0, 1, 1, 1], [0, 1, 0, 1]))
    with pytest.raises(MedsecError):
        M.accuracy(logits, torch.tensor([0, 1]))


def test_weighted_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 5)) < [0.1, 0.2, 0.3, 0.4, 0.5]).astype(float)
    s = y * 0.5 + rng.random((200, 5))
    assert M.weighted_auroc(s, y) == pytest.approx(roc_auc_score(y, s, average="weighted"))
    assert M.mean_auroc(s, y) == pytest.approx(roc_auc_score(y, s, average="macro"))


def test_auroc_undefined_finding_is_skipped():
    y = np.array([[0, 1], [0, 0], [0, 1], [0, 0]], float)
    s = np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.8], [0.4, 0.3]])
    per = M.per_class_auroc(s, y)
    assert np.isnan(per[0]) and per[1] == 1.0
    assert M.weighted_auroc(s, y) == 1.0


def test_dice_by_hand():
    pred = np.zeros((2, 4, 4), int)
    mask = np.zeros((2, 4, 4), int)
    pred[0, :2, :2] = 1  # 4 pixels
    mask[0, :2, :] = 1  # 8 pixels, overlap 4 -> 2*4/12
    d = M.dice(pred, mask)
    assert d[0] == pytest.approx(8 / 12)
    assert d[1] == 1.0  # both empty
    logits = torch.stack([torch.tensor(1 - pred), torch.tensor(pred)], 1).float()
    assert M.mean_dice(logits, mask) == pytest.approx((8 / 12 + 1) / 2)


def test_detection_metrics():
    clean = np.linspace(0, 1, 100)
    adv = np.linspace(0.5, 1.5, 100)
    y = np.r_[np.zeros(100), np.ones(100)]
    assert M.detection_auroc(clean, adv) == pytest.approx(roc_auc_score(y, np.r_[clean, adv]))
    thr = M.threshold_at_fpr(clean, 0.05)
    assert (clean > thr).mean() == pytest.approx(0.05, abs=0.011)
    assert M.tpr_at_fpr(clean, adv, 0.05) == pytest.approx((adv > thr).mean())
    fc, fa = clean > thr, adv > thr
    assert M.detection_f1(fc, fa) == pytest.approx(f1_score(y, np.r_[fc, fa]))


def test_perturbation_norms_by_hand():
    x = torch.zeros(2, 1, 8, 8)
    xa = x.clone()
    xa[0, 0, 0, 0] = 0.5
    xa[0, 0, 1, 1] = -0.5 + 0.5  # unchanged
    n = M.perturbation_norms(x, xa)
    assert n["linf"][0] == pytest.approx(0.5) and n["l2"][0] == pytest.approx(0.5)
    assert n["psnr"][0] == pytest.approx(10 * np.log10(1 / (0.25 / 64)))
    assert torch.isinf(n["psnr"][1]) and n["ssim"][1] == pytest.approx(1.0)
    assert n["ssim"][0] < 1.0


def test_ssim_matches_reference_formula():
    # A constant offset c changes only the luminance term: SSIM = (2 m (m+c) + C1) / (m^2 + (m+c)^2 + C1).
    x = torch.full((1, 1, 16, 16), 0.4)
    c = 0.1
    ref = (2 * 0.4 * 0.5 + 1e-4) / (0.4**2 + 0.5**2 + 1e-4)
    assert M.perturbation_norms(x, x + c)["ssim"][0] == pytest.approx(ref, rel=1e-5)


def test_task_metrics_keys():
    assert M.task_metrics("classification", torch.randn(10, 3), torch.randint(0, 3, (10,)))["accuracy"] >= 0
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert M.task_metrics("multilabel", y * 4 - 2, y)["weighted_auroc"] == 1.0
    with pytest.raises(MedsecError):
        M.task_metrics("regression", torch.zeros(1), torch.zeros(1))


def test_one_dice_rule_for_one_and_two_channel_outputs():
    """A sigmoid (one-channel) segmenter and its two-channel softmax twin get the same Dice everywhere."""
    import torch

    from medsec.metrics.system import handled, quality

    torch.manual_seed(0)
    logit = torch.randn(3, 1, 8, 8)
    two = torch.cat([torch.zeros_like(logit), logit], 1)  # argmax == (logit > 0)
    mask = (torch.rand(3, 8, 8) > 0.5).long()
    d1, d2 = M.dice(logit, mask), M.dice(two, mask)
    assert np.allclose(d1, d2) and d1.dtype == np.float64
    assert np.allclose(M.dice(logit, mask), M.dice((logit[:, 0] > 0).long(), mask))
    no = torch.zeros(3, dtype=torch.bool)
    assert torch.allclose(handled(logit, mask, "segmentation", adversarial=True).float(),
                          handled(two, mask, "segmentation", adversarial=True).float())
    assert torch.allclose(quality(logit, mask, "segmentation", no), quality(two, mask, "segmentation", no))
    empty = torch.zeros(1, 8, 8, dtype=torch.long)
    assert M.dice(torch.full((1, 1, 8, 8), -1.0), empty)[0] == 1.0  # nothing to find, nothing found


def test_segmentation_mask_is_the_channel_argmax_ties_to_the_first_class():
    from medsec.metrics.segmentation import seg_prediction

    torch.manual_seed(0)
    for k in (2, 3, 5):
        z = torch.randn(4, k, 9, 7)
        z[:, 1, :2] = z[:, 0, :2]  # ties: the lower class wins, as with argmax
        assert torch.equal(seg_prediction(z), z.argmax(1))
        assert seg_prediction(z).dtype == torch.long
