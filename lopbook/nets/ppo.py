"""PPO networks of the RL experiments (the paper's Methods, RL section).

Both are MLPs ``obs_dim -> 256 -> 256 -> out`` with ReLU and LeCun-uniform initialisation on every layer
(``U(±sqrt(3 / fan_in))``), biases 0. The policy is Gaussian with a state-independent, learnable ``log_std``
initialised to 0 (standard deviation 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Normal

from .mlp import MLP


class PPOActor(nn.Module):
    """Gaussian policy: ``mean = mean_net(obs)``, ``std = exp(log_std)`` shared by all states.

    Attributes:
        mean_net: the :class:`~lopbook.nets.mlp.MLP` computing the action mean (hidden layers are where CBP and
            the plasticity metrics look).
        log_std: ``nn.Parameter`` of shape ``(act_dim,)``, initialised to 0.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256),
                 activation: str | Sequence[str] = "relu") -> None:
        super().__init__()
        self.mean_net = MLP(obs_dim, hidden, act_dim, activation=activation, init="lecun")
        self.log_std = nn.Parameter(torch.zeros(int(act_dim)))

    def reset_parameters(self) -> None:
        """Re-initialise the mean net (LeCun uniform, biases 0) and set ``log_std`` back to 0."""
        self.mean_net.reset_parameters()
        with torch.no_grad():
            self.log_std.zero_()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The action mean."""
        return self.mean_net(obs)

    def dist(self, obs: torch.Tensor) -> Normal:
        """The policy ``pi(.|obs)`` as an element-wise ``Normal`` (sum ``log_prob`` over the last dim)."""
        mean = self.mean_net(obs)
        return Normal(mean, self.log_std.exp().expand_as(mean))


class PPOCritic(nn.Module):
    """State-value network ``V(obs)``; returns shape ``(N,)``.

    Attributes:
        value_net: the :class:`~lopbook.nets.mlp.MLP` ``obs_dim -> hidden -> 1``.
    """

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256),
                 activation: str | Sequence[str] = "relu") -> None:
        super().__init__()
        self.value_net = MLP(obs_dim, hidden, 1, activation=activation, init="lecun")

    def reset_parameters(self) -> None:
        """Re-initialise (LeCun uniform, biases 0)."""
        self.value_net.reset_parameters()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_net(obs).squeeze(-1)
