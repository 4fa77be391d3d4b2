"""The small ConvNet of the Continual ImageNet experiment (Dohare et al. 2024, Methods).

``3x32x32 -> conv 5x5 (32) -> ReLU -> maxpool 2 -> conv 3x3 (64) -> ReLU -> maxpool 2 -> conv 3x3 (128) -> ReLU
-> maxpool 2 -> flatten (128*2*2 = 512) -> fc 128 -> ReLU -> fc 128 -> ReLU -> fc num_classes``.
No padding, PyTorch's default initialisation (as upstream). Activations, pools and the flatten are modules, so a
forward hook on any ReLU sees that hidden layer's features.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn


def _check_input(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
        raise ValueError(f"ConvNet expects inputs of shape (N, 3, 32, 32), got {tuple(x.shape)}")
    return x


# a leaf for torch.fx, so symbolic tracing (used by the CBP engine's unit discovery) does not hit the shape check
torch.fx.wrap("_check_input")


class ConvNet(nn.Module):
    """The continual-ImageNet ConvNet for 32x32 RGB inputs.

    Attributes:
        features: ``nn.Sequential`` of the three conv/ReLU/maxpool stages.
        flatten: the ``nn.Flatten`` module (output dim :attr:`flat_dim` = 512).
        fc: ``nn.Sequential`` of the two hidden fully connected layers with their ReLUs.
        head: the output ``nn.Linear(128, num_classes)`` (zeroed at each task start in the paper's protocol).
        conv_layers, hidden_linears, activations: plain-list views of the hidden layers and their ReLUs, in order.
    """

    flat_dim = 128 * 2 * 2

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.fc = nn.Sequential(nn.Linear(self.flat_dim, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, self.num_classes)
        self.conv_layers: list[nn.Conv2d] = [m for m in self.features if isinstance(m, nn.Conv2d)]
        self.hidden_linears: list[nn.Linear] = [m for m in self.fc if isinstance(m, nn.Linear)]
        self.activations: list[nn.ReLU] = [m for m in (*self.features, *self.fc) if isinstance(m, nn.ReLU)]

    def reset_parameters(self) -> None:
        """Re-initialise every layer with PyTorch's default initialisation (the network's own init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.flatten(self.features(_check_input(x)))))
