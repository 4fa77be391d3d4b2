"""Sweep configs: read a YAML/JSON file, expand the grid and variants, validate every run before any starts.

Config values are checked by :mod:`lopbook.validation` through the experiment's own config class (the
same checks as ``python -m lopbook run``), seeds by :func:`lopbook.validation.check_seed_list`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lopbook import experiments
from lopbook.errors import ConfigError
from lopbook.results import _json_default, data_dir
from lopbook.validation import DEVICE_RE, ValidationError, check_seed_list, writable_dir

TOP_KEYS = ("name", "experiment", "preset", "overrides", "grid", "variants", "seeds", "out", "device",
            "executor", "aggregate")
EXECUTOR_TYPES = ("local", "slurm", "debug")
EXECUTOR_KEYS = ("type", "max_parallel", "local", "slurm")
LOCAL_KEYS = ("timeout_min", "threads", "gpus")
MANIFEST = "manifest.json"
SWEEP_LOCK = "sweep"  # <out>/sweep.lock, held by `sweep run`


class SweepConfigError(ConfigError):
    """A sweep config that cannot be run; raised before any run starts."""


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


def _mapping(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SweepConfigError(f"{what} must be a mapping (key: value), got {type(raw).__name__}")
    return dict(raw)


def _parse_seeds(raw: Any) -> list[int]:
    """``seeds: N`` (seeds 0..N-1) or an explicit list, checked by :func:`lopbook.validation.check_seed_list`."""
    try:
        if isinstance(raw, int) and not isinstance(raw, bool):
            if raw < 1:
                raise ValidationError(f"seeds: {raw} runs nothing; give `seeds: N` with N >= 1 (seeds 0..N-1) "
                                      f"or a list of seeds")
            return check_seed_list(range(raw), what="seeds")
        return check_seed_list(raw, what="seeds")
    except ValidationError as err:
        raise SweepConfigError(str(err)) from None


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
    try:
        writable_dir(out, f"output folder {out}", "set `out:` or --out to a folder you can write")
    except ValidationError as err:
        raise SweepConfigError(str(err)) from None


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
    if device is not None and (not isinstance(device, str) or not DEVICE_RE.fullmatch(device)):
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

