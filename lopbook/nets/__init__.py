"""Networks used in the paper's experiments (activations are modules, so hooks can see them)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MLP": "mlp",
    "ConvNet": "convnet",
    "ResNet18": "resnet",
    "PPOActor": "ppo",
    "PPOCritic": "ppo",
    "make_activation": "mlp",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
