"""Optimiser construction with validation, as the paper's experiments use them.

The paper's "L2" baseline is the optimiser's *coupled* weight decay (``grad += λ·w`` on every parameter, biases
and output layer included); "NS Adam" in the RL chapter is Adam with ``betas=(0.99, 0.99)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(params: Iterable[torch.Tensor] | Iterable[dict], name: str = "sgd", lr: float = 0.01, *,
                   momentum: float = 0.0, weight_decay: float = 0.0,
                   betas: tuple[float, float] | None = None, eps: float = 1e-8) -> torch.optim.Optimizer:
    """Build ``torch.optim.SGD``, ``Adam`` or ``AdamW``.

    Args:
        params: parameters (or param-group dicts), e.g. ``model.parameters()``.
        name: ``"sgd"``, ``"adam"`` or ``"adamw"`` (case-insensitive).
        lr: learning rate (> 0).
        momentum: SGD only, in ``[0, 1)``.
        weight_decay: >= 0. Coupled L2 for SGD and Adam (the paper's "L2"), decoupled for AdamW.
        betas: Adam/AdamW only, each in ``[0, 1)``; default ``(0.9, 0.999)``.
        eps: Adam/AdamW epsilon.
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not (lr > 0):
        raise ValueError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    params = list(params)
    if not params:
        raise ValueError("make_optimizer got no parameters (an empty iterator? model.parameters() can be used once)")
    if key == "sgd":
        if betas is not None:
            raise ValueError("betas apply to adam/adamw, not sgd; use momentum for sgd")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if momentum:
        raise ValueError(f"momentum applies to sgd only; for {key} set betas=(beta1, beta2) instead")
    betas = (0.9, 0.999) if betas is None else tuple(betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    cls = torch.optim.Adam if key == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
