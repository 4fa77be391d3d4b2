"""One place that checks user input before anything runs: config values, seeds, devices, output paths.

``python -m lopbook run`` and ``sweep`` share these checks. Config values are checked against the type
annotations of each experiment's config dataclass (no per-class code): ``int`` fields refuse bools and
floats, ``float`` fields refuse non-finite values and strings, ``X | None``, ``list[X]``,
``tuple[X, ...]``, ``dict[K, V]`` and ``Literal[...]`` are followed recursively. Every failure raises
:class:`ValidationError` (a :class:`~lopbook.errors.ConfigError`, so also a ``ValueError``) whose message names
the fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lopbook.errors import ConfigError

MAX_SEEDS = 10_000        # per run or per sweep; more is a mistake (and a memory error) rather than a plan
MAX_SEED = 2**31 - 1      # every RNG in lopbook (numpy, torch, Python) accepts seeds up to here
DEVICE_RE = re.compile(r"cpu|cuda(:\d+)?")


class ValidationError(ConfigError):
    """A value that lopbook refuses before starting any work."""


# ------------------------------------------------------------------------------------------ config values


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _kind(value: Any) -> str:
    """``a str``, ``an int``: the type of ``value`` for a message."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def check_value(value: Any, tp: Any, name: str) -> None:
    """Raise :class:`ValidationError` unless ``value`` fits the annotation ``tp`` (see the module docstring)."""
    problem = _problem(value, tp, name)
    if problem:
        raise ValidationError(problem)


def _problem(value: Any, tp: Any, name: str) -> str | None:
    """A message when ``value`` does not fit ``tp``, else None."""
    if tp is Any or tp is object:
        return _non_finite(value, name)
    if _is_union(tp):
        options = typing.get_args(tp)
        problems = [_problem(value, t, name) for t in options]
        if all(problems):
            non_none = [p for t, p in zip(options, problems, strict=True) if t is not type(None)]
            return non_none[0] if len(non_none) == 1 else (
                f"{name}={value!r} is {_kind(value)}; expected {_type_name(tp)}")
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        return None if value in choices else f"{name}={value!r} is not one of {list(choices)}"
    if origin in (list, tuple, set, frozenset, Iterable) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"{name}={value!r} is {_kind(value)}; expected a list ({_type_name(tp)})"
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return f"{name}={value!r} has {len(value)} items; expected {len(args)} ({_type_name(tp)})"
            return next((p for i, (v, t) in enumerate(zip(value, args, strict=True))
                         if (p := _problem(v, t, f"{name}[{i}]"))), None)
        item = args[0] if args else Any
        return next((p for i, v in enumerate(value) if (p := _problem(v, item, f"{name}[{i}]"))), None)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            return f"{name}={value!r} is {_kind(value)}; expected a mapping ({_type_name(tp)})"
        kt, vt = typing.get_args(tp) or (Any, Any)
        for k, v in value.items():
            p = _problem(k, kt, f"{name} key") or _problem(v, vt, f"{name}[{k!r}]")
            if p:
                return p
        return None
    if tp is type(None):
        return None if value is None else f"{name}={value!r} must be None"
    if tp is bool:
        return None if isinstance(value, bool) else f"{name}={value!r} is {_kind(value)}; expected true/false"
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name}={value!r} is {_kind(value)}; expected a whole number (int)"
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}={value!r} is {_kind(value)}; expected a number (float)"
        return _non_finite(value, name)
    if tp is str:
        return None if isinstance(value, str) else f"{name}={value!r} is {_kind(value)}; expected a string"
    if isinstance(tp, type) and not isinstance(value, tp):
        return f"{name}={value!r} is {_kind(value)}; expected {tp.__name__}"
    return None


def _non_finite(value: Any, name: str) -> str | None:
    """Floats anywhere inside ``value`` must be finite (NaN/inf only ever end in a NaN curve or an SVD error)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}={value!r} is not a finite number; give a finite value"
    if isinstance(value, (list, tuple)):
        return next((p for i, v in enumerate(value) if (p := _non_finite(v, f"{name}[{i}]"))), None)
    if isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _non_finite(v, f"{name}[{k!r}]"))), None)
    return None


def field_types(config_cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of a config dataclass (``{}`` if they cannot be resolved)."""
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # annotations that name unavailable types: skip type checks, keep key checks
        return {}


def check_config_values(config_cls: type, values: Mapping[str, Any]) -> None:
    """Check every ``key: value`` against the field types of ``config_cls`` (unknown keys are not checked here)."""
    hints = field_types(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    for key, value in values.items():
        if key in names:
            check_value(value, hints.get(key, Any), key)


# ------------------------------------------------------------------------------------------ seeds, devices


def check_seed_list(seeds: Any, what: str = "seeds") -> list[int]:
    """Distinct integers in ``[0, MAX_SEED]``, at most :data:`MAX_SEEDS` of them."""
    fix = (f"give a count N >= 1 (seeds 0..N-1) or a list of distinct integers in 0..{MAX_SEED}, "
           f"at most {MAX_SEEDS} of them")
    if not isinstance(seeds, (list, tuple, range)):
        raise ValidationError(f"{what} must be a list of integers, got {type(seeds).__name__}; {fix}")
    if len(seeds) == 0:
        raise ValidationError(f"{what} is empty, so nothing would run; {fix}")
    if len(seeds) > MAX_SEEDS:
        raise ValidationError(f"{what} asks for {len(seeds)} seeds; {fix}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED]
    if bad:
        raise ValidationError(f"{what} {bad[:5]} are not integers in 0..{MAX_SEED}; {fix}")
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if list(seeds).count(s) > 1})
        raise ValidationError(f"{what} {dup} appear more than once; {fix}")
    return [int(s) for s in seeds]


def seed_range(count: Any, start: Any = 0) -> list[int]:
    """``[start, start + count)`` after checking both (the ``--seeds N --seed-start K`` flags)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SEEDS:
        raise ValidationError(f"--seeds {count!r}: give a number of seeds from 1 to {MAX_SEEDS}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= MAX_SEED - count + 1:
        raise ValidationError(f"--seed-start {start!r}: give a first seed from 0 to {MAX_SEED - count + 1}")
    return list(range(start, start + count))


def check_device(device: Any, require_available: bool = True) -> str:
    """``cpu``, ``cuda`` or ``cuda:<i>``; with ``require_available`` a CUDA device must exist here (torch is
    imported only to check a CUDA device)."""
    if not isinstance(device, str) or not DEVICE_RE.fullmatch(device):
        raise ValidationError(f"device {device!r} is not supported; use cpu, cuda or cuda:<index>")
    if device.startswith("cuda") and require_available:
        import torch

        if not torch.cuda.is_available():
            raise ValidationError(f"device {device} was asked for but torch sees no CUDA GPU; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValidationError(f"device {device} does not exist: torch sees {torch.cuda.device_count()} "
                                  f"GPU(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


# ------------------------------------------------------------------------------------------ output paths


def writable_dir(folder: Path, what: str, fix: str) -> None:
    """Fail unless ``folder`` exists as a writable folder or could be created (creates nothing)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValidationError(f"{what} cannot be created: {probe} is a file, not a folder; {fix}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValidationError(f"{what} is not writable: {probe} is read-only for you; {fix}")


def check_result_path(out: str | os.PathLike) -> Path:
    """A result path must end in ``.npz``, not be a folder, and sit in a folder this user can write."""
    path = Path(out).expanduser()
    fix = "choose another --out"
    if path.suffix != ".npz":
        raise ValidationError(f"--out {out} must end in .npz (result files are .npz archives); {fix}")
    if path.is_dir():
        raise ValidationError(f"--out {out} is a folder; give a file name ending in .npz")
    writable_dir(path.parent, f"--out {out}", fix)  # replacing a file needs a writable folder, nothing more
    return path


__all__ = ["ValidationError", "MAX_SEEDS", "MAX_SEED", "check_value", "check_config_values", "field_types",
           "check_seed_list", "seed_range", "check_device", "writable_dir", "check_result_path"]
