"""Task-boundary resets (head reset and retraining, incremental CIFAR).

- :func:`reset_head`: Continual ImageNet *zeroes* the output layer at the start of every task (all methods);
  incremental CIFAR-100's "head resetting" baseline re-initialises it (kaiming-normal 'linear', bias 0).
- :func:`reset_parameters`: "retrain from scratch" — re-initialise the whole network the way it was initialised.

Difference from upstream (deliberate): upstream kept the SGD momentum buffers (and Adam moments) of the reset
parameters, so the first steps after a reset still pushed along the old task's direction. Here, when an
optimiser is given, the state of exactly the reset parameters is deleted, so they restart like fresh parameters
(momentum buffer re-created from the next gradient, Adam's step count from 0). Pass ``optimizer=None`` to keep it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

HEAD_MODES = ("zero", "reinit", "default")


def clear_optimizer_state(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> int:
    """Delete the optimiser state (momentum buffers, Adam moments and step) of ``params``; returns how many
    parameters had state."""
    n = 0
    for p in params:
        if optimizer.state.pop(p, None) is not None:
            n += 1
    return n


def _head_of(layer: nn.Module) -> nn.Module:
    if getattr(layer, "weight", None) is not None:
        return layer
    for attr in ("head", "fc"):  # a whole network was passed: lopbook nets name the output layer head (ResNet: fc)
        if isinstance(getattr(layer, attr, None), nn.Module) and getattr(getattr(layer, attr), "weight", None) is not None:
            return getattr(layer, attr)
    raise ValueError(f"reset_head needs the output layer (e.g. model.head) or a network with a .head/.fc, "
                     f"got {type(layer).__name__}")


@torch.no_grad()
def reset_head(layer: nn.Module, optimizer: torch.optim.Optimizer | None = None, mode: str = "zero") -> nn.Module:
    """Reset the output layer ``layer`` (or ``model.head`` / ``model.fc`` if a whole network is passed).

    Modes: ``"zero"`` (weights and bias 0; Continual ImageNet), ``"reinit"`` (kaiming-normal with gain 1
    ('linear'), bias 0; CIFAR-100 head resetting), ``"default"`` (the layer's own ``reset_parameters()``).
    If ``optimizer`` is given, the layer's optimiser state is cleared (upstream did not; see the module docs).
    Returns the layer that was reset.
    """
    if mode not in HEAD_MODES:
        raise ValueError(f"unknown head reset mode {mode!r}; choose one of {', '.join(HEAD_MODES)}")
    head = _head_of(layer)
    if mode == "zero":
        head.weight.zero_()
    elif mode == "reinit":
        nn.init.kaiming_normal_(head.weight, nonlinearity="linear")
    else:
        head.reset_parameters()
    if mode != "default" and getattr(head, "bias", None) is not None:
        head.bias.zero_()
    if optimizer is not None:
        clear_optimizer_state(optimizer, head.parameters())
    return head


@torch.no_grad()
def reset_parameters(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Re-initialise the whole network ("retrained network" baseline) and clear the optimiser state of all its
    parameters (upstream kept the momentum; see the module docs).

    Uses the network's own ``reset_parameters()`` when it defines one (every lopbook net does, re-applying its
    construction-time init). Otherwise falls back to calling ``reset_parameters()`` on every submodule that has
    one, i.e. PyTorch's default init — which is *not* the init of a network that customised it, hence a warning.
    """
    if callable(getattr(model, "reset_parameters", None)):
        model.reset_parameters()
    else:
        warnings.warn(f"{type(model).__name__} has no reset_parameters(); re-initialising each submodule with "
                      f"PyTorch's default init, which may differ from how the network was initialised",
                      stacklevel=2)
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    if optimizer is not None:
        clear_optimizer_state(optimizer, model.parameters())
