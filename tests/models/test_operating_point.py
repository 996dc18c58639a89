"""Multi-label victims decide at an operating point chosen on validation data, not at probability 0.5."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsec.data.base import Split
from medsec.errors import MedsecError
from medsec.models.training import decision_offsets, set_operating_point


def test_prevalence_rule_calls_each_finding_as_often_as_it_occurs() -> None:
    torch.manual_seed(0)
    y = (torch.rand(200, 3) < torch.tensor([0.05, 0.2, 0.5])).float()
    z = 2.0 * y + torch.randn(200, 3) - 3.0  # a model that ranks well but rarely reaches logit 0
    t = decision_offsets(z, y, "prevalence")
    called = (z - t > 0).float().mean(0)
    assert torch.allclose(called, y.mean(0), atol=0.011)
    assert ((z > 0).float().mean(0)[:2] < y.mean(0)[:2]).all()  # at 0.5 the rare findings are under-called
    assert torch.equal(decision_offsets(z, y, "half"), torch.zeros(3))
    yj = decision_offsets(z, y, "youden")
    fpr_tpr = [((z[:, k] > yj[k]) & (y[:, k] > 0)).sum() / y[:, k].sum() for k in range(3)]
    assert all(v > 0.5 for v in fpr_tpr)


def test_a_finding_without_positives_keeps_logit_zero_and_unknown_rules_are_named() -> None:
    y = torch.zeros(20, 2)
    y[:5, 1] = 1
    z = torch.randn(20, 2)
    assert decision_offsets(z, y, "prevalence")[0] == 0
    with pytest.raises(MedsecError, match="operating point rule"):
        decision_offsets(z, y, "median")


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1)[:, :4])


def test_set_operating_point_shifts_only_the_bias() -> None:
    torch.manual_seed(0)
    model = _Toy().eval()
    px = torch.randint(0, 256, (50, 1, 2, 2), dtype=torch.uint8)
    y = (torch.rand(50, 3) < 0.2).float()
    split = Split(px.numpy(), y.numpy())
    x = split.images()
    w, z0 = model.head.weight.clone(), model(x).detach()
    offsets = set_operating_point(model, split, "prevalence")
    z1 = model(x).detach()
    assert torch.equal(model.head.weight, w)
    assert torch.allclose(z0 - z1, torch.tensor(offsets).expand_as(z0), atol=1e-4)  # rankings unchanged
    with pytest.raises(MedsecError, match="no linear output layer"):
        set_operating_point(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), split, "prevalence")
