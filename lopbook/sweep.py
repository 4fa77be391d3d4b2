"""Sweeps: seeds × methods × hyperparameters from one config file, run on submitit.

A sweep config (YAML or JSON) names an experiment, a base preset, a grid of overrides (cartesian
product of lists) and/or explicit variants, the seeds, an output folder and an executor::

    experiment: scr
    preset: full
    overrides: {bp_activations: [relu]}  # applied to every variant
    grid:                                # cartesian product of these lists (no grid, no variants:
                                         # one variant, the preset itself, over the seeds)
      replacement_rate: [1.0e-5, 1.0e-4, 1.0e-3]
    variants:                            # optional; each one is combined with every grid point
      - {name: cbp, set: {methods: [cbp]}}
    seeds: 30                            # or an explicit list [0, 1, 5]
    out: runs/sweeps/scr_cbp_rates       # relative paths are relative to the working directory
    executor: {type: local, max_parallel: 2, slurm: {partition: gpu, time: 1440, gpus_per_node: 1}}
    aggregate: cbp_rates                 # -> data/<experiment>/cbp_rates.npz (or a path ending in .npz)

Every point of the grid is validated with the experiment's own config class *before* anything runs.
One run is one (variant, seed); it writes ``<out>/runs/<variant-id>/seed<k>.npz`` through
:func:`lopbook.experiments.run_experiment` (same results store, provenance and ``<file>.ckpt``
checkpoint as ``python -m lopbook run``). Re-running a sweep skips finished runs and resumes the
interrupted ones from their checkpoints. :func:`aggregate` stacks the per-seed files into one result.

Execution uses submitit: ``LocalExecutor`` (subprocesses on this machine; no server) by default,
``SlurmExecutor`` (one job array, requeued on preemption) for a cluster, ``DebugExecutor``
(in-process) for tests and debugging.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shlex
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lopbook import experiments
from lopbook.experiments import ConfigError
from lopbook.results import (
    Result,
    ResultError,
    _json_default,
    atomic_write_bytes,
    data_dir,
    load_result,
    provenance,
    save_result,
)

TOP_KEYS = ("name", "experiment", "preset", "overrides", "grid", "variants", "seeds", "out", "device",
            "executor", "aggregate")
EXECUTOR_TYPES = ("local", "slurm", "debug")
EXECUTOR_KEYS = ("type", "max_parallel", "local", "slurm")
LOCAL_KEYS = ("timeout_min", "threads", "gpus")
MANIFEST = "manifest.json"


class SweepConfigError(ConfigError):
    """A sweep config that cannot be run; raised before any run starts."""


# --------------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: the overrides that distinguish it and the full config they give."""

    id: str
    label: str
    overrides: dict[str, Any]          # variant-specific (grid + explicit variant)
    config_overrides: dict[str, Any]   # everything passed to run_experiment (sweep overrides + variant)
    config: dict[str, Any]             # the resolved config dataclass as a dict


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a variant and a seed, with the result file it writes."""

    variant: Variant
    seed: int
    path: Path

    @property
    def checkpoint(self) -> Path:
        return Path(str(self.path) + ".ckpt")

    @property
    def name(self) -> str:
        return f"{self.variant.id}/seed{self.seed}"


@dataclass
class ExecutorConfig:
    """Where runs execute: ``local`` subprocesses (default), a ``slurm`` job array, or in-process ``debug``."""

    type: str = "local"
    max_parallel: int = 1
    local: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """A validated sweep: every variant's config was built by the experiment's config class."""

    name: str
    experiment: str
    preset: str
    overrides: dict[str, Any]
    variants: list[Variant]
    seeds: list[int]
    out: Path
    device: str | None
    executor: ExecutorConfig
    target: Path
    merge: str | None = None   # "methods": write the layout of one run of every method (see aggregate)
    source: Path | None = None

    def runs(self) -> list[RunSpec]:
        """All (variant, seed) runs, variant-major."""
        return [RunSpec(v, s, self.out / "runs" / v.id / f"seed{s}.npz") for v in self.variants for s in self.seeds]

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "experiment": self.experiment, "preset": self.preset,
                "overrides": self.overrides, "seeds": self.seeds,
                "config_file": str(self.source) if self.source else None, "aggregate": str(self.target),
                "merge": self.merge,
                "variants": [{"id": v.id, "label": v.label, "overrides": v.overrides,
                              "config_overrides": v.config_overrides,
                              "runs": [f"runs/{v.id}/seed{s}.npz" for s in self.seeds]} for v in self.variants]}


def _yaml_loader() -> Any:
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - pyyaml comes with jupyter-book
        raise SweepConfigError("reading a YAML sweep config needs PyYAML (pip install pyyaml), "
                               "or write the config as JSON") from err

    class Loader(yaml.SafeLoader):
        pass

    # YAML 1.1 reads 1e-4 (no dot) as a string; a sweep over rates must get floats.
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|"
                   r"^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$|"
                   r"^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
        list("-+0123456789."))
    return yaml, Loader


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping in a ``.yaml``/``.yml``/``.json`` sweep file."""
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"sweep config {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            yaml, loader = _yaml_loader()
            raw = yaml.load(text, Loader=loader)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raise SweepConfigError(f"sweep config {path} must end in .yaml, .yml or .json")
    except SweepConfigError:
        raise
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError
        raise SweepConfigError(f"cannot parse sweep config {path}: {err}") from err
    if not isinstance(raw, dict):
        raise SweepConfigError(f"sweep config {path} must be a mapping with keys {list(TOP_KEYS)}")
    return raw


def load_sweep(path: str | os.PathLike, *, executor: str | None = None, max_parallel: int | None = None,
               out: str | os.PathLike | None = None, check_output: bool = True) -> SweepConfig:
    """Read and validate a sweep config file; the keyword arguments override the file (CLI flags)."""
    raw = read_config_file(path)
    if executor is not None or max_parallel is not None:
        ex = raw.get("executor") or {}
        ex = dict(ex) if isinstance(ex, dict) else {"type": ex}
        if executor is not None:
            ex["type"] = executor
        if max_parallel is not None:
            ex["max_parallel"] = max_parallel
        raw["executor"] = ex
    if out is not None:
        raw["out"] = str(out)
    raw.setdefault("name", Path(path).stem)
    return parse_sweep(raw, source=Path(path), check_output=check_output)


def variant_label(name: str | None, overrides: Mapping[str, Any], grid_point: Mapping[str, Any]) -> str:
    """``name, key=value`` for a named variant, ``key=value, ...`` for an unnamed one, ``base`` if empty."""
    shown = grid_point if name else overrides
    parts = ([name] if name else []) + [f"{k}={_fmt(v)}" for k, v in shown.items()]
    return ", ".join(parts) or "base"


def _slug(label: str) -> str:
    text = label.replace("=", "-").replace(", ", "_")
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_.")
    return slug[:48] or "variant"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def variant_id(experiment: str, preset: str, config_overrides: Mapping[str, Any], label: str) -> str:
    """Stable id: a slug of the label plus a short hash of experiment, preset and every override.

    The hash covers the whole config the run gets (not the label), so the same overrides always map
    to the same folder and a changed base preset or override never reuses old results.
    """
    blob = json.dumps({"experiment": experiment, "preset": preset, "overrides": dict(config_overrides)},
                      sort_keys=True, default=_json_default)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    return f"{_slug(label)}-{digest}"


def _field_types(config_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # unresolvable annotations: skip the type check, keep the key check
        return {}


def _check_types(exp: experiments.Experiment, keys: Sequence[str], cfg: Any, where: str) -> None:
    """Scalar overrides must match the field type (catches YAML strings such as '1e-4' or 'true')."""
    hints = _field_types(exp.config_cls)
    for key in keys:
        want, value = hints.get(key), getattr(cfg, key)
        if want not in (int, float, bool, str):
            continue
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise SweepConfigError(f"{where}: {key}={value!r} is a {type(value).__name__}, but experiment "
                                   f"{exp.name!r} expects {want.__name__}")


def _mapping(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SweepConfigError(f"{what} must be a mapping (key: value), got {type(raw).__name__}")
    return dict(raw)


def _parse_seeds(raw: Any) -> list[int]:
    fix = "give `seeds: N` (N >= 1, meaning seeds 0..N-1) or a list of distinct non-negative integers"
    if isinstance(raw, bool) or raw is None:
        raise SweepConfigError(f"seeds is missing or not a number; {fix}")
    if isinstance(raw, int):
        if raw < 1:
            raise SweepConfigError(f"seeds: {raw} runs nothing; {fix}")
        return list(range(raw))
    if isinstance(raw, list):
        if not raw:
            raise SweepConfigError(f"seeds is an empty list; {fix}")
        bad = [s for s in raw if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise SweepConfigError(f"seeds {bad} are not non-negative integers; {fix}")
        dup = sorted({s for s in raw if raw.count(s) > 1})
        if dup:
            raise SweepConfigError(f"seeds {dup} appear more than once; {fix}")
        return [int(s) for s in raw]
    raise SweepConfigError(f"seeds must be an integer or a list, got {type(raw).__name__}; {fix}")


def _parse_points(raw: dict[str, Any]) -> list[tuple[str | None, dict[str, Any], dict[str, Any]]]:
    """(variant name, variant overrides, grid point) for every point: explicit variants × grid points."""
    has_grid, has_variants = "grid" in raw and raw["grid"] is not None, raw.get("variants") is not None
    if not has_grid and not has_variants:
        return [(None, {}, {})]  # a seeds-only sweep of the preset (+ overrides)
    grid = _mapping(raw.get("grid"), "grid")
    if has_grid and not grid:
        raise SweepConfigError("grid is empty: give at least one key with a list of values, "
                               "e.g. `grid: {replacement_rate: [1.0e-5, 1.0e-4]}`")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise SweepConfigError(f"grid key {key!r} must be a list of values, got {values!r}; "
                                   f"put fixed values under `overrides:`")
        if not values:
            raise SweepConfigError(f"grid key {key!r} has an empty list, so the grid has no points")
    grid_points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]

    explicit: list[tuple[str | None, dict[str, Any]]] = [(None, {})]
    if has_variants:
        if not isinstance(raw["variants"], list) or not raw["variants"]:
            raise SweepConfigError("variants must be a non-empty list of {name: ..., set: {...}}")
        explicit = []
        for i, item in enumerate(raw["variants"]):
            if not isinstance(item, dict) or set(item) - {"name", "set"}:
                raise SweepConfigError(f"variant #{i} must look like {{name: <label>, set: {{key: value}}}}, "
                                       f"got {item!r}")
            name = item.get("name")
            if name is not None and not isinstance(name, str):
                raise SweepConfigError(f"variant #{i}: name must be a string, got {name!r}")
            sets = _mapping(item.get("set"), f"variant #{i} `set`")
            clash = sorted(set(sets) & set(grid))
            if clash:
                raise SweepConfigError(f"variant #{i} sets {clash}, which the grid also sweeps; "
                                       f"remove them from one of the two")
            explicit.append((name, sets))
    return [(name, {**sets, **gp}, gp) for (name, sets), gp in itertools.product(explicit, grid_points)]


def _parse_executor(raw: Any) -> ExecutorConfig:
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"type": raw}
    raw = _mapping(raw, "executor")
    unknown = sorted(set(raw) - set(EXECUTOR_KEYS))
    if unknown:
        raise SweepConfigError(f"executor has unknown options {unknown}; valid options are {list(EXECUTOR_KEYS)} "
                               f"(put SLURM settings under `executor: {{slurm: {{...}}}}`)")
    ex = ExecutorConfig(type=raw.get("type", "local"), max_parallel=raw.get("max_parallel", 1),
                        local=_mapping(raw.get("local"), "executor.local"),
                        slurm=_mapping(raw.get("slurm"), "executor.slurm"))
    if ex.type not in EXECUTOR_TYPES:
        raise SweepConfigError(f"unknown executor type {ex.type!r}; choose one of {list(EXECUTOR_TYPES)}")
    if isinstance(ex.max_parallel, bool) or not isinstance(ex.max_parallel, int) or ex.max_parallel < 1:
        raise SweepConfigError(f"executor max_parallel must be an integer >= 1, got {ex.max_parallel!r}")
    unknown = sorted(set(ex.local) - set(LOCAL_KEYS))
    if unknown:
        raise SweepConfigError(f"executor.local has unknown options {unknown}; valid options are {list(LOCAL_KEYS)}")
    gpus = ex.local.get("gpus", [])
    if not isinstance(gpus, list) or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus):
        raise SweepConfigError(f"executor.local.gpus must be a list of GPU ids such as [0, 1], got {gpus!r}")
    for key in ("timeout_min", "threads"):
        value = ex.local.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise SweepConfigError(f"executor.local.{key} must be a positive number, got {value!r}")
    valid = _slurm_parameters()
    unknown = sorted(set(ex.slurm) - valid)
    if unknown:
        raise SweepConfigError(f"executor.slurm has unknown options {unknown}; valid options (submitit's "
                               f"SlurmExecutor) are {sorted(valid)}; use `max_parallel` for the array limit")
    return ex


def _slurm_parameters() -> set[str]:
    submitit = _submitit()
    return set(submitit.SlurmExecutor._valid_parameters()) - {"array_parallelism"}


def _submitit() -> Any:
    try:
        import submitit
    except ImportError as err:  # pragma: no cover - pinned in requirements.txt
        raise SweepConfigError("sweeps need submitit: pip install submitit (pinned in requirements.txt)") from err
    return submitit


def _check_writable(out: Path) -> None:
    """Fail early on an output folder that cannot be written (without creating it: a dry run writes nothing)."""
    fix = "set `out:` or --out to a folder you can write"
    probe_dir = out
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise SweepConfigError(f"output folder {out} is not writable ({probe_dir} is not a folder); {fix}")
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise SweepConfigError(f"output folder {out} is not writable ({probe_dir} is read-only); {fix}")
    if probe_dir == out:
        try:
            fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise SweepConfigError(f"output folder {out} is not writable ({err.strerror or err}); {fix}") from err


MERGE_MODES = ("methods",)


def _parse_aggregate(raw: Any, experiment: str, name: str) -> tuple[Path, str | None]:
    """``aggregate: <name or .npz path>`` or ``aggregate: {target: ..., merge: methods}``."""
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"target", "merge"})
        if unknown:
            raise SweepConfigError(f"aggregate has unknown options {unknown}; valid options are ['target', 'merge']")
        merge = raw.get("merge")
        if merge is not None and merge not in MERGE_MODES:
            raise SweepConfigError(f"aggregate merge {merge!r} is not one of {list(MERGE_MODES)}")
        return _resolve_target(raw.get("target"), experiment, name), merge
    return _resolve_target(raw, experiment, name), None


def _resolve_target(raw: Any, experiment: str, name: str) -> Path:
    if raw is None:
        raw = name
    if not isinstance(raw, str) or not raw:
        raise SweepConfigError(f"aggregate must be a name (-> data/<experiment>/<name>.npz) or a .npz path, got {raw!r}")
    if raw.endswith(".npz"):
        return Path(raw).expanduser().resolve()
    if "/" in raw or os.sep in raw:
        raise SweepConfigError(f"aggregate {raw!r} is neither a plain name nor a path ending in .npz")
    return data_dir() / experiment / f"{raw}.npz"


def parse_sweep(raw: Mapping[str, Any], source: Path | None = None, *, check_output: bool = True) -> SweepConfig:
    """Validate a raw sweep mapping; every variant's config is built by the experiment before returning."""
    raw = dict(raw)
    where_file = f" in {source}" if source else ""
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SweepConfigError(f"unknown sweep keys {unknown}{where_file}; valid keys are {list(TOP_KEYS)} "
                               f"(experiment config keys go under `overrides:`, `grid:` or `variants:`)")
    name = raw.get("name") or (source.stem if source else None)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SweepConfigError(f"sweep name {name!r} must be letters, digits, '_', '-' or '.'")
    if not isinstance(raw.get("experiment"), str):
        raise SweepConfigError(f"`experiment:` is missing{where_file}; known experiments: "
                               f"{', '.join(experiments.names())}")
    exp = experiments.get(raw["experiment"])  # ConfigError naming the known experiments
    preset = raw.get("preset", "full")
    if preset not in exp.presets:
        raise SweepConfigError(f"experiment {exp.name!r} has no preset {preset!r}; "
                               f"choose one of {sorted(exp.presets)}")
    base = _mapping(raw.get("overrides"), "overrides")
    seeds = _parse_seeds(raw.get("seeds"))
    device = raw.get("device")
    if device is not None and (not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device)):
        raise SweepConfigError(f"device {device!r} must be cpu, cuda or cuda:<index> (or omitted)")
    executor = _parse_executor(raw.get("executor"))

    variants: list[Variant] = []
    seen: dict[str, str] = {}
    for i, (vname, vo, gp) in enumerate(_parse_points(raw)):
        label = variant_label(vname, vo, gp)
        where = f"sweep variant {label!r} (#{i})"
        clash = sorted(set(vo) & set(base))
        if clash:
            raise SweepConfigError(f"{where} sets {clash}, which `overrides:` also sets")
        merged = {**base, **vo}
        try:
            cfg = exp.preset_config(preset, merged)
        except ConfigError as err:
            raise SweepConfigError(f"{where}: {err}") from err
        _check_types(exp, list(merged), cfg, where)
        vid = variant_id(exp.name, preset, merged, label)
        digest = vid.rsplit("-", 1)[1]
        if digest in seen:
            raise SweepConfigError(f"{where} has the same overrides as variant {seen[digest]!r}; remove one")
        seen[digest] = label
        cfg_dict = json.loads(json.dumps(dataclasses.asdict(cfg), default=_json_default))
        variants.append(Variant(vid, label, vo, merged, cfg_dict))

    out = Path(raw.get("out") or Path("runs") / "sweeps" / name).expanduser().resolve()
    if check_output:
        _check_writable(out)
    target, merge = _parse_aggregate(raw.get("aggregate"), exp.name, name)
    return SweepConfig(name=name, experiment=exp.name, preset=preset, overrides=base, variants=variants,
                       seeds=seeds, out=out, device=device, executor=executor, target=target, merge=merge,
                       source=source)


# --------------------------------------------------------------------------------------------------
# state of the runs on disk

STATES = ("done", "partial", "pending", "stale", "corrupt")


def run_state(sweep: SweepConfig, run: RunSpec) -> str:
    """``done`` (valid result for this config), ``partial`` (checkpoint only), ``pending`` (nothing yet),
    ``stale`` (a result for another config or seed) or ``corrupt`` (unreadable file)."""
    if run.path.exists():
        try:
            res = load_result(run.path)
        except ResultError:
            return "corrupt"
        same = (res.meta.get("experiment") == sweep.experiment and res.meta.get("seeds") == [run.seed]
                and res.meta.get("config") == run.variant.config)
        return "done" if same else "stale"
    return "partial" if run.checkpoint.exists() else "pending"


def status(sweep: SweepConfig) -> dict[str, list[RunSpec]]:
    """Runs grouped by :func:`run_state`."""
    out: dict[str, list[RunSpec]] = {s: [] for s in STATES}
    for run in sweep.runs():
        out[run_state(sweep, run)].append(run)
    return out


def write_manifest(sweep: SweepConfig) -> Path:
    """``<out>/manifest.json``: the variants, their overrides, ids and run files (written atomically)."""
    path = sweep.out / MANIFEST
    atomic_write_bytes(path, json.dumps(sweep.manifest(), indent=1, default=_json_default).encode())
    return path


# --------------------------------------------------------------------------------------------------
# execution


def _ensure_registered(name: str, module: str) -> None:
    """Make an experiment registered in the submitting process (e.g. a test or plugin) visible here."""
    if experiments._discover().get(name) == module:
        return
    real = experiments._discover
    experiments._discover = lambda: {**real(), name: module}  # type: ignore[assignment]


try:  # submitit's Checkpointable: on SLURM preemption/timeout the job is requeued and resumes
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover
    _Checkpointable = object  # type: ignore[assignment,misc]


class RunJob(_Checkpointable):
    """The picklable callable a worker runs: one (variant, seed) through ``run_experiment``.

    Being a submitit ``Checkpointable``, a preempted or timed-out job is resubmitted as is and
    ``run_experiment`` resumes from the run's ``.ckpt`` file.
    """

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        s = self.spec
        _ensure_registered(s["experiment"], s["module"])
        if s.get("threads"):
            import torch

            torch.set_num_threads(int(s["threads"]))
        start = time.perf_counter()
        experiments.run_experiment(s["experiment"], s["preset"], seeds=[s["seed"]], device=s["device"],
                                   out=s["out"], overrides=s["overrides"], progress=False, command=s["command"])
        return {"run": s["run"], "file": s["out"], "wall_time_s": time.perf_counter() - start}


def _job_spec(sweep: SweepConfig, run: RunSpec, threads: int | None) -> dict[str, Any]:
    src = shlex.quote(str(sweep.source)) if sweep.source else "<config>"
    return {"experiment": sweep.experiment, "module": experiments._discover()[sweep.experiment],
            "preset": sweep.preset, "overrides": run.variant.config_overrides, "seed": run.seed,
            "device": sweep.device, "out": str(run.path), "run": run.name, "threads": threads,
            "command": f"python -m lopbook sweep run {src}  # run {run.name}"}


@dataclass
class SweepReport:
    """What :func:`run_sweep` did."""

    skipped: list[str] = field(default_factory=list)     # already done
    resumed: list[str] = field(default_factory=list)     # had a checkpoint
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run -> error and log location
    submitted: list[str] = field(default_factory=list)   # SLURM job ids (not waited for)

    @property
    def ok(self) -> bool:
        return not self.failed


def _local_threads(sweep: SweepConfig) -> int:
    threads = sweep.executor.local.get("threads")
    if threads:
        return int(threads)
    return max(1, (os.cpu_count() or 1) // sweep.executor.max_parallel)


def _local_gpus(sweep: SweepConfig) -> list[int]:
    """GPU ids local jobs may use: ``executor.local.gpus``, else the ones this process sees."""
    if "gpus" in sweep.executor.local:
        return list(sweep.executor.local["gpus"])
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        try:
            return [int(x) for x in env.split(",") if x.strip()]
        except ValueError:  # GPU UUIDs: submitit wants integer ids; name them with executor.local.gpus
            return []
    import torch

    return list(range(torch.cuda.device_count()))


def _pick_gpu(gpus: list[int], busy: list[int | None]) -> int | None:
    """The least-used GPU (ties: the first), so parallel local jobs spread over the GPUs."""
    if not gpus:
        return None
    return min(gpus, key=lambda g: busy.count(g))


def _make_executor(sweep: SweepConfig) -> Any:
    submitit = _submitit()
    folder = sweep.out / "submitit" / "%j"
    kind = sweep.executor.type
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        # submitit's local default timeout is 2 minutes; sweeps run for hours
        ex.update_parameters(timeout_min=float(sweep.executor.local.get("timeout_min", 7 * 24 * 60)))
        return ex
    ex = submitit.SlurmExecutor(folder=folder)
    params = {"job_name": f"lopbook-{sweep.name}", **sweep.executor.slurm,
              "array_parallelism": sweep.executor.max_parallel}
    ex.update_parameters(**params)
    return ex


def plan(sweep: SweepConfig) -> str:
    """A human-readable plan: counts per state and what the executor would do (for ``--dry-run``)."""
    st = status(sweep)
    lines = [f"sweep {sweep.name!r}: experiment {sweep.experiment!r}, preset {sweep.preset!r}, "
             f"{len(sweep.variants)} variants × {len(sweep.seeds)} seeds = {len(sweep.runs())} runs in {sweep.out}",
             "  " + ", ".join(f"{len(st[s])} {s}" for s in STATES),
             f"  every variant: preset {sweep.preset!r} + {json.dumps(sweep.overrides, default=_json_default)}"]
    for v in sweep.variants:
        lines.append(f"  {v.id:40s} {json.dumps(v.overrides, default=_json_default)}")
    todo = len(st["pending"]) + len(st["partial"]) + len(st["corrupt"])
    ex = sweep.executor
    if ex.type == "slurm":
        from submitit.slurm.slurm import _make_sbatch_string

        params = {"job_name": f"lopbook-{sweep.name}", **ex.slurm, "array_parallelism": ex.max_parallel,
                  "map_count": max(todo, 1)}
        lines.append(f"would submit {todo} runs as one SLURM job array; its sbatch header:")
        header = _make_sbatch_string(command="python -u -m submitit.core._submit <folder>",
                                     folder=str(sweep.out / "submitit" / "%j"), **params)
        lines += ["    " + ln for ln in header.splitlines() if ln.startswith("#SBATCH")]
    else:
        lines.append(f"would run {todo} runs with the {ex.type} executor, at most {ex.max_parallel} at a time")
    lines.append(f"aggregate target: {sweep.target}")
    return "\n".join(lines)


def run_sweep(sweep: SweepConfig, *, log: Callable[[str], None] = print, poll_s: float = 0.2) -> SweepReport:
    """Run every unfinished run of ``sweep``; finished runs are skipped, interrupted ones resume.

    Local and debug executors block until all runs end (failures are collected, not raised: rerun the
    sweep to retry them, resuming from their checkpoints). SLURM submits one job array and returns.
    """
    st = status(sweep)
    if st["stale"]:
        files = ", ".join(str(r.path) for r in st["stale"][:5])
        raise SweepConfigError(f"{len(st['stale'])} result files belong to another config or seed ({files}"
                               f"{', ...' if len(st['stale']) > 5 else ''}); the experiment's preset probably "
                               f"changed. Delete them or choose another `out:` folder")
    write_manifest(sweep)
    report = SweepReport(skipped=[r.name for r in st["done"]], resumed=[r.name for r in st["partial"]])
    todo_names = {r.name for s in ("pending", "partial", "corrupt") for r in st[s]}
    todo = [r for r in sweep.runs() if r.name in todo_names]
    log(f"sweep {sweep.name}: {len(report.skipped)} done (skipped), {len(st['partial'])} to resume, "
        f"{len(todo) - len(st['partial'])} to start; executor {sweep.executor.type}")
    if not todo:
        return report
    executor = _make_executor(sweep)
    kind = sweep.executor.type
    if kind == "slurm":
        threads = sweep.executor.slurm.get("cpus_per_task")
        with executor.batch():
            jobs = [executor.submit(RunJob(_job_spec(sweep, r, threads))) for r in todo]
        report.submitted = [j.job_id for j in jobs]
        atomic_write_bytes(sweep.out / "slurm_jobs.json", json.dumps(
            {r.name: j.job_id for r, j in zip(todo, jobs, strict=True)}, indent=1).encode())
        log(f"submitted SLURM array {jobs[0].job_id.split('_')[0]} with {len(jobs)} runs "
            f"(at most {sweep.executor.max_parallel} at a time); check with `python -m lopbook sweep status`")
        return report
    if kind == "debug":
        for r in todo:
            job = executor.submit(RunJob(_job_spec(sweep, r, None)))
            err = job.exception()  # runs in-process; avoids DebugJob's post-mortem debugger on failure
            _record(report, r, err, job, log)
        return report

    threads = _local_threads(sweep)
    gpus = _local_gpus(sweep)
    queue: list[RunSpec] = list(todo)
    active: list[tuple[RunSpec, Any, int | None]] = []
    try:
        while queue or active:
            while queue and len(active) < sweep.executor.max_parallel:
                r = queue.pop(0)
                # submitit's LocalExecutor sets CUDA_VISIBLE_DEVICES for each job ("" without gpus_per_node)
                gpu = _pick_gpu(gpus, [a[2] for a in active])
                executor.update_parameters(gpus_per_node=0 if gpu is None else 1,
                                           visible_gpus=() if gpu is None else (gpu,))
                active.append((r, executor.submit(RunJob(_job_spec(sweep, r, threads))), gpu))
                log(f"  started {r.name} (job {active[-1][1].job_id}" + (f", GPU {gpu})" if gpu is not None else ")"))
            time.sleep(poll_s)
            for item in [a for a in active if a[1].done()]:
                active.remove(item)
                r, job, _ = item
                _record(report, r, job.exception(), job, log)
    except KeyboardInterrupt:
        for _, job, _ in active:
            job.cancel(check=False)
        log("interrupted: cancelled running jobs; rerun the sweep to resume them from their checkpoints")
        raise
    return report


def _record(report: SweepReport, run: RunSpec, err: BaseException | None, job: Any, log: Callable[[str], None]) -> None:
    if err is None and run.path.exists():
        report.completed.append(run.name)
        log(f"  finished {run.name}")
        return
    msg = "the job ended without writing its result"
    if err is not None:  # submitit frames the worker's traceback with lines of dashes
        parts = str(err).split("----------------------")
        lines = [ln for ln in (parts[1] if len(parts) >= 3 else parts[0]).splitlines() if ln.strip()]
        msg = lines[-1].strip() if lines else type(err).__name__
    where = getattr(job.paths, "stderr", None)
    report.failed[run.name] = f"{msg} (log: {where})"
    log(f"  FAILED {run.name}: {msg} (log: {where})")


# --------------------------------------------------------------------------------------------------
# aggregation


def _stack_seeds(per_seed: list[np.ndarray], axis: int | None | str = "auto",
                 n_methods: int | None = None) -> tuple[np.ndarray, int | None]:
    """Per-seed arrays of one variant -> one array holding every seed, and the axis the seeds are on.

    Each run had one seed, so an experiment's per-seed arrays carry a seed axis of length 1 (first for
    ``(seeds, T)`` curves, second for ``(methods, seeds, bins)``): by default the seeds are concatenated
    along the first axis of length 1, which rebuilds exactly what one multi-seed run would return. When
    the result labels its methods (a 1-D string array ``methods`` or ``labels`` of length ``n_methods``),
    an array shaped ``(n_methods, 1, ...)`` is methods-first and gets its seeds on axis 1, also when a
    variant runs a single method.
    Arrays equal in every run without such an axis (labels, step indices) are kept once (axis ``None``);
    any other array gets a new leading seed axis. An experiment module may pin the axis per array with
    ``SWEEP_SEED_AXES = {"name": axis or None}``.
    """
    first = per_seed[0]
    same_shape = all(a.shape == first.shape for a in per_seed)
    same = same_shape and all(np.array_equal(a, first) for a in per_seed[1:])
    if axis == "auto":
        unit = [i for i, d in enumerate(first.shape) if d == 1]
        if n_methods is not None and first.ndim >= 2 and first.shape[:2] == (n_methods, 1):
            unit = [1]  # (methods, seeds, ...) even with a single method
        if same and (first.dtype.kind in "USb" or not unit):
            return first, None
        axis = unit[0] if unit else 0
        if not unit:
            return np.stack(per_seed, axis=0), 0
    if axis is None:
        if not same:
            raise SweepConfigError("an array declared seed-independent (SWEEP_SEED_AXES: None) differs across seeds")
        return first, None
    assert isinstance(axis, int)
    if same_shape and first.ndim > axis and first.shape[axis] == 1:
        return np.concatenate(per_seed, axis=axis), axis
    return np.stack(per_seed, axis=axis), axis


def _find_tables(results: list[Result], names: list[str]) -> dict[str, list[str]]:
    """Row tables such as an episode log: 1-D arrays ``<p>_*`` as long as an integer ``<p>_seed`` column.

    Experiments log variable-length records (episodes) as columns of equal length with index columns
    ``<p>_seed`` (position in the run's seeds) and optionally ``<p>_method`` (position in its methods).
    """
    tables = {}
    for col in names:
        if not col.endswith("_seed") or not all(r.arrays[col].ndim == 1 and r.arrays[col].dtype.kind in "iu"
                                                  for r in results):
            continue
        prefix = col[:-len("_seed")]
        tables[prefix] = [n for n in names if n.startswith(prefix + "_") and all(
            r.arrays[n].ndim >= 1 and len(r.arrays[n]) == len(r.arrays[col]) for r in results)]
    return tables


def _table_order(cols: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """Stable row order by (method, seed): the order one multi-seed run writes its rows in."""
    keys = [cols[f"{prefix}_seed"]] + ([cols[f"{prefix}_method"]] if f"{prefix}_method" in cols else [])
    return np.lexsort(keys)


def _concat_table(prefix: str, members: list[str], per_seed: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One variant's single-seed tables -> one table, ``<p>_seed`` renumbered to the seed's position."""
    cols = {n: np.concatenate([a[n] for a in per_seed]) for n in members}
    cols[f"{prefix}_seed"] = np.concatenate([a[f"{prefix}_seed"] + i for i, a in enumerate(per_seed)])
    order = _table_order(cols, prefix)
    return {n: c[order] for n, c in cols.items()}


def _merge_methods(kept: list[Variant], variant_arrays: dict[str, tuple[dict[str, np.ndarray], int]],
                   seed_axes: dict[str, int | str | None], table_of: dict[str, str],
                   meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Concatenate per-method variants along the methods axis: the layout of one run of all methods."""
    parts = [variant_arrays[v.id][0] for v in kept]
    if len({n for _, n in variant_arrays.values()}) != 1:
        raise SweepConfigError("merge: methods needs the same finished seeds in every variant (not --partial)")
    label = next((n for n in ("methods", "labels") if all(n in p and p[n].ndim == 1 for p in parts)), None)
    if label is None:
        raise SweepConfigError("merge: methods needs a 1-D `methods` or `labels` array in every run's result")
    counts = [len(p[label]) for p in parts]
    merged_labels = np.concatenate([p[label] for p in parts])
    dup = sorted({x for x in merged_labels.tolist() if merged_labels.tolist().count(x) > 1})
    if dup:
        raise SweepConfigError(f"merge: methods would repeat methods {dup}; give each variant other methods")
    out: dict[str, np.ndarray] = {label: merged_labels}
    offsets = np.cumsum([0] + counts[:-1])
    common = set.intersection(*(set(p) for p in parts)) - {label}
    for prefix in sorted({table_of[n] for n in common if n in table_of}):
        members = [n for n in common if table_of.get(n) == prefix]
        cols = {n: np.concatenate([p[n] for p in parts]) for n in members}
        if f"{prefix}_method" in cols:
            cols[f"{prefix}_method"] = np.concatenate([p[f"{prefix}_method"] + off
                                                       for p, off in zip(parts, offsets, strict=True)])
        order = _table_order(cols, prefix)
        out.update({n: c[order] for n, c in cols.items()})
    for n in sorted(common - set(out)):
        arrs = [p[n] for p in parts]
        if seed_axes.get(n) == 1 and all(a.ndim >= 2 and a.shape[0] == c for a, c in zip(arrs, counts, strict=True)):
            try:
                out[n] = np.concatenate(arrs, axis=0)
                continue
            except ValueError:
                pass
        if all(a.shape == arrs[0].shape and np.array_equal(a, arrs[0]) for a in arrs[1:]):
            out[n] = arrs[0]
        else:
            raise SweepConfigError(f"merge: methods cannot merge array {n!r}: it has no methods axis and differs "
                                   f"between variants; aggregate without merge to keep it per variant")
    meta["sweep"]["merged"] = {"axis": "methods", "label_array": label,
                               "from_variants": [v.id for v in kept]}
    return out


def _method_count(result: Result) -> int | None:
    for name in ("methods", "labels"):
        arr = result.arrays.get(name)
        if arr is not None and arr.ndim == 1 and arr.dtype.kind in "US":
            return len(arr)
    return None


def aggregate(sweep: SweepConfig, *, write: bool = True, target: str | os.PathLike | None = None,
              partial: bool = False, merge: str | None = "config") -> Result:
    """Stack the sweep's per-seed results into one :class:`Result` and (by default) write it atomically.

    Arrays:

    - ``variants`` (V,) ids, ``variant_labels`` (V,), ``seeds`` (S,);
    - ``param/<key>`` (V,): the value of every swept config key for each variant;
    - ``<variant-id>/<array>``: that variant's array holding all its seeds, shaped as one multi-seed run
      would return it (e.g. ``(S, T)`` or ``(methods, S, bins)``; see :func:`_stack_seeds`);
    - ``<array>`` (V, ...): the same stacked over a new leading variant axis, when every variant has it
      with one shape; an array equal in every run (labels, step indices) is stored once, unstacked.

    ``meta["sweep"]["seed_axis"][name]`` is the seed axis of ``<variant-id>/<name>`` (``None``: the array
    is the same for every seed and stored once; ``"rows"``: a row table such as an episode log, whose
    ``<p>_seed``/``<p>_method`` index columns are renumbered, see :func:`_find_tables`); in the
    variant-stacked ``<name>`` it is one more. Other arrays whose length differs between seeds are kept
    per seed as ``<variant-id>/<name>/seed<k>`` (listed in ``meta["sweep"]["ragged"]``).

    ``meta["sweep"]`` lists the variants (ids, labels, overrides) and every run (file, seed, commit,
    device, time). With ``partial=True`` unfinished runs are left out instead of being an error.

    ``merge="methods"`` (config ``aggregate: {target: full, merge: methods}``) is for sweeps that split a
    preset into one variant per method: the variants' methods-first arrays are concatenated along the
    methods axis and everything else must agree, so the file has exactly the layout of
    ``python -m lopbook run <experiment> --preset <preset>`` and a chapter reading
    ``data/<experiment>/<preset>.npz`` reads it unchanged. The default takes the config's choice.
    """
    if merge == "config":
        merge = sweep.merge
    st = status(sweep)
    done = {r.name for r in st["done"]}
    missing = [r for r in sweep.runs() if r.name not in done]
    if missing and not partial:
        raise SweepConfigError(f"{len(missing)} of {len(sweep.runs())} runs are not finished "
                               f"(e.g. {missing[0].name}: {run_state(sweep, missing[0])}); run "
                               f"`python -m lopbook sweep run` first, or aggregate with --partial")
    arrays: dict[str, np.ndarray] = {}
    runs_meta, metas, variant_arrays, kept = [], [], {}, []
    seed_axes: dict[str, int | str | None] = {}
    table_of: dict[str, str] = {}
    ragged: set[str] = set()
    module = sys.modules.get(experiments._discover()[sweep.experiment])
    pinned = dict(getattr(module, "SWEEP_SEED_AXES", {}) or {})
    for v in sweep.variants:
        runs = [r for r in sweep.runs() if r.variant.id == v.id and r.name in done]
        if not runs:
            continue
        results = [load_result(r.path) for r in runs]
        names = sorted(set.intersection(*(set(res.arrays) for res in results)))
        stacked = {}
        n_methods = _method_count(results[0])
        tables = _find_tables(results, names)
        table_of.update({n: p for p, members in tables.items() for n in members})
        for prefix, members in tables.items():
            for n, arr in _concat_table(prefix, members, [res.arrays for res in results]).items():
                stacked[n], seed_axes[n] = arr, "rows"
                arrays[f"{v.id}/{n}"] = arr
        for n in names:
            if n in stacked:
                continue
            per_seed = [res.arrays[n] for res in results]
            try:
                stacked[n], seed_axes[n] = _stack_seeds(per_seed, pinned.get(n, "auto"), n_methods)
            except ValueError:  # ragged across seeds and not part of a table: keep each seed's array
                ragged.add(n)
                for r, a in zip(runs, per_seed, strict=True):
                    arrays[f"{v.id}/{n}/seed{r.seed}"] = a
                continue
            arrays[f"{v.id}/{n}"] = stacked[n]
        arrays[f"{v.id}/seeds"] = np.array([r.seed for r in runs])
        variant_arrays[v.id] = (stacked, len(runs))
        kept.append(v)
        for r, res in zip(runs, results, strict=True):
            m = res.meta
            metas.append(m)
            runs_meta.append({"variant": v.id, "seed": r.seed, "file": str(r.path.relative_to(sweep.out)),
                              "git_commit": m["git_commit"], "device": m["device"], "created": m["created"],
                              "wall_time_s": m["wall_time_s"], "mode": m["mode"]})
    if not kept:
        raise SweepConfigError(f"no finished runs to aggregate in {sweep.out}")

    arrays["variants"] = np.array([v.id for v in kept])
    arrays["variant_labels"] = np.array([v.label for v in kept])
    seed_counts = {n for _, n in variant_arrays.values()}
    if len(seed_counts) == 1 and not missing:
        arrays["seeds"] = np.array(sweep.seeds)
    for key in dict.fromkeys(k for v in kept for k in v.overrides):
        values = [v.config.get(key) for v in kept]
        if all(isinstance(x, (int, float, str, bool)) and x is not None for x in values):
            arr = np.array(values)
            if arr.dtype != object:
                arrays[f"param/{key}"] = arr
    if len(seed_counts) == 1:
        common = set.intersection(*(set(s) for s, _ in variant_arrays.values()))
        for n in sorted(common):
            parts = [variant_arrays[v.id][0][n] for v in kept]
            if n in arrays or any(p.shape != parts[0].shape for p in parts):
                continue
            if seed_axes.get(n) is None and all(np.array_equal(p, parts[0]) for p in parts[1:]):
                arrays[n] = parts[0]  # the same in every run (labels, step indices): stored once
            else:
                arrays[n] = np.stack(parts, axis=0)

    first = metas[0]
    commits = sorted({str(m["git_commit"]) for m in metas})
    devices = sorted({m["device"] for m in metas})
    scale_note = (f"sweep {sweep.name}: {len(kept)} variants × {len(sweep.seeds)} seeds of preset "
                  f"{sweep.preset!r}" + (" (partial)" if missing else "") + f"; {first['scale']['note']}")
    src = str(sweep.source) if sweep.source else "<config>"
    meta = provenance(experiment=sweep.experiment, preset=sweep.preset,
                      mode="full" if any(m["mode"] == "full" for m in metas) else first["mode"],
                      config=dataclasses.asdict(experiments.get(sweep.experiment).preset_config(sweep.preset,
                                                                                               sweep.overrides)),
                      seeds=sweep.seeds, device=",".join(devices),
                      wall_time_s=float(sum(m["wall_time_s"] for m in metas)), dataset=first["dataset"],
                      scale={"paper_scale": all(m["scale"]["paper_scale"] for m in metas) and not sweep.overrides,
                             "note": scale_note},
                      command=f"python -m lopbook sweep aggregate {src}")
    meta["config"] = json.loads(json.dumps(meta["config"], default=_json_default))
    meta["git_commit"] = commits[0] if len(commits) == 1 else "mixed: " + ", ".join(commits)
    meta["versions"] = first["versions"]
    meta["sweep"] = {"name": sweep.name, "config_file": src, "partial": bool(missing),
                     "variants": [{"id": v.id, "label": v.label, "overrides": v.overrides} for v in kept],
                     "seed_axis": seed_axes, "tables": sorted(set(table_of.values())),
                     "ragged": sorted(ragged),
                     "runs": runs_meta}
    if merge == "methods":
        arrays = _merge_methods(kept, variant_arrays, seed_axes, table_of, meta)
    result = Result(arrays=arrays, meta=meta)
    if write:
        save_result(result, Path(target) if target is not None else sweep.target)
    return result


# --------------------------------------------------------------------------------------------------
# command line: python -m lopbook sweep run|status|aggregate CONFIG


def _cmd_sweep_run(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.config, executor=args.executor, max_parallel=args.max_parallel, out=args.out)
    if args.dry_run:
        print(plan(sweep))
        return 0
    report = run_sweep(sweep)
    done = len(report.skipped) + len(report.completed)
    print(f"sweep {sweep.name}: {len(report.completed)} runs finished now, {len(report.skipped)} were done, "
          f"{len(report.failed)} failed, {len(report.submitted)} submitted to SLURM; "
          f"{done}/{len(sweep.runs())} complete")
    if report.failed:
        print("failed runs resume from their checkpoints when you rerun the same command:", file=sys.stderr)
        for name, msg in report.failed.items():
            print(f"  {name}: {msg}", file=sys.stderr)
        return 1
    if done == len(sweep.runs()) and args.aggregate:
        res = aggregate(sweep)
        print(f"aggregated {len(res.meta['sweep']['runs'])} runs into {sweep.target}")
    return 0


def _cmd_sweep_status(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.config, out=args.out, check_output=False)
    st = status(sweep)
    state_of = {r.name: s for s, runs in st.items() for r in runs}
    print(f"sweep {sweep.name} in {sweep.out}: " + ", ".join(f"{len(st[s])} {s}" for s in STATES))
    for v in sweep.variants:
        states = [state_of[f"{v.id}/seed{s}"] for s in sweep.seeds]
        counts = ", ".join(f"{states.count(s)} {s}" for s in STATES if states.count(s))
        print(f"  {v.id:40s} {counts:30s} {v.label}")
    return 0


def _cmd_sweep_aggregate(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.config, out=args.out, check_output=False)
    target = Path(args.target) if args.target else sweep.target
    res = aggregate(sweep, target=target, partial=args.partial)
    n_var = len(res.meta["sweep"]["variants"])
    print(f"wrote {target}: {n_var} variants, {len(res.meta['sweep']['runs'])} runs, {len(res.arrays)} arrays")
    return 0


def add_sweep_parser(sub: Any) -> None:
    """Register ``sweep run|status|aggregate`` on the CLI's subparsers."""
    p = sub.add_parser("sweep", help="run a sweep (variants × seeds) from a YAML/JSON config with submitit")
    ssub = p.add_subparsers(dest="sweep_command", required=True)
    r = ssub.add_parser("run", help="run the unfinished runs of a sweep (finished ones are skipped)")
    r.add_argument("config", help="sweep config (.yaml/.json), e.g. sweeps/scr_cbp_rates.yaml")
    r.add_argument("--executor", choices=EXECUTOR_TYPES, help="override the config's executor type")
    r.add_argument("--max-parallel", type=int, help="at most N runs at once (local) / array limit (slurm)")
    r.add_argument("--out", help="override the config's output folder")
    r.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    r.add_argument("--aggregate", action="store_true", help="aggregate when every run is done")
    r.set_defaults(func=_cmd_sweep_run)
    s = ssub.add_parser("status", help="count done/partial/pending runs per variant")
    s.add_argument("config")
    s.add_argument("--out", help="override the config's output folder")
    s.set_defaults(func=_cmd_sweep_status)
    a = ssub.add_parser("aggregate", help="stack per-seed results into one result file")
    a.add_argument("config")
    a.add_argument("--out", help="override the config's output folder")
    a.add_argument("--target", help="result file to write (default: the config's aggregate target)")
    a.add_argument("--partial", action="store_true", help="leave out unfinished runs instead of failing")
    a.set_defaults(func=_cmd_sweep_aggregate)


__all__ = ["SweepConfig", "SweepConfigError", "Variant", "RunSpec", "ExecutorConfig", "SweepReport", "RunJob",
           "load_sweep", "parse_sweep", "read_config_file", "variant_id", "status", "run_state", "plan",
           "run_sweep", "aggregate", "write_manifest", "add_sweep_parser"]
