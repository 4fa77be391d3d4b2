"""Shrink-and-Perturb (Ash & Adams 2020) as the paper ran it: the shrink is the optimiser's weight decay.

Upstream form (default here): the "shrink" is the optimiser's *coupled* L2 weight decay (``weight_decay`` on the
optimiser: ``grad += λ·w``) and the "perturb" is i.i.d. ``N(0, σ²)`` noise added to every weight and bias of every
Linear/Conv layer right after each optimiser step. There is no multiplicative factor.

Ash & Adams' original form multiplies the parameters by a factor ``shrink`` < 1 and adds noise, once per task
boundary in their paper. ``ShrinkAndPerturb(..., shrink=0.999)`` applies ``θ ← shrink·θ + ε`` after every step.
With plain SGD (no momentum) a coupled decay λ at learning rate α is the same as ``shrink = 1 - α·λ`` applied
*before* the gradient step; with momentum or Adam the two differ (the coupled decay is filtered by the optimiser).

CIFAR-100 perturbed *all* parameters (BatchNorm included): pass ``targets="all"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ShrinkAndPerturb:
    """Adds ``N(0, noise_std²)`` to the target parameters after each optimiser step (optionally shrinking first).

    Args:
        model: the network.
        noise_std: σ of the perturbation (>= 0). Upstream: 1e-5 (ImageNet, pMNIST, CIFAR).
        shrink: ``None`` (default, upstream form: shrink through the optimiser's ``weight_decay``) or a factor in
            ``(0, 1]`` for ``θ ← shrink·θ + ε``.
        targets: ``"layers"`` (weights and biases of Linear/Conv layers; SCR, pMNIST, ImageNet) or ``"all"``
            (every parameter; CIFAR-100).
        generator: optional ``torch.Generator`` (on the parameters' device) for the noise; default the global RNG.

    Usage: ``loss.backward(); optimizer.step(); snp.step()``. With ``noise_std=0`` and no ``shrink`` the step does
    nothing at all (it does not even draw random numbers), so training equals plain backprop bit for bit.
    """

    def __init__(self, model: nn.Module, noise_std: float, shrink: float | None = None, *,
                 targets: str = "layers", generator: torch.Generator | None = None) -> None:
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if shrink is not None and not 0 < shrink <= 1:
            raise ValueError(f"shrink must be in (0, 1] or None (use the optimizer's weight_decay), got {shrink}")
        if targets == "layers":
            params = [p for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)
                      for p in (m.weight, m.bias) if p is not None]
        elif targets == "all":
            params = list(model.parameters())
        else:
            raise ValueError(f"targets must be 'layers' or 'all', got {targets!r}")
        if not params:
            raise ValueError(f"no parameters to perturb with targets={targets!r}")
        self.params = params
        self.noise_std = float(noise_std)
        self.shrink = None if shrink is None else float(shrink)
        self.targets = targets
        self.generator = generator

    @torch.no_grad()
    def step(self) -> None:
        """Shrink (if configured) and perturb every target parameter once."""
        for p in self.params:
            if self.shrink is not None and self.shrink != 1.0:
                p.mul_(self.shrink)
            if self.noise_std > 0:
                noise = torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=self.generator)
                p.add_(noise, alpha=self.noise_std)

    def state_dict(self) -> dict[str, Any]:
        """Configuration plus the generator state (if one was given), for checkpoints."""
        return {"noise_std": self.noise_std, "shrink": self.shrink, "targets": self.targets,
                "generator_state": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise_std, self.shrink = float(state["noise_std"]), state["shrink"]
        if state.get("generator_state") is not None:
            if self.generator is None:
                raise ValueError("checkpoint has a generator state but this ShrinkAndPerturb has no generator")
            self.generator.set_state(state["generator_state"])
