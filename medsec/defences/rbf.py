"""Kernelized manifold mapping (Taghanaki et al., CVPR 2019) and the networks Levy et al. put it in.

The layer, exactly as the authors' Keras ``kernelized_mapper`` computes it on features reshaped to
(B, HW, C), with learnable centers (C x C, init U(0, 1)), Psi (C x C, init identity), betas (C, init 2.0),
W (C x C, Glorot uniform) and b (C, zeros):

    T = (Psi + eps)^T * (Psi + eps)          (element-wise; eps = float64 machine epsilon, as the code)
    h[p, j] = sqrt( sum_{a,l} (x[p,j] - centers[a,j]) T[a,l] (x[p,j] - centers[l,j]) )
    out[p, :] = exp(-betas * h[p, :]) @ W + b

Keras' sqrt clips its argument at 0; here it is clipped at 1e-12 so the gradient stays finite (the value
differs by at most 1e-6). The quadratic form is expanded per channel (A x^2 - M_j x + K_j) instead of
materialising the (B, HW, C, C) tensor the Keras code builds; tests check it against the direct formula.
As in the official model, the mapped output is concatenated with the block's features and fed onward.

Networks: a ResNet-34 (classification) and a U-Net (segmentation) with the layer after each convolution
block. Where the layers sit was not published; here "stage" (default: after each of ResNet-34's four
stages) or "block" (after every residual block), and after every encoder and decoder block of the U-Net.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from medsec.data.base import Task
from medsec.defences.base import TrainedNetworkDefence, register_defence
from medsec.defences.nets import register_factory
from medsec.errors import MedsecError
from medsec.models.networks import Classifier, Normalize, Segmenter, _BasicBlock, _scale_blocks, _scale_width


class KernelizedManifoldMapping(nn.Module):
    """The RBF mapping layer on (B, C, H, W) features; returns (B, C, H, W). See the module docstring."""

    def __init__(self, channels: int, betas: float = 2.0) -> None:
        super().__init__()
        c = channels
        self.channels = c
        self.centers = nn.Parameter(torch.rand(c, c))
        self.psi = nn.Parameter(torch.eye(c))
        self.betas = nn.Parameter(torch.full((c,), float(betas)))
        bound = math.sqrt(6.0 / (c + c))
        self.kernel = nn.Parameter(torch.empty(c, c).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(c))

    def transform(self) -> torch.Tensor:
        """T = (Psi + eps)^T * (Psi + eps), element-wise (symmetric)."""
        p = self.psi + sys.float_info.epsilon
        return p.T * p

    def _coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, M, K): the quadratic form per channel, q = A x^2 - M_j x + K_j."""
        t = self.transform()
        cm = self.centers  # (a, j)
        return t.sum(), cm.T @ (t.sum(1) + t.sum(0)), ((t @ cm) * cm).sum(0)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """h (B, C, H, W): the Mahalanobis-like distance of each feature value to its channel's centers."""
        return torch.sqrt(_quadratic(x, *self._coefficients()).clamp_min(_Q_MIN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise MedsecError(f"RBF layer built for {self.channels} channels got {x.shape[1]}")
        a, m, k = self._coefficients()
        g = _Kernel.apply(x, a, m, k, self.betas)
        # out[p, :] = g[p, :] @ W + b: a 1x1 convolution with W^T
        return nn.functional.conv2d(g, self.kernel.T[:, :, None, None], self.bias)


_Q_MIN = 1e-12


def _quadratic(x: torch.Tensor, a: torch.Tensor, m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q = A x^2 - M_j x + K_j per channel, computed as K + x (A x - M)."""
    return torch.addcmul(k.view(1, -1, 1, 1), x, a * x - m.view(1, -1, 1, 1))


class _Kernel(torch.autograd.Function):
    """g = exp(-beta_j * sqrt(max(A x^2 - M_j x + K_j, 1e-12))) in one pass. Autograd of the plain expression
    keeps a tensor per operation (the mapping was a third of the RBF U-Net's forward and backward time); this
    keeps x, sqrt(q) and g, and the backward pass recomputes q for the clamp's mask."""

    @staticmethod
    def forward(ctx, x, a, m, k, beta):  # type: ignore[no-untyped-def, override]
        h = _quadratic(x, a, m, k).clamp_min_(_Q_MIN).sqrt_()
        g = torch.exp(h * -beta.view(1, -1, 1, 1))
        ctx.save_for_backward(x, h, g, a, m, k, beta)
        return g

    @staticmethod
    def backward(ctx, dg):  # type: ignore[no-untyped-def, override]
        x, h, g, a, m, k, beta = ctx.saved_tensors
        bv = beta.view(1, -1, 1, 1)
        dgg = dg * g  # dL/dh = -beta * dg * g
        # dL/dq = dL/dh / (2 h) where q was above the clamp, else 0
        above = _quadratic(x, a, m, k) > _Q_MIN
        dq = torch.where(above, dgg * (-0.5 * bv) / h, torch.zeros_like(h))
        dx = dq * (2 * a * x - m.view(1, -1, 1, 1)) if ctx.needs_input_grad[0] else None
        da = (dq * x * x).sum() if ctx.needs_input_grad[1] else None
        dm = -(dq * x).sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        dk = dq.sum((0, 2, 3)) if ctx.needs_input_grad[3] else None
        db = -(dgg * h).sum((0, 2, 3)) if ctx.needs_input_grad[4] else None
        return dx, da, dm, dk, db


class _MapConcat(nn.Module):
    """features -> cat(features, RBF(features)) along channels (the official wiring)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.rbf = KernelizedManifoldMapping(channels)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.cat([f, self.rbf(f)], 1)


class RBFResNetBackbone(nn.Module):
    """ResNet (basic blocks; ResNet-34 layout by default) with RBF mapping + concatenation after each
    stage ("stage") or residual block ("block"); returns pooled (N, D) features."""

    def __init__(self, in_channels: int, layers: Sequence[int] = (3, 4, 6, 3),
                 planes: Sequence[int] = (64, 128, 256, 512), per: str = "stage") -> None:
        super().__init__()
        if per not in ("stage", "block"):
            raise MedsecError(f"RBF placement must be 'stage' or 'block', got {per!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, planes[0], 7, 2, 3, bias=False), nn.BatchNorm2d(planes[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        mods: list[nn.Module] = []
        cin = planes[0]
        for i, (n_blocks, c) in enumerate(zip(layers, planes, strict=True)):
            for b in range(n_blocks):
                mods.append(_BasicBlock(cin, c, 2 if (b == 0 and i > 0) else 1))
                cin = c
                if per == "block" or b == n_blocks - 1:
                    mods.append(_MapConcat(c))
                    cin = 2 * c
        self.body = nn.Sequential(*mods)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(self.stem(x)), 1), 1)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class RBFUNet(nn.Module):
    """A U-Net (double-conv blocks, max-pool down, transposed-conv up) with RBF mapping + concatenation
    after every encoder and decoder block; the concatenated maps also form the skip connections."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = (32, 64, 128, 256, 512)) -> None:
        super().__init__()
        chans = list(channels)
        self.enc = nn.ModuleList()
        self.enc_map = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.enc.append(_double_conv(cin, c))
            self.enc_map.append(_MapConcat(c))
            cin = 2 * c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        self.dec_map = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, c, 2, 2))
            self.dec.append(_double_conv(c + 2 * c, c))
            self.dec_map.append(_MapConcat(c))
            cin = 2 * c
        self.out = nn.Conv2d(cin, out_channels, 1)
        self.levels = len(chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, (blk, mp) in enumerate(zip(self.enc, self.enc_map, strict=True)):
            if i > 0:
                h = nn.functional.max_pool2d(h, 2)
            h = mp(blk(h))
            skips.append(h)
        for up, blk, mp, skip in zip(self.up, self.dec, self.dec_map, reversed(skips[:-1]), strict=True):
            h = up(h)
            h = mp(blk(torch.cat([h, skip], 1)))
        return self.out(h)


def build_rbf_model(task: Task, in_channels: int, num_outputs: int, width: float = 1.0, depth: float = 1.0,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    per: str = "stage") -> nn.Module:
    """ResNet-34 + RBF (classification) or U-Net + RBF (segmentation), scaled like build_model."""
    norm = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
    if task == "segmentation":
        chans = [_scale_width(c, width) for c in (32, 64, 128, 256, 512)]
        chans = chans[:max(3, round(len(chans) * depth + 0.49))]
        return Segmenter(RBFUNet(in_channels, num_outputs, chans), norm)
    if task != "classification":
        raise MedsecError(f"the RBF defence supports classification and segmentation, not {task!r}")
    planes = [_scale_width(c, width) for c in (64, 128, 256, 512)]
    backbone = RBFResNetBackbone(in_channels, _scale_blocks((3, 4, 6, 3), depth), planes, per)
    return Classifier(backbone, backbone.out_dim, num_outputs, norm)


register_factory("rbf", build_rbf_model)


@register_defence
class RBF(TrainedNetworkDefence):
    """Taghanaki et al.'s defence: the victim architecture with kernelized manifold mapping layers.

    ``RBF.build(task=..., in_channels=..., num_outputs=..., width=..., depth=..., mean=..., std=...)``
    then ``fit(data, train_cfg)``. Exposes ``classifier`` (the whole network; a Classifier or Segmenter)
    and ``rbf_layers`` (every KernelizedManifoldMapping in it, input to output order).
    """

    kind: ClassVar[str] = "rbf"
    factory: ClassVar[str] = "rbf"
    EXPOSES: ClassVar[tuple[str, ...]] = ("classifier", "rbf_layers")

    @property
    def rbf_layers(self) -> list[KernelizedManifoldMapping]:
        """The RBF mapping layers of the network."""
        return [m for m in self.classifier.modules() if isinstance(m, KernelizedManifoldMapping)]
