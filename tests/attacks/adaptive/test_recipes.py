"""Each recipe beats its defence where the plain (original) attack does not, on tiny trained models; the
detector threshold is never refitted; the pieces (BPDA, eq. 3, best-of) do what they say."""

from __future__ import annotations

import pytest
import torch

from medsec.attacks import FGSM, PGD
from medsec.attacks.adaptive import (
    BPDA,
    BestOf,
    DenoiserRecipe,
    EnsembleRecipe,
    GMMRecipe,
    MGMRecipe,
    RBFRecipe,
    quality,
    recipe_for,
    sign_average,
)
from medsec.defences import MGM, RBF, Denoiser, Ensemble
from medsec.errors import MedsecError
from tests.attacks.adaptive.conftest import TINY, trained


def _handled(defence, x_adv, y) -> float:
    """Levy et al.'s accuracy of the defended system on adversarial inputs (rejected or still right)."""
    return float((quality(defence, x_adv, y, "classification") >= 1).float().mean())


def _in_ball(x_adv, x, eps):
    assert x_adv.shape == x.shape and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float((x_adv - x).abs().max()) <= eps + 1e-6


def test_mgm_recipe_evades_detector_and_threshold_is_untouched(toy_data, victim):
    mgm = MGM(victim).fit(toy_data)
    thr = float(mgm.threshold)
    x, y = toy_data.test.images(), toy_data.test.target_tensor()
    eps = 0.1
    plain = _handled(mgm, PGD(eps=eps, steps=10)(mgm, x, y), y)
    res = MGMRecipe(eps, steps=30, restarts=1).run(mgm, x, y)
    _in_ball(res.x_adv, x, eps)
    adaptive = _handled(mgm, res.x_adv, y)
    assert adaptive <= plain - 0.15, (plain, adaptive)
    assert float(mgm.threshold) == thr  # fixed at fit time, never refitted on adversarial data
    assert torch.equal(res.success, quality(mgm, res.x_adv, y, "classification") < 1)


def test_gmm_two_stage_recipe_beats_gmm(toy_data, toy_gmm):
    gmm = toy_gmm
    thr = float(gmm.threshold)
    x, y = toy_data.test.images(), toy_data.test.target_tensor()
    eps = 0.1
    plain = _handled(gmm, FGSM(eps=eps)(gmm, x, y), y)
    res = GMMRecipe(eps, steps=30, restarts=1, stage1_steps=5).run(gmm, x, y)
    _in_ball(res.x_adv, x, eps)
    assert (res.info["target"] != y).all()
    assert _handled(gmm, res.x_adv, y) <= plain - 0.15
    assert float(gmm.threshold) == thr


@pytest.fixture(scope="module")
def ensemble(toy_data):
    members = [trained(toy_data, seed=s) for s in (0, 3)]
    ens = Ensemble(members, adv_eps=0.0)
    ens.fitted = True
    return ens.eval()


def test_ensemble_eq3_recipe_fools_the_ensemble(toy_data, ensemble):
    x, y = toy_data.test.images(), toy_data.test.target_tensor()
    eps = 0.2
    one_step = sign_average(list(ensemble.members), eps)(ensemble, x, y)
    _in_ball(one_step, x, eps)
    # eq. 3 by hand: x + eps * mean of the members' gradient signs (clipped to the box)
    signs = []
    for m in ensemble.members:
        xa = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(m(xa), y, reduction="sum").backward()
        signs.append(xa.grad.sign())
    ref = (x + eps * torch.stack(signs).mean(0)).clamp(0, 1)
    assert torch.allclose(one_step, ref, atol=1e-6)
    clean = _handled(ensemble, x, y)
    plain = _handled(ensemble, FGSM(eps=eps)(ensemble, x, y), y)  # the original attack, on the average
    res = EnsembleRecipe(eps, steps=10, restarts=1).run(ensemble, x, y)
    assert _handled(ensemble, res.x_adv, y) <= min(plain, clean - 0.5), (clean, plain)


@pytest.fixture(scope="module")
def denoisers(toy_data) -> dict[int, Denoiser]:
    """Tiny denoiser defences by seed: 0 is the victim, the others the attacker's own copies."""
    def make(seed: int) -> Denoiser:
        torch.manual_seed(seed)
        d = Denoiser.build(arch="resnet20", task="classification", in_channels=1, num_outputs=2, width=0.25,
                           depth=0.34, mean=[0.5], std=[0.25], ae_width=4)
        return d.fit(toy_data, TINY, seed=seed)

    return {s: make(s) for s in (0, 11, 12)}


def test_denoiser_limited_knowledge_recipe_transfers(toy_data, denoisers):
    victim = denoisers[0]
    x, y = toy_data.test.images(), toy_data.test.target_tensor()
    eps = 0.2  # these toy denoisers (trained for feature invariance to noise) let almost nothing transfer at 0.1
    surrogates = [denoisers[s].classifier for s in (11, 12)]
    # the original (transfer) attack: FGSM from one surrogate
    plain = _handled(victim, FGSM(eps=eps)(surrogates[0], x, y), y)
    res = DenoiserRecipe(eps, surrogates=surrogates, steps=10, restarts=1, transfer_steps=30).run(victim, x, y)
    _in_ball(res.x_adv, x, eps)
    assert _handled(victim, res.x_adv, y) <= plain - 0.1
    assert isinstance(recipe_for(victim, eps, surrogates=surrogates), DenoiserRecipe)
    with pytest.raises(MedsecError, match="surrogate"):
        DenoiserRecipe(eps)


def test_rbf_patience_and_diversity_beats_fgsm(toy_data):
    torch.manual_seed(0)
    rbf = RBF.build(task="classification", in_channels=1, num_outputs=2, width=0.125, depth=0.25,
                    mean=[0.5], std=[0.25])
    rbf.fit(toy_data, TINY)
    x, y = toy_data.test.images(), toy_data.test.target_tensor()
    eps = 0.1
    plain = _handled(rbf, FGSM(eps=eps)(rbf, x, y), y)
    res = RBFRecipe(eps, steps=20, restarts=1).run(rbf, x, y)
    _in_ball(res.x_adv, x, eps)
    assert _handled(rbf, res.x_adv, y) <= min(plain - 0.1, 0.3)
    assert isinstance(recipe_for(rbf, eps), RBFRecipe)


def test_bpda_passes_gradients_through_a_non_differentiable_step(victim, toy_data):
    x = toy_data.test.images()[:8]
    quantise = BPDA(lambda t: torch.round(t * 4) / 4)
    xa = x.clone().requires_grad_(True)
    quantise(xa).sum().backward()
    assert torch.allclose(xa.grad, torch.ones_like(x))  # identity backward
    assert torch.equal(quantise(x), torch.round(x * 4) / 4)  # exact forward


def test_best_of_never_worse_than_each_attack(toy_data, victim):
    x, y = toy_data.test.images(), toy_data.test.target_tensor()
    a, b = FGSM(eps=0.05), PGD(eps=0.05, steps=5)
    qa = quality(victim, a(victim, x, y), y, "classification")
    qb = quality(victim, b(victim, x, y), y, "classification")
    every = BestOf([("fgsm", a), ("pgd", b)], only_unbroken=False).run(victim, x, y)
    assert (every.info["quality"] <= torch.minimum(qa, qb) + 1e-6).all()
    # as AutoAttack: the second attack only sees what the first did not fool; no image fooled by either is lost
    seen: list[int] = []

    class Counting(PGD):
        def _attack(self, ctx):  # type: ignore[no-untyped-def]
            seen.append(ctx.x.shape[0])
            return super()._attack(ctx)

    best = BestOf([("fgsm", a), ("pgd", Counting(eps=0.05, steps=5))]).run(victim, x, y)
    assert seen == [int((qa >= 1).sum())] and 0 < seen[0] < x.shape[0]
    assert bool((best.success >= (qa < 1)).all()) and int(best.success.sum()) > int((qa < 1).sum())
    assert torch.equal(best.success, best.info["quality"] < 1)


def test_recipes_reject_bad_budgets():
    with pytest.raises(MedsecError):
        MGMRecipe(1.5)
    with pytest.raises(MedsecError):
        RBFRecipe(-0.1)


def test_denoiser_recipe_with_transfer_techniques_selects_on_the_surrogates_only(toy_data, victim, denoisers):
    target = denoisers[0]
    x, y = toy_data.test.images(), toy_data.test.target_tensor()
    eps = 0.1
    # every model the attacker owns: a denoiser copy and a plain network
    surrogates = [denoisers[11].classifier, trained(toy_data, seed=7)]
    recipe = DenoiserRecipe(eps, surrogates=surrogates, steps=5, restarts=1, transfer_steps=10)
    res = recipe.run(target, x, y)
    _in_ball(res.x_adv, x, eps)
    # the victim never shapes the samples: the same surrogates give the same images against another victim
    assert torch.equal(res.x_adv, recipe.run(victim, x, y).x_adv)
    plain = _handled(target, DenoiserRecipe(eps, surrogates=surrogates, steps=5, restarts=1, transfer=False)(
        target, x, y), y)
    assert _handled(target, res.x_adv, y) <= plain + 1e-9  # more candidates, judged on the surrogates
    assert "momentum, input diversity, translation invariance" in recipe.describe()


def test_surrogate_selection_averages_over_the_same_diversified_views_for_every_candidate(toy_data, denoisers):
    from medsec.attacks.adaptive.strategies import SurrogateTransfer
    from medsec.attacks.transfer import InputDiversity

    x, y = toy_data.test.images()[:16], toy_data.test.target_tensor()[:16]
    sur = [denoisers[s].classifier for s in (11, 12)]
    xa = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    plain = SurrogateTransfer(sur, 0.1, selection_views=0, seed=3)
    assert torch.equal(plain._selection_effectiveness(xa, y), plain._effectiveness(xa, y))
    st = SurrogateTransfer(sur, 0.1, selection_views=3, seed=3)
    gen = torch.Generator().manual_seed(3)
    views = [xa] + [InputDiversity(p=1.0)(xa, gen) for _ in range(3)]
    expected = sum(st._effectiveness(v, y) for v in views) / 4
    torch.testing.assert_close(st._selection_effectiveness(xa, y), expected)
    torch.testing.assert_close(st._selection_effectiveness(xa, y), st._selection_effectiveness(xa, y))
    with pytest.raises(MedsecError, match="selection_views"):
        SurrogateTransfer(sur, 0.1, selection_views=-1)


def test_surrogate_selection_keeps_the_first_candidate_fooling_the_most_surrogates(toy_data, denoisers):
    from medsec.attacks.adaptive.strategies import SurrogateTransfer
    from medsec.attacks.transfer import LogitEnsemble, transfer_attack

    x, y = toy_data.test.images()[:24], toy_data.test.target_tensor()[:24]
    sur = [denoisers[s].classifier for s in (11, 12)]
    eps = 0.05
    extra = [transfer_attack(eps, 5, ti_size=7, grad_model=LogitEnsemble(sur).eval(), seed=1)]
    st = SurrogateTransfer(sur, eps, steps=3, restarts=2, candidates=extra, selection_views=0, seed=1)
    cands = st._candidates(x, y)
    assert len(cands) == 1 + 1 + 2 + 1  # given, momentum, restarts, one-step
    eff = torch.stack([st._selection_effectiveness(c, y) for c in cands])  # (candidates, images)
    # the share of surrogates fooled, no loss term
    fooled = torch.stack([sum((m(c).argmax(1) != y).float() for m in sur) / 2 for c in cands])
    assert torch.equal(eff, fooled)
    first_best = (eff == eff.max(0).values).float().argmax(0)  # ties go to the earliest candidate
    expected = torch.stack([cands[int(k)][i] for i, k in enumerate(first_best)])
    res = st.run(denoisers[0], x, y)
    assert torch.equal(res.x_adv, expected)
    torch.testing.assert_close(res.info["surrogate_effectiveness"], eff.max(0).values)
