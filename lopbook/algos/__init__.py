"""Plasticity methods. Every method is an object with ``step()``, called right after ``optimizer.step()``.

- :class:`ContinualBackprop` (``cbp.py``): generate-and-test on top of any optimizer (the paper's CBP).
- :class:`ReDo` (``redo.py``): reset units whose ReDo dormancy score is below a threshold.
- :class:`ShrinkAndPerturb` (``shrink_perturb.py``), :class:`L2Init` (``l2init.py``).
- plain L2 is the optimizer's ``weight_decay`` (coupled, as in the paper): see :func:`make_optimizer`.
- task-boundary resets (head reset, retrain from scratch) are in ``resets.py``.
- :func:`build_method` (``factory.py``) turns a config dict into the method objects.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ContinualBackprop": "cbp",
    "ReDo": "redo",
    "ShrinkAndPerturb": "shrink_perturb",
    "L2Init": "l2init",
    "reset_head": "resets",
    "reset_parameters": "resets",
    "make_optimizer": "optim",
    "build_method": "factory",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # lazy, so one module's import cost is paid only when used
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
