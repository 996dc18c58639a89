"""Defences: the maths against reference implementations, the threshold, save/load, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from medsec.config import TrainConfig
from medsec.data import load_dataset
from medsec.data.base import DatasetInfo, MedicalDataset, Split
from medsec.defences import (
    GMM,
    ISO,
    MGM,
    OCSVM,
    RBF,
    Denoiser,
    Ensemble,
    Gaussian,
    KernelizedManifoldMapping,
    NotFittedError,
    adversarial_risk,
    build_network,
    load_defence,
)
from medsec.errors import MedsecError

TINY = TrainConfig(epochs=1, batch_size=32, patience=1, augment=False)


def _spec(arch: str = "resnet20", task: str = "classification", k: int = 2) -> dict:
    return {"factory": "build_model", "args": {"arch": arch, "in_channels": 1, "num_outputs": k, "task": task,
                                               "width": 0.25, "depth": 0.34, "mean": [0.5], "std": [0.25]}}


@pytest.fixture
def toy(cache_dir) -> MedicalDataset:
    return load_dataset("toy-blobs", size=16, n_train=96, n_val=32, n_test=32, seed=0)


def _tiny_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(_spec()).eval()


def _seg_data() -> MedicalDataset:
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        masks = np.zeros((n, 16, 16), np.int64)
        masks[:, 4:10, 5:12] = 1
        px = (np.clip(rng.normal(0.3, 0.1, (n, 1, 16, 16)) + 0.4 * masks[:, None], 0, 1) * 255).astype(np.uint8)
        return Split(px, masks)

    info = DatasetInfo("toy-seg", "segmentation", ("background", "lesion"), 1, "MR", True)
    return MedicalDataset(info, split(32), split(8), split(8))


# --- Gaussian ------------------------------------------------------------------------------------------------

def test_log_likelihood_equals_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    feats = rng.normal(size=(300, 6)) @ a + rng.normal(size=6)
    g = Gaussian().fit(torch.from_numpy(feats), reg=1e-3, relative=False)
    cov = np.cov(feats.T, bias=True) + 1e-3 * np.eye(6)
    y = rng.normal(size=(20, 6)) * 3
    ref = multivariate_normal(feats.mean(0), cov).logpdf(y)
    np.testing.assert_allclose(g.log_prob(torch.from_numpy(y)).numpy(), ref, rtol=1e-5, atol=1e-3)


def test_singular_covariance_is_regularised():
    rng = np.random.default_rng(2)
    feats = np.zeros((10, 30))  # fewer samples than dimensions, and dead (constant) features
    feats[:, :5] = rng.normal(size=(10, 5))
    g = Gaussian().fit(torch.from_numpy(feats))
    lp = g.log_prob(torch.from_numpy(rng.normal(size=(4, 30))))
    assert torch.isfinite(lp).all()
    assert float(g.lam) > 0
    # a point off the training subspace is far less likely than a training point
    assert float(g.log_prob(torch.from_numpy(feats[:1]))) > float(lp.max())


def test_gaussian_rejects_bad_input():
    with pytest.raises(MedsecError, match="n >= 2"):
        Gaussian().fit(torch.zeros(1, 3))
    with pytest.raises(MedsecError, match="before fit"):
        Gaussian().log_prob(torch.zeros(2, 3))


# --- detectors ------------------------------------------------------------------------------------------------

def test_mgm_threshold_keeps_95_percent_of_clean_training_features():
    rng = np.random.default_rng(3)
    feats = torch.from_numpy(rng.normal(size=(1000, 8))).float()
    mgm = MGM(_tiny_classifier()).fit_features(feats)
    rejected = (mgm.score_features(feats) > mgm.threshold).float().mean().item()
    assert abs(rejected - 0.05) <= 0.002
    far = feats[:50] + 6.0
    assert (mgm.score_features(far) > mgm.threshold).all()


def test_ocsvm_and_iso_match_scikit_learn():
    from sklearn.ensemble import IsolationForest
    from sklearn.svm import OneClassSVM

    rng = np.random.default_rng(4)
    feats = rng.normal(size=(300, 5)).astype(np.float32)
    test = np.r_[rng.normal(size=(40, 5)), rng.normal(size=(10, 5)) * 4].astype(np.float32)
    oc = OCSVM(_tiny_classifier(), nu=0.2).fit_features(torch.from_numpy(feats))
    ref = OneClassSVM(kernel="rbf", nu=0.2, gamma="scale").fit(feats.astype(np.float64))
    np.testing.assert_allclose(oc.score_features(torch.from_numpy(test)).numpy(),
                               -ref.decision_function(test.astype(np.float64)), rtol=1e-4, atol=1e-4)
    iso = ISO(_tiny_classifier(), n_estimators=25, seed=7).fit_features(torch.from_numpy(feats))
    ref_iso = IsolationForest(n_estimators=25, random_state=7).fit(feats)
    np.testing.assert_allclose(iso.score_features(torch.from_numpy(test)).numpy(), -ref_iso.score_samples(test),
                               rtol=1e-5, atol=1e-6)


def test_score_is_differentiable_for_mgm_and_ocsvm(toy):
    for cls in (MGM, OCSVM):
        det = cls(_tiny_classifier()).fit(toy)
        x = toy.test.images()[:4].requires_grad_(True)
        det.score(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_score_and_detect_before_fit_are_clear_errors(toy):
    for det in (MGM(_tiny_classifier()), ISO(_tiny_classifier()), OCSVM(_tiny_classifier()),
                GMM(_tiny_classifier(), 2)):
        with pytest.raises(NotFittedError, match="before fit"):
            det.score(toy.test.images()[:2])
        with pytest.raises(NotFittedError, match="before fit"):
            det.detect(toy.test.images()[:2])
    with pytest.raises(NotFittedError):
        MGM(_tiny_classifier()).save("/tmp/never-written.pt")


def test_adversarial_risk_counts_accepted_and_misclassified(toy):
    mgm = MGM(_tiny_classifier()).fit(toy)
    x, y = toy.test.images(), toy.test.target_tensor()
    pred = mgm.predict(x).argmax(1)
    rejected = mgm.detect(x)
    assert adversarial_risk(mgm, x, y) == pytest.approx(float((~rejected & (pred != y)).float().mean()))
    assert adversarial_risk(mgm, x, y, adversarial=False) == pytest.approx(
        float((rejected | (pred != y)).float().mean()))


def test_exposed_parts(toy):
    mgm = MGM(_tiny_classifier()).fit(toy)
    parts = mgm.exposed()
    assert set(parts) >= {"classifier", "feature_extractor", "mean", "cholesky", "score", "threshold"}
    f = parts["feature_extractor"](toy.test.images()[:3])
    assert f.shape[1] == parts["mean"].shape[0]


# --- RBF layer --------------------------------------------------------------------------------------------------

def _official_rbf_numpy(x_bpc, centers, psi, betas, w, b):
    """Direct transcription of the Keras kernelized_mapper (x reshaped to (B, P, C))."""
    t = (psi + np.finfo(np.float64).eps).T * (psi + np.finfo(np.float64).eps)
    s = np.transpose(np.transpose(x_bpc) - centers[:, :, None, None])  # (B, P, C, C): x[b,p,j] - centers[a,j]
    h = np.sqrt(np.clip(np.sum(np.dot(s, t) * s, axis=-1), 0, None))
    return np.dot(np.exp(-betas * h), w) + b


def test_rbf_layer_matches_official_formula():
    torch.manual_seed(5)
    layer = KernelizedManifoldMapping(4)
    with torch.no_grad():  # move away from the identity initialisation
        layer.psi.add_(0.3 * torch.randn(4, 4))
        layer.betas.uniform_(0.5, 2.5)
        layer.bias.normal_()
    x = torch.rand(2, 4, 3, 5) * 2
    out = layer(x).detach().numpy()
    x_bpc = x.permute(0, 2, 3, 1).reshape(2, 15, 4).double().numpy()
    ref = _official_rbf_numpy(x_bpc, *(p.detach().double().numpy() for p in
                                       (layer.centers, layer.psi, layer.betas, layer.kernel, layer.bias)))
    np.testing.assert_allclose(out.transpose(0, 2, 3, 1).reshape(2, 15, 4), ref, rtol=1e-4, atol=1e-5)


def test_rbf_layer_gradients_match_autograd_of_the_plain_expression():
    """The fused kernel's backward pass (input and every parameter, the clamp included) against autograd of
    the formula written out, in float64; and torch's gradcheck on the fused op."""
    torch.manual_seed(7)
    layer = KernelizedManifoldMapping(3).double()
    with torch.no_grad():
        layer.psi.add_(0.3 * torch.randn(3, 3, dtype=torch.float64))
        layer.betas.uniform_(0.5, 2.5)
    x = (torch.rand(2, 3, 4, 5, dtype=torch.float64) * 2).requires_grad_(True)
    with torch.no_grad():  # one value exactly at a center so the clamp is exercised
        x[0, 0, 0, 0] = layer.centers[0, 0]

    def plain(xx: torch.Tensor) -> torch.Tensor:
        g = torch.exp(-layer.betas.view(1, -1, 1, 1) * layer.distance(xx))
        return torch.einsum("bjhw,jk->bkhw", g, layer.kernel) + layer.bias.view(1, -1, 1, 1)

    params = [x, *layer.parameters()]
    w = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    fused = torch.autograd.grad((layer(x) * w).sum(), params)
    ref = torch.autograd.grad((plain(x) * w).sum(), params)
    for a, b in zip(fused, ref, strict=True):
        torch.testing.assert_close(a, b)
    from medsec.defences.rbf import _Kernel

    a_, m_, k_ = (t.detach().requires_grad_(True) for t in layer._coefficients())
    beta = layer.betas.detach().clone().requires_grad_(True)
    xg = (torch.rand(1, 3, 2, 2, dtype=torch.float64) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *t: _Kernel.apply(*t), (xg, a_, m_, k_, beta))


# --- save / load ------------------------------------------------------------------------------------------------

def _roundtrip(defence, x, tmp_path):
    path = tmp_path / f"{defence.kind}.pt"
    defence.save(path)
    loaded = load_defence(path)
    assert type(loaded) is type(defence)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), defence.eval().predict(x))
        if defence.is_detector:
            torch.testing.assert_close(loaded.score(x), defence.score(x))
            assert torch.equal(loaded.detect(x), defence.detect(x))
            assert float(loaded.threshold) == float(defence.threshold)


def test_feature_detectors_and_gmm_save_and_load(toy, tmp_path):
    x = toy.test.images()
    for det in (MGM(_tiny_classifier()), ISO(_tiny_classifier(), n_estimators=10), OCSVM(_tiny_classifier())):
        _roundtrip(det.fit(toy), x, tmp_path)
    gmm = GMM(_tiny_classifier(), 2, ssat_epochs=1).fit(toy, TINY)
    _roundtrip(gmm, x, tmp_path)
    assert len(gmm.exposed()["gaussians"]) == 2


def test_trained_defences_save_and_load(toy, tmp_path):
    x = toy.test.images()
    ens = Ensemble.build([_spec(), _spec()], adv_eps=0.01).fit(toy, TINY)
    _roundtrip(ens, x, tmp_path)
    probs = torch.stack([torch.softmax(m(x), 1) for m in ens.members]).mean(0)
    torch.testing.assert_close(ens.predict(x).exp(), probs, rtol=1e-5, atol=1e-6)
    den = Denoiser.build(arch="resnet20", task="classification", in_channels=1, num_outputs=2, width=0.25,
                         depth=0.34, ae_width=4).fit(toy, TINY)
    _roundtrip(den, x, tmp_path)
    assert den.denoiser(x[:2]).shape == x[:2].shape
    rbf = RBF.build(task="classification", in_channels=1, num_outputs=2, width=0.1, depth=0.3).fit(toy, TINY)
    _roundtrip(rbf, x, tmp_path)
    assert len(rbf.rbf_layers) == 4


def test_denoiser_training_loss_has_xue_terms_and_old_checkpoints_load_without_invariance(toy):
    """The training loss is CE on the noised image + L1 reconstruction + feature invariance; with noise 0
    the invariance term is 0 and the reconstruction term is the auto-encoder's L1 error on the clean image."""
    torch.manual_seed(0)
    den = Denoiser.build(noise_std=0.0, rec_weight=2.0, feature_weight=5.0, arch="resnet20", task="classification",
                         in_channels=1, num_outputs=2, width=0.25, depth=0.34, ae_width=4).eval()
    x, y = toy.test.images()[:4], toy.test.target_tensor()[:4]
    clf = den.classifier
    f, rec = clf.features_and_reconstruction(x)
    torch.testing.assert_close(f, clf.features(x))
    torch.testing.assert_close(rec, den.denoiser(x))
    expected = torch.nn.functional.cross_entropy(clf.head(f), y) + 2.0 * torch.nn.functional.l1_loss(rec, x)
    torch.testing.assert_close(den._extra_loss()(clf, x, y), expected)
    noisy = Denoiser(clf, noise_std=0.3, rec_weight=0.0, feature_weight=1.0)
    torch.manual_seed(1)
    with_inv = noisy._extra_loss()(clf, x, y)
    torch.manual_seed(1)
    without = Denoiser(clf, noise_std=0.3, rec_weight=0.0, feature_weight=0.0)._extra_loss()(clf, x, y)
    assert float(with_inv.detach()) > float(without.detach())  # noised features differ from the clean ones
    spec = den.spec()
    assert spec["feature_weight"] == 5.0
    spec.pop("feature_weight")
    assert Denoiser.from_spec(spec).feature_weight == 0.0  # trained before the term existed


def test_rbf_unet_segments_and_round_trips(tmp_path):
    data = _seg_data()
    rbf = RBF.build(task="segmentation", in_channels=1, num_outputs=2, width=0.125, depth=0.5).fit(data, TINY)
    x = data.test.images()
    assert rbf.predict(x).shape == (8, 2, 16, 16)
    assert len(rbf.rbf_layers) == 5  # 3 encoder + 2 decoder blocks
    _roundtrip(rbf, x, tmp_path)


def test_load_rejects_missing_and_damaged_files(tmp_path):
    with pytest.raises(MedsecError, match="does not exist"):
        load_defence(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a defence")
    with pytest.raises(MedsecError, match="unreadable"):
        load_defence(bad)


def test_gmm_per_class_gaussians_keep_95_percent_and_flag_wrong_class_features():
    rng = np.random.default_rng(6)
    labels = torch.from_numpy(rng.integers(0, 2, 800))
    centres = torch.tensor([[0.0] * 6, [5.0] * 6])
    feats = centres[labels] + torch.from_numpy(rng.normal(size=(800, 6))).float()
    logits = torch.nn.functional.one_hot(labels, 2).float()  # predicted = true class
    gmm = GMM(_tiny_classifier(), 2).fit_features(feats, labels, logits)
    rejected = gmm._score_parts(logits, feats) > gmm.threshold
    assert abs(rejected.float().mean().item() - 0.05) <= 0.01
    for c in (0, 1):  # every class keeps about 95% of its own clean data
        assert abs(rejected[labels == c].float().mean().item() - 0.05) <= 0.03
    swapped = gmm._score_parts(1 - logits, feats) > gmm.threshold  # class-0 features predicted as class 1
    assert swapped.float().mean() > 0.99


def test_ledoit_wolf_and_tied_covariance_keep_held_out_rejection_near_the_training_rate():
    """With about as many samples per class as feature dimensions, per-class empirical covariances overfit:
    held-out clean features are rejected far above the 5% set on training data. Shrinkage and a tied
    within-class covariance bring the held-out rate much closer to 5% (why they are the defaults)."""
    rng = np.random.default_rng(7)
    d, k, n = 40, 4, 120  # 120 training samples per class in 40 dimensions
    mix = torch.from_numpy(rng.normal(size=(d, d)) / np.sqrt(d)).float()
    centres = torch.from_numpy(rng.normal(size=(k, d)) * 3).float()

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        lab = torch.arange(k).repeat_interleave(m)
        return centres[lab] + torch.from_numpy(rng.normal(size=(k * m, d))).float() @ mix, lab

    (ft, lt), (fh, lh) = draw(n), draw(500)
    rates = {}
    for shrink, cov in (("none", "per-class"), ("ledoit-wolf", "tied")):
        gmm = GMM(_tiny_classifier(), k, shrinkage=shrink, covariance=cov)
        gmm.fit_features(ft, lt, torch.nn.functional.one_hot(lt, k).float())
        held = gmm._score_parts(torch.nn.functional.one_hot(lh, k).float(), fh) > gmm.threshold
        rates[cov] = held.float().mean().item()
        if cov == "tied":  # one covariance shared by the classes, their own means
            assert all(torch.equal(g.cholesky, gmm.gaussians[0].cholesky) for g in gmm.gaussians)
            assert not torch.equal(gmm.gaussians[0].mean, gmm.gaussians[1].mean)
    assert rates["per-class"] > 0.5 and rates["tied"] < 0.2, rates  # measured: 0.71 and 0.15
    # calibrated on clean held-out features (the default in gmm.fit: the validation split), the per-class
    # Gaussians still overfit but the threshold rejects about 5% of clean images the detector has not seen
    (fv, lv), (fh2, lh2) = draw(250), draw(500)
    gmm = GMM(_tiny_classifier(), k, shrinkage="ledoit-wolf", covariance="tied")
    gmm.fit_features(ft, lt, torch.nn.functional.one_hot(lt, k).float(),
                     calibration=(fv, lv, torch.nn.functional.one_hot(lv, k).float()))
    held = gmm._score_parts(torch.nn.functional.one_hot(lh2, k).float(), fh2) > gmm.threshold
    assert abs(held.float().mean().item() - 0.05) < 0.03, held.float().mean()
    with pytest.raises(MedsecError, match="calibrate_on"):
        GMM(_tiny_classifier(), k, calibrate_on="test")
    with pytest.raises(MedsecError, match="covariance"):
        GMM(_tiny_classifier(), k, covariance="full")
    with pytest.raises(MedsecError, match="shrinkage"):
        Gaussian().fit(ft, shrinkage="oas")
