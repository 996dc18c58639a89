"""Victim networks: MONAI's DenseNet-121, ResNet-18/34/50 and U-Net, a CIFAR-style ResNet-20, and a VGG-16.

Every classifier is a `Classifier`: normalisation inside the model, a backbone giving the final hidden
representation (the features detectors such as MGM model), and a linear head. Segmenters are
`Segmenter`s mapping images to per-pixel logits (N, K, H, W). `width` scales channel counts and
`depth` the number of blocks per stage, so the quick profile runs scaled-down versions of the
published networks; `describe()` names the scaling in reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import DenseNet, ResNet, UNet
from torch import nn

from medsec.data.base import Task
from medsec.errors import MedsecError

CLASSIFIER_ARCHS = ("densenet121", "resnet18", "resnet34", "resnet50", "resnet20", "vgg16")
SEGMENTER_ARCHS = ("unet",)
ARCHS = CLASSIFIER_ARCHS + SEGMENTER_ARCHS


class Normalize(nn.Module):
    """(x - mean) / std per channel; images stay in [0, 1] outside the model."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalize -> backbone (N, D features) -> linear head (N, K logits)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_outputs: int, normalize: Normalize) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final hidden representation (N, D): what feature-space detectors model."""
        return self.backbone(self.normalize(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and features from one forward pass."""
        f = self.features(x)
        return self.head(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Segmenter(nn.Module):
    """normalize -> segmentation network -> per-pixel logits (N, K, H, W)."""

    def __init__(self, net: nn.Module, normalize: Normalize) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet20Backbone(nn.Module):
    """He et al.'s CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels), pooled features."""

    def __init__(self, in_channels: int, width: float = 1.0, blocks_per_stage: int = 3) -> None:
        super().__init__()
        widths = [max(4, round(c * width)) for c in (16, 32, 64)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, c in enumerate(widths):
            for b in range(blocks_per_stage):
                layers.append(_BasicBlock(cin, c, 2 if (b == 0 and i > 0) else 1))
                cin = c
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


class VGGBackbone(nn.Module):
    """Simonyan & Zisserman's VGG-16 feature stack (5 stages of 2/2/3/3/3 3x3 convolutions, max-pooling
    between stages), with batch norm and global average pooling instead of the fully connected layers.

    A third architecture family for the transfer study (no skip connections, no dense connections).
    `width` scales the channels (64/128/256/512/512) and `depth` the convolutions per stage.
    """

    def __init__(self, in_channels: int, width: float = 1.0, depth: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, (c, n) in enumerate(zip((64, 128, 256, 512, 512), _scale_blocks((2, 2, 3, 3, 3), depth), strict=True)):
            cout = _scale_width(c, width)
            for _ in range(n):
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            if i < 4:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(x), 1), 1)


class _DenseNetBackbone(nn.Module):
    def __init__(self, net: DenseNet) -> None:
        super().__init__()
        self.features = net.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.features(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1)


def _scale_blocks(blocks: Sequence[int], depth: float) -> list[int]:
    return [max(1, math.ceil(b * depth)) for b in blocks]


def _scale_width(c: int, width: float, minimum: int = 4) -> int:
    return max(minimum, round(c * width))


def build_model(
    arch: str,
    *,
    in_channels: int,
    num_outputs: int,
    task: Task,
    width: float = 1.0,
    depth: float = 1.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """A victim network `arch` for `task`, scaled by width and depth, normalising inside.

    mean/std: per-channel statistics of the training images (default 0.5/0.25).
    """
    if arch not in ARCHS:
        raise MedsecError(f"unknown architecture {arch!r}; available: {', '.join(ARCHS)}")
    if task == "segmentation" and arch not in SEGMENTER_ARCHS:
        raise MedsecError(f"{arch} is a classifier; segmentation needs one of {', '.join(SEGMENTER_ARCHS)}")
    if task != "segmentation" and arch in SEGMENTER_ARCHS:
        raise MedsecError(f"{arch} is a segmentation network; {task} needs one of {', '.join(CLASSIFIER_ARCHS)}")
    norm = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
    if arch == "unet":
        chans = [_scale_width(c, width) for c in (32, 64, 128, 256, 512)]
        n_levels = max(3, round(len(chans) * depth + 0.49))
        chans = chans[:n_levels]
        net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=num_outputs, channels=chans,
                   strides=[2] * (len(chans) - 1), num_res_units=2, norm="batch")
        return Segmenter(net, norm)
    backbone: nn.Module
    if arch == "densenet121":
        dn = DenseNet(spatial_dims=2, in_channels=in_channels, out_channels=1,
                      init_features=_scale_width(64, width), growth_rate=_scale_width(32, width),
                      block_config=_scale_blocks((6, 12, 24, 16), depth))
        dim = int(dn.class_layers.out.in_features)  # type: ignore[union-attr,arg-type]
        backbone = _DenseNetBackbone(dn)
    elif arch == "vgg16":
        vgg = VGGBackbone(in_channels, width=width, depth=depth)
        backbone, dim = vgg, vgg.out_dim
    elif arch == "resnet20":
        r20 = ResNet20Backbone(in_channels, width=width, blocks_per_stage=_scale_blocks([3], depth)[0])
        backbone, dim = r20, r20.out_dim
    else:
        spec = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
                "resnet50": ("bottleneck", [3, 4, 6, 3])}[arch]
        planes = [_scale_width(c, width) for c in (64, 128, 256, 512)]
        backbone = ResNet(block=spec[0], layers=_scale_blocks(spec[1], depth), block_inplanes=planes,
                          spatial_dims=2, n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
                          feed_forward=False)
        dim = int(planes[-1] * (4 if spec[0] == "bottleneck" else 1))
    return Classifier(backbone, dim, num_outputs, norm)


def describe(arch: str, width: float, depth: float) -> str:
    """The architecture's name as reports show it, with the scaling when it is not the published one."""
    if width == 1.0 and depth == 1.0:
        return arch
    return f"{arch} (scaled: width x{width:g}, depth x{depth:g})"
