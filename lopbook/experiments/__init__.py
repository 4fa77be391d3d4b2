"""The experiment registry: what ``python -m lopbook run <experiment>`` and the chapters call.

Each module in this package defines ``EXPERIMENT = Experiment(...)``: a config dataclass, named presets
(at least ``quick`` and ``full``) and a ``run`` function. :func:`run_experiment` turns a preset into a
:class:`~lopbook.results.Result` with provenance, checkpointing the run so it resumes after an interruption.
Chapters call :func:`obtain`, which does the right thing for the current run mode.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lopbook.checkpoint import Checkpoint
from lopbook.errors import ConfigError, OutputError
from lopbook.locking import OutputLock
from lopbook.modes import Mode, check_mode, default_device, get_mode
from lopbook.results import (
    Result,
    ResultError,
    _json_default,
    git_commit,
    load_cached,
    load_result,
    provenance,
    save_result,
    stale_temporaries,
)
from lopbook.validation import (
    ValidationError,
    check_config_values,
    check_device,
    check_result_path,
    check_seed_list,
)


@dataclass
class RunOutput:
    """What an experiment's ``run`` returns: named arrays and a description of the data used."""

    arrays: dict[str, np.ndarray]
    dataset: dict[str, Any]  # {"name": str, "stand_in": bool, "note": str}


@dataclass(frozen=True)
class Preset:
    """A named config override with an honest description of its scale."""

    overrides: Mapping[str, Any]
    seeds: int
    paper_scale: bool
    note: str


RunFn = Callable[..., RunOutput]
# run(config, *, seeds: list[int], device: str, checkpoint: Checkpoint, progress: bool) -> RunOutput


@dataclass
class Experiment:
    """One experiment of the paper: its config type, presets and run function."""

    name: str
    title: str
    config_cls: type
    run: RunFn
    presets: dict[str, Preset] = field(default_factory=dict)
    uses_torch: bool = True  # False: numpy only, always on the CPU; a run never imports torch

    def __post_init__(self) -> None:
        missing = {"quick", "full"} - set(self.presets)
        if missing:
            raise ConfigError(f"experiment {self.name!r} lacks presets {sorted(missing)}")
        for pname, preset in self.presets.items():
            self.make_config(preset.overrides, where=f"preset {pname!r}")

    def make_config(self, overrides: Mapping[str, Any] | None = None, where: str = "config") -> Any:
        """Build the config dataclass; unknown keys and values of the wrong type (checked against the field
        annotations by :mod:`lopbook.validation`) are errors that name the fix."""
        overrides = dict(overrides or {})
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"{where} of experiment {self.name!r} has unknown keys {unknown}; "
                              f"valid keys are {sorted(names)}")
        try:
            check_config_values(self.config_cls, overrides)
        except ValidationError as err:
            raise ConfigError(f"{where} of experiment {self.name!r} is invalid: {err}") from err
        try:
            cfg = self.config_cls(**overrides)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where} of experiment {self.name!r} is invalid: {err}") from err
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            try:
                validate()
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{where} of experiment {self.name!r} is invalid: {err}") from err
        return cfg

    def preset_config(self, preset: str, overrides: Mapping[str, Any] | None = None) -> Any:
        if preset not in self.presets:
            raise ConfigError(f"experiment {self.name!r} has no preset {preset!r}; "
                              f"choose one of {sorted(self.presets)}")
        return self.make_config({**self.presets[preset].overrides, **(overrides or {})},
                                where=f"preset {preset!r} with overrides")


def _discover() -> dict[str, str]:
    """Module name for each experiment module in this package (imported lazily)."""
    return {m.name: f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def names() -> list[str]:
    """Names of all registered experiments."""
    return sorted(_discover())


def get(name: str) -> Experiment:
    """The :class:`Experiment` called ``name``; an unknown name lists the known ones."""
    modules = _discover()
    if name not in modules:
        raise ConfigError(f"unknown experiment {name!r}; known experiments: {', '.join(sorted(modules))}")
    exp = importlib.import_module(modules[name]).EXPERIMENT
    if exp.name != name:
        raise ConfigError(f"module {modules[name]} registers {exp.name!r}, expected {name!r}")
    return exp


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["lr=0.01", "methods=['bp','cbp']"]`` into a dict (values parsed as Python literals)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if raw.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            out[key.strip()] = float(raw)  # so that validation says "not a finite number", not "a str"
            continue
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw  # a bare string such as relu
    return out


def format_overrides(overrides: Mapping[str, Any]) -> str:
    """``key=value, ...``: config overrides as a result's scale note states them."""
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def run_mode(preset: str, mode: str | None = None) -> Mode:
    """The run mode a preset really runs at: ``quick`` for the quick preset, ``full`` for every other one.

    An explicit ``mode`` must agree (it used to be recorded as given, so paper-scale runs said "quick").
    """
    real: Mode = "quick" if preset == "quick" else "full"
    if mode is not None:
        if check_mode(mode) != real:
            raise ConfigError(f"mode {mode!r} does not match preset {preset!r}, which runs at {real!r} scale; "
                              f"drop --mode (the preset sets the scale)")
    return real


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def existing_result(out: Path, *, experiment: str, preset: str, config: dict[str, Any],
                    seeds: list[int]) -> Result | None:
    """The result already at ``out`` if it is this run's (same experiment, preset, config, seeds), else None
    when there is none; :class:`~lopbook.errors.OutputError` when it is another run's or unreadable."""
    if not out.exists():
        return None
    fix = "choose another --out, or pass --force to replace it"
    try:
        old = load_result(out)
    except ResultError as err:
        raise OutputError(f"--out {out} exists but is not a readable lopbook result ({err}); {fix}") from err
    m = old.meta
    diffs = []
    if (m.get("experiment"), m.get("preset")) != (experiment, preset):
        diffs.append(f"it is {m.get('experiment')}/{m.get('preset')}, this run is {experiment}/{preset}")
    if m.get("seeds") != seeds:
        diffs.append(f"it has {len(m.get('seeds', []))} seeds {_seed_text(m.get('seeds', []))}, this run "
                     f"{len(seeds)} seeds {_seed_text(seeds)}")
    old_cfg, new_cfg = m.get("config", {}), _jsonable(config)
    changed = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
    if changed and (m.get("experiment"), m.get("preset")) == (experiment, preset):
        shown = "; ".join(f"{k}: {old_cfg.get(k)!r} there, {new_cfg.get(k)!r} here" for k in changed[:3])
        diffs.append(f"its config differs ({shown}{'; ...' if len(changed) > 3 else ''})")
    elif changed and not diffs:
        diffs.append("its config differs")
    if diffs:
        raise OutputError(f"--out {out} already holds another result, created {m.get('created', '?')}: "
                          + "; ".join(diffs) + f". Not overwriting it: {fix}")
    return old


def _seed_text(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    return str(seeds[:6])[:-1] + (", ...]" if len(seeds) > 6 else "]")


def run_experiment(name: str, preset: str = "quick", *, seeds: int | list[int] | None = None,
                   device: str | None = None, out: str | Path | None = None,
                   overrides: Mapping[str, Any] | None = None, mode: Mode | None = None,
                   checkpoint_path: str | Path | None = None, fresh: bool = False, force: bool = False,
                   progress: bool = True, command: str | None = None) -> Result:
    """Run ``name`` with ``preset`` (plus ``overrides``) and return the result; save it if ``out`` is given.

    Everything is checked before any work starts: config values (types, finite floats), seeds, device and
    ``out`` (a ``.npz`` path in a writable folder). While it runs, the process holds ``<out>.lock``
    (:class:`~lopbook.locking.OutputLock`), so a second run to the same ``out`` stops at once with
    :class:`~lopbook.errors.BusyError`. An ``out`` that already holds this very result (same experiment,
    preset, config and seeds) is returned without training (``result.reused``); one that holds another
    result is never overwritten unless ``force=True``.

    Long runs checkpoint next to ``out`` (``<out>.ckpt``) and resume from there when restarted with the
    same config and seeds; the checkpoint is removed once the result is written.
    """
    exp = get(name)
    overrides = dict(overrides or {})
    cfg = exp.preset_config(preset, overrides)
    mode = run_mode(preset, mode)
    if seeds is None:
        seeds = exp.presets[preset].seeds
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    seed_list = check_seed_list(seeds)
    if exp.uses_torch:
        device = check_device(device or default_device(mode))
    else:  # --device is checked, but the run is on the CPU and provenance says so
        check_device(device or "cpu", require_available=False)
        device = "cpu"
    out_path = check_result_path(out) if out is not None else None
    if checkpoint_path is None and out_path is not None:
        checkpoint_path = Path(str(out_path) + ".ckpt")
    cfg_dict = dataclasses.asdict(cfg)
    lock = (OutputLock(out_path, what=f"result file {out_path}",
                       fix="wait for that run to finish, or stop it (kill <pid>) and rerun to resume")
            if out_path is not None else contextlib.nullcontext())
    with lock:
        if out_path is not None:
            if not force:
                old = existing_result(out_path, experiment=name, preset=preset, config=cfg_dict, seeds=seed_list)
                if old is not None:
                    old.reused = True
                    return old
            for tmp in stale_temporaries(out_path):  # left by a killed run; we hold the lock, nobody writes them
                tmp.unlink(missing_ok=True)
        ckpt = Checkpoint(checkpoint_path, key={"experiment": name, "config": cfg_dict, "seeds": seed_list})
        if fresh:
            ckpt.clear()
        ckpt.commits = [git_commit()]  # the code that trained, not whatever HEAD is when the file is saved
        output = exp.run(cfg, seeds=seed_list, device=device, checkpoint=ckpt, progress=progress)
        p = exp.presets[preset]
        scale_note = p.note + (f" (with overrides {format_overrides(overrides)})" if overrides else "")
        meta = provenance(experiment=name, preset=preset, mode=mode, config=cfg_dict, seeds=seed_list,
                          device=device, wall_time_s=ckpt.elapsed_s(), dataset=output.dataset,
                          scale={"paper_scale": p.paper_scale and not overrides, "note": scale_note},
                          command=command, commit=ckpt.commits[-1])
        meta["resumed_from_checkpoint"] = ckpt.resumed
        if len(set(ckpt.commits)) > 1:
            meta["git_commits_of_segments"] = ckpt.commits
        result = Result(arrays={k: np.asarray(v) for k, v in output.arrays.items()}, meta=meta)
        if out_path is not None:
            save_result(result, out_path)
            ckpt.clear()
    return result


def obtain(name: str, mode: Mode | None = None, preset: str = "full", **overrides: Any) -> Result:
    """What a chapter calls: load the cached result, or train a quick/full one, by run mode.

    ``cached``: load ``data/<name>/<preset>.npz`` (no training). ``quick``: run the ``quick`` preset in
    process (``overrides`` apply). ``full``: run ``preset`` at its scale, saving to ``runs/<name>/`` and
    resuming from the checkpoint there.
    """
    mode = mode or get_mode()
    if mode == "cached":
        return load_cached(name, preset)
    if mode == "quick":
        return run_experiment(name, "quick", overrides=overrides, mode="quick", progress=False)
    out = Path("runs") / name / f"{preset}.npz"
    return run_experiment(name, preset, overrides=overrides, out=out)
