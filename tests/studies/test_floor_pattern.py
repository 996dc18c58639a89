"""The converged floor and the paper's pattern: tiny models, real attacks."""

from __future__ import annotations

import copy

import torch
from torch import nn

from medsec.studies.floor import converge, converged_floor, victim_scores
from medsec.studies.pattern import across_seeds, adaptive_bound, paper_pattern, pattern_words, verdict


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()


def test_floor_converges_and_never_rises_above_what_the_row_found() -> None:
    torch.manual_seed(0)
    model = _linear()
    x = torch.rand(24, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image right at first
    prior = x.clone()
    prior[:6] = (x[:6] + 0.05 * torch.randn_like(x[:6]).sign()).clamp(0, 1)  # some other attack's images
    base = victim_scores(model, prior, y, "classification").mean() * 100
    out = converged_floor(model, x, y, "classification", eps=0.05, steps=5, seed=0, prior=[prior], max_rounds=4)
    values = [r["value"] for r in out["rounds"]]
    assert values[0] == round(float(base), 2)  # the row's other attacks seed the floor
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))  # per-image best: never rises
    assert out["value"] == values[-1]
    steps = [r["steps"] for r in out["rounds"][1:]]
    assert steps == [5 * 2**i for i in range(len(steps))]  # steps double each round, restarts grow
    assert out["converged"] == (len(values) < 5 or values[-2] - values[-1] < out["tol"])
    xa = out["x_adv"]
    assert xa.shape == x.shape and (xa - x).abs().max() <= 0.05 + 1e-6
    assert round(float(victim_scores(model, xa, y, "classification").mean()) * 100, 2) <= out["value"]


def test_floor_on_segmentation_keeps_the_lowest_dice() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=1).eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = converged_floor(model, x, y, "segmentation", eps=0.03, steps=4, seed=0, max_rounds=3)
    assert out["value"] < 100.0
    assert all(b <= a for a, b in zip([r["value"] for r in out["rounds"]],
                                      [r["value"] for r in out["rounds"]][1:], strict=False))


def _row(clean=80.0, no_def=5.0, with_def=70.0, adaptive=8.0, paper=(85.0, 0.0, 80.0, 4.0), floor=None) -> dict:
    cols = ("clean", "original_attack_no_defence", "original_attack_with_defence", "adaptive_attack_with_defence")
    r = {"clean": clean, "original_attack_no_defence": no_def, "original_attack_with_defence": with_def,
         "adaptive_attack_with_defence": adaptive, "paper": dict(zip(cols, paper, strict=True))}
    if floor is not None:
        r["floor"] = floor
    return r


def test_pattern_parts_and_verdicts() -> None:
    r = _row()
    pat = paper_pattern(r)
    assert pat["parts"]["victim_falls"]["ok"] and pat["parts"]["defence_holds"]["ok"]
    assert pat["parts"]["adaptive_breaks"]["ok"] and pat["met"]
    assert verdict(r) == "broken"
    assert adaptive_bound(r) == 14.0
    # not broken, floor converged above the bound: the victim resists; not converged: the defence holds
    r2 = _row(adaptive=60.0, floor={"value": 40.0, "converged": True})
    assert verdict(r2).startswith("victim resists")
    r3 = _row(adaptive=60.0, floor={"value": 40.0, "converged": False})
    assert verdict(r3).startswith("defence holds") and not paper_pattern(r3)["checks"]["floor_converged"]
    # taken to the paper's level, but the defence held only 12.5 against the original attack: broken, no drop
    r6 = _row(no_def=0.0, with_def=12.5, adaptive=0.0, paper=(85.5, 30.1, 43.2, 3.0),
              floor={"value": 0.0, "converged": True})
    assert not paper_pattern(r6)["parts"]["adaptive_breaks"]["ok"]
    assert verdict(r6).startswith("broken (") and "+12.5" in verdict(r6)
    r4 = _row(adaptive=60.0, floor={"value": 10.0, "converged": True})
    assert verdict(r4) == "defence holds at this budget (+50.0 points above the floor)"
    # a defence that did not hold in the paper need not hold here; the adaptive drop is then not required
    r5 = _row(no_def=60.0, with_def=50.0, adaptive=20.0, paper=(84.6, 62.3, 50.0, 22.9))
    p5 = paper_pattern(r5)
    assert p5["checks"]["holds_where_paper_held"] and p5["parts"]["adaptive_breaks"]["ok"]
    words = pattern_words(r5)
    assert words[0].startswith("victim falls: yes") and "did not in the paper" in words[1]
    # a held defence that the adaptive attack only dents is not broken, even under the bound
    r6 = _row(with_def=20.0, no_def=5.0, adaptive=10.0)
    assert not paper_pattern(r6)["parts"]["adaptive_breaks"]["ok"]


def test_across_seeds_means_ranges_and_disagreement() -> None:
    a, b = _row(adaptive=8.0), _row(adaptive=60.0, floor={"value": 10.0, "converged": True})
    a["floor"] = {"value": 2.0, "converged": True}
    out = across_seeds({0: a, 1: b, 2: copy.deepcopy(a)})
    col = out["seeds"]["columns"]["adaptive_attack_with_defence"]
    assert col["min"] == 8.0 and col["max"] == 60.0 and abs(col["mean"] - 25.33) < 0.01
    assert out["adaptive_attack_with_defence"] == col["mean"]
    assert out["verdict"] == "differs between seeds"
    assert out["seeds"]["verdicts"][0] == "broken" and not out["pattern"]["met"]
    same = across_seeds({0: a, 1: copy.deepcopy(a)})
    assert same["verdict"] == "broken" and same["pattern"]["met"]


def test_converge_attacks_only_what_is_still_handled_and_stops_when_flat() -> None:
    """The loop the floor and the adaptive attack share: round r attacks the images still handled with
    steps * 2**r and r + 1 restarts, keeps the better image per image, and stops when the value stops moving."""
    x = torch.zeros(10, 1, 2, 2)
    calls: list[tuple[int, int, list[int]]] = []
    breaks = {0: {0, 1, 2, 3}, 1: {4, 5}, 2: {6}, 3: set()}  # which images each round fools

    def attack(steps: int, restarts: int, r: int, idx: torch.Tensor) -> torch.Tensor:
        calls.append((steps, restarts, idx.tolist()))
        xa = x[idx].clone()
        for j, i in enumerate(idx.tolist()):
            if i in breaks[r]:
                xa[j] = 1.0  # this image now fools the system
        return xa

    def scores(xa: torch.Tensor, idx: torch.Tensor) -> object:
        return (xa.flatten(1).amax(1) < 1).double().numpy()

    out = converge(attack, scores, x, steps=3, task="classification", label="toy", tol=15.0, max_rounds=4)
    assert [c[:2] for c in calls] == [(3, 1), (6, 2), (12, 3)]
    assert calls[1][2] == [4, 5, 6, 7, 8, 9] and calls[2][2] == [6, 7, 8, 9]  # only what is still handled
    assert [r["value"] for r in out["rounds"]] == [60.0, 40.0, 30.0]  # 40 -> 30 moves by < 15: converged
    assert out["converged"] and out["value"] == 30.0
    assert (out["x_adv"].flatten(1).amax(1) == 1).sum() == 7


def test_converge_on_segmentation_attacks_again_only_images_above_the_success_dice() -> None:
    """Segmentation scores are Dice values: an image the attacks already brought to DICE_SUCCESS or below
    (where they stop on it) is not attacked again; the others are, with the doubled budget."""
    from medsec.attacks.core import DICE_SUCCESS

    x = torch.zeros(6, 1, 2, 2, dtype=torch.float64)
    dice_after = {0: [0.0, 0.05, DICE_SUCCESS, 0.3, 0.6, 0.9], 1: [0.0, 0.0, 0.0, 0.05, 0.5, 0.2]}
    calls: list[list[int]] = []

    def attack(steps: int, restarts: int, r: int, idx: torch.Tensor) -> torch.Tensor:
        calls.append(idx.tolist())
        return torch.tensor([dice_after[r][i] for i in idx.tolist()], dtype=torch.float64).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()

    def scores(xa: torch.Tensor, idx: torch.Tensor) -> object:
        return xa.flatten(1)[:, 0].double().numpy()

    out = converge(attack, scores, x, steps=2, task="segmentation", label="toy", tol=0.5, max_rounds=2)
    assert calls == [[0, 1, 2, 3, 4, 5], [3, 4, 5]]
    assert out["rounds"][-1]["attacked"] == 3
    assert out["value"] == round(100 * (0.0 + 0.05 + DICE_SUCCESS + 0.05 + 0.5 + 0.2) / 6, 2)
