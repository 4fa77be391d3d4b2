"""The paper's CIFAR ResNet-18 (upstream ``torchvision_modified_resnet``), with activations as modules.

BasicBlock [2, 2, 2, 2], widths 64/128/256/512, a 3x3 stride-1 stem without max-pool, every conv with a bias,
a 1x1 conv + BN downsample at the first block of stages 2-4, global average pooling and a linear head.
Init (as upstream re-applies it): kaiming-normal (fan_in, relu) for every conv, kaiming-normal 'linear' for
the head, all biases 0, BN γ = 1, β = 0.

Each block owns its ReLU modules (``relu1`` inside, ``relu2`` after the residual sum), so forward hooks see one
layer's features each. For continual backprop (:mod:`lopbook.algos.units`) the 17 hidden layers of the paper's
network are replaceable: each block's conv1 (conv1 -> bn1 -> relu1 -> conv2, replaced by zeroing conv2's input
channels) and, as *residual units*, the stem and each block's conv2, whose outputs also travel through the skip
connections: a block's conv2 unit is silenced at bn2 (scale and shift 0) instead; a stem unit, whose ReLU follows
its BN, is reset as the paper's code does (bn1 to identity, the first block's input channel 0). The 1x1 projection
shortcuts are marked ``replaceable = False``: the paper's CBP does not treat them as hidden layers.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and ReLU, plus the identity (or a 1x1 conv + BN) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=True),
                                            nn.BatchNorm2d(out_ch))
            self.downsample[0].replaceable = False  # a projection shortcut, not one of the 17 hidden layers
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet18(nn.Module):
    """CIFAR ResNet-18 of the paper's class-incremental CIFAR-100 experiment.

    Args:
        num_classes: output logits (the experiment masks the inactive classes).
        in_channels: image channels.
        widths: channels per stage (64, 128, 256, 512 in the paper; smaller for CPU-scale runs).
    """

    def __init__(self, num_classes: int = 100, in_channels: int = 3,
                 widths: tuple[int, int, int, int] = (64, 128, 256, 512)):
        super().__init__()
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts, got {widths}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, ch = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(ch, w, stride), BasicBlock(w, w, 1)))
            ch = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The upstream init: kaiming-normal convs (relu) and head (linear), zero biases, identity BN."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_in", nonlinearity="linear")
        nn.init.zeros_(self.fc.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 512-d representation (input of ``fc``), used for rank metrics."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.flatten(self.avgpool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
