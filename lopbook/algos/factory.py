"""Build plasticity methods from a config dict (the experiments' ``method`` entry).

A spec is ``{"name": <method>, **hyperparameters}``:

=========  ====================================================================  =================================
name       hyperparameters                                                       returns
=========  ====================================================================  =================================
bp         (none; ``weight_decay`` must be absent or 0)                          ``[]``
l2         ``weight_decay`` > 0 (the optimiser's coupled L2)                     ``[]``
snp        ``noise_std``, optional ``weight_decay``, ``shrink``, ``targets``     ``[ShrinkAndPerturb]``
l2init     ``strength``, optional ``lr`` (default: the optimiser's lr)           ``[L2Init]``
cbp        passed to ``ContinualBackprop(model, optimizer, **kw)``               ``[ContinualBackprop]``
redo       passed to ``ReDo(model, optimizer, **kw)``                            ``[ReDo]``
=========  ====================================================================  =================================

``weight_decay`` may appear in any spec (the RL chapter runs CBP and ReDo with L2 1e-4). It belongs to the
optimiser: build the optimiser with :func:`optimizer_kwargs_for` (``make_optimizer(params, **opt_cfg,
**optimizer_kwargs_for(spec))``); :func:`build_method` checks that the optimiser really has that weight decay.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

METHODS = ("bp", "l2", "snp", "l2init", "cbp", "redo")
OPTIMIZER_KEYS = ("weight_decay",)
_FIXED_KEYS = {
    "bp": (set(), set()),
    "l2": ({"weight_decay"}, set()),
    "snp": ({"noise_std"}, {"shrink", "targets"}),
    "l2init": ({"strength"}, {"lr"}),
}
_ENGINES = {"cbp": ("lopbook.algos.cbp", "ContinualBackprop"), "redo": ("lopbook.algos.redo", "ReDo")}


def _check_name(spec: Mapping[str, Any]) -> str:
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"a method spec is a dict with a 'name' key (one of {', '.join(METHODS)}), got {spec!r}")
    name = str(spec["name"]).lower()
    if name not in METHODS:
        raise ValueError(f"unknown method {spec['name']!r}; choose one of {', '.join(METHODS)}")
    return name


def optimizer_kwargs_for(spec: Mapping[str, Any]) -> dict[str, float]:
    """The optimiser keyword arguments a method spec implies: ``{"weight_decay": λ}`` (0.0 if absent)."""
    name = _check_name(spec)
    wd = float(spec.get("weight_decay", 0.0))
    if wd < 0:
        raise ValueError(f"weight_decay must be >= 0, got {wd}")
    if name == "l2" and wd <= 0:
        raise ValueError("method 'l2' needs weight_decay > 0 (e.g. {'name': 'l2', 'weight_decay': 1e-4})")
    if name == "bp" and wd > 0:
        raise ValueError("method 'bp' with weight_decay > 0 is the L2 baseline: use {'name': 'l2', ...}")
    return {"weight_decay": wd}


def _optimizer_weight_decay(optimizer: torch.optim.Optimizer) -> set[float]:
    return {float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups}


def _engine_class(name: str) -> type:
    module, cls = _ENGINES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"method {name!r} needs {module}.{cls}, which could not be imported: {e}") from e


def _check_engine_kwargs(name: str, cls: type, kwargs: dict[str, Any]) -> None:
    sig = inspect.signature(cls.__init__)
    params = list(sig.parameters.values())[3:]  # self, model, optimizer
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"unknown keys {unknown} for method {name!r}; {cls.__name__} accepts "
                         f"{sorted(accepted)} (plus 'weight_decay' for the optimiser)")


def build_method(spec: Mapping[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> list:
    """Instantiate the method objects for ``spec`` (see the module docstring); call each one's ``step()`` right
    after ``optimizer.step()``. Raises ``ValueError`` on an unknown name, unknown or missing keys, or an
    optimiser whose weight decay differs from the spec's."""
    name = _check_name(spec)
    wd = optimizer_kwargs_for(spec)["weight_decay"]
    have = _optimizer_weight_decay(optimizer)
    if have != {wd}:
        raise ValueError(f"method spec asks for weight_decay={wd} but the optimizer has {sorted(have)}; build it "
                         f"with make_optimizer(..., **optimizer_kwargs_for(spec))")
    kwargs = {k: v for k, v in spec.items() if k != "name" and k not in OPTIMIZER_KEYS}

    if name in _ENGINES:
        cls = _engine_class(name)
        _check_engine_kwargs(name, cls, kwargs)
        return [cls(model, optimizer, **kwargs)]

    required, optional = _FIXED_KEYS[name]
    required = required - set(OPTIMIZER_KEYS)
    unknown = sorted(set(kwargs) - required - optional)
    if unknown:
        allowed = sorted(required | optional | set(OPTIMIZER_KEYS))
        raise ValueError(f"unknown keys {unknown} for method {name!r}; allowed: {allowed}")
    missing = sorted(required - set(kwargs))
    if missing:
        raise ValueError(f"method {name!r} needs {missing}")

    if name in ("bp", "l2"):
        return []
    if name == "snp":
        from .shrink_perturb import ShrinkAndPerturb

        return [ShrinkAndPerturb(model, **kwargs)]
    from .l2init import L2Init

    lrs = {float(g["lr"]) for g in optimizer.param_groups}
    if "lr" not in kwargs and len(lrs) != 1:
        raise ValueError(f"l2init: the optimizer has several learning rates {sorted(lrs)}; give 'lr' in the spec")
    return [L2Init(model, strength=kwargs["strength"], lr=kwargs.get("lr", next(iter(lrs))))]
