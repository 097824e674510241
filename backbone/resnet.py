"""CIFAR-style ResNet-18 (3x3 stem, no max-pool), as used by Mammoth on 32x32 images."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbone import ContinualBackbone, Limits, register


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNetBody(nn.Module):
    """ResNet body: stem, four stages of two blocks, global average pooling."""

    def __init__(self, num_filters: int = 64, in_chans: int = 3, blocks: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, num_filters, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters)
        layers, in_planes = [], num_filters
        for i, n in enumerate(blocks):
            planes = num_filters * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


@register("resnet18", limits=Limits(minimum={"num_filters": 1}))
def resnet18(num_classes: int, in_chans: int = 3, num_filters: int = 64) -> ContinualBackbone:
    """CIFAR ResNet-18; ``--num_filters`` sets the width of the first stage."""
    body = CifarResNetBody(num_filters, in_chans)
    return ContinualBackbone(body, body.out_dim, num_classes)
