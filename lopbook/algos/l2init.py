"""L2 Init: regenerative regularisation toward the initial parameters (Kumar, Marklund & Van Roy 2023).

Kumar et al. add ``λ ‖θ - θ₀‖²`` to the loss, so the optimiser sees the pull toward θ₀ (coupled, like the
paper's L2). This class applies it *decoupled*, right after the optimiser step::

    θ ← θ - lr · λ · (θ - θ₀)        (i.e. the distance to θ₀ shrinks by the factor 1 - lr·λ)

which is what plain SGD on the penalty ``(λ/2) ‖θ - θ₀‖²`` does, but independent of momentum or Adam's scaling
(as AdamW decouples L2). For the coupled, in-loss form use :meth:`L2Init.penalty`:
``loss = task_loss + l2init.penalty()`` and do not call :meth:`step`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class L2Init:
    """Decoupled pull of every parameter toward its value at construction time.

    Args:
        model: the network; θ₀ is a copy of its parameters *now* (construct right after initialisation).
        strength: λ >= 0.
        lr: the step size multiplying λ (normally the optimiser's learning rate); ``lr·λ`` must be in ``[0, 1]``.
    """

    def __init__(self, model: nn.Module, strength: float, lr: float) -> None:
        if not strength >= 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if lr * strength > 1:
            raise ValueError(f"lr*strength = {lr * strength} > 1 would overshoot the initial parameters; "
                             f"lower the strength")
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters")
        self.init_params = [p.detach().clone() for p in self.params]
        self.strength, self.lr = float(strength), float(lr)

    @torch.no_grad()
    def step(self) -> None:
        """``θ ← θ - lr·λ·(θ - θ₀)`` for every parameter."""
        w = self.lr * self.strength
        if w == 0:
            return
        for p, p0 in zip(self.params, self.init_params, strict=True):
            p.lerp_(p0, w)  # p + w (p0 - p)

    def penalty(self) -> torch.Tensor:
        """The coupled alternative: ``(λ/2) Σ ‖θ - θ₀‖²`` as a differentiable loss term (gradient λ(θ - θ₀))."""
        return 0.5 * self.strength * sum(((p - p0) ** 2).sum() for p, p0 in zip(self.params, self.init_params,
                                                                               strict=True))

    def distance(self) -> float:
        """``‖θ - θ₀‖₂`` over all parameters."""
        with torch.no_grad():
            return float(sum(((p - p0).double() ** 2).sum() for p, p0 in zip(self.params, self.init_params,
                                                                              strict=True)) ** 0.5)

    def state_dict(self) -> dict[str, Any]:
        return {"strength": self.strength, "lr": self.lr, "init_params": [p.clone() for p in self.init_params]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        init = state["init_params"]
        if len(init) != len(self.params) or any(a.shape != p.shape for a, p in zip(init, self.params, strict=True)):
            raise ValueError("L2Init checkpoint does not match this model's parameters")
        self.strength, self.lr = float(state["strength"]), float(state["lr"])
        self.init_params = [a.detach().clone().to(p.device, p.dtype) for a, p in zip(init, self.params, strict=True)]
