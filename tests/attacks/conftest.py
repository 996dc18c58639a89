"""Tiny victims trained in-test on tiny separable data (CPU, about a second each)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyNet(nn.Module):
    """A small conv classifier with batch norm that exposes features(x) and forward_features(x)."""

    def __init__(self, k: int = 3, c: int = 1, size: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(8 * size * size, 16), nn.ReLU())
        self.head = nn.Linear(16, k)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.body(x)
        return self.head(f), f

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _bars(n: int, k: int, gen: torch.Generator, multi: bool = False) -> tuple[Tensor, Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=gen) * 0.5 + 0.2
    if multi:
        y = (torch.rand(n, k, generator=gen) < 0.5).float()
        for c in range(k):
            x[y[:, c] == 1, :, c * 2 + 1:c * 2 + 3, :] += 0.15
        return x.clamp(0, 1), y
    y = torch.randint(0, k, (n,), generator=gen)
    for c in range(k):
        x[y == c, :, c * 2:c * 2 + 3, :] += 0.15
    return x.clamp(0, 1), y


def _train(model: nn.Module, x: Tensor, y: Tensor, loss_fn, steps: int = 120) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="session")
def clf() -> tuple[nn.Module, Tensor, Tensor]:
    """(model, x, y): a 3-class classifier at 100% clean accuracy on 64 test images."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    xtr, ytr = _bars(256, 3, gen)
    model = _train(TinyNet(3), xtr, ytr, F.cross_entropy)
    x, y = _bars(64, 3, gen)
    keep = model(x).argmax(1) == y
    return model, x[keep][:48], y[keep][:48]


@pytest.fixture(scope="session")
def multilabel() -> tuple[nn.Module, Tensor, Tensor]:
    """(model, x, y): 3 sigmoid findings."""
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    xtr, ytr = _bars(256, 3, gen, multi=True)
    model = _train(TinyNet(3), xtr, ytr, F.binary_cross_entropy_with_logits)
    x, y = _bars(48, 3, gen, multi=True)
    return model, x, y


class TinySeg(nn.Module):
    """A 3-layer fully convolutional segmenter (2 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _lesions(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.rand(n, 1, 16, 16, generator=gen) * 0.3 + 0.2
    y = torch.zeros(n, 16, 16, dtype=torch.long)
    pos = torch.randint(2, 10, (n, 2), generator=gen)
    for i in range(n):
        r, c = int(pos[i, 0]), int(pos[i, 1])
        y[i, r:r + 4, c:c + 4] = 1
    x[:, 0][y == 1] += 0.3
    return x.clamp(0, 1), y


@pytest.fixture(scope="session")
def seg() -> tuple[nn.Module, Tensor, Tensor]:
    """(model, x, y): binary lesion segmentation on 16x16 images."""
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(2)
    xtr, ytr = _lesions(128, gen)
    model = _train(TinySeg(), xtr, ytr, F.cross_entropy, steps=150)
    x, y = _lesions(16, gen)
    return model, x, y
