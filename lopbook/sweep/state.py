"""The state of a sweep's runs on disk: done, running, partial, pending, stale or corrupt."""

from __future__ import annotations

import json
from pathlib import Path

from lopbook.checkpoint import checkpoint_problem
from lopbook.locking import describe_holder, holder_of
from lopbook.results import ResultError, _json_default, atomic_write_bytes, load_result
from lopbook.sweep.config import MANIFEST, RunSpec, SweepConfig

STATES = ("done", "running", "partial", "pending", "stale", "corrupt")


def run_key(sweep: SweepConfig, run: RunSpec) -> dict:
    """What ``run_experiment`` fingerprints for this run's checkpoint (experiment, config, seeds)."""
    return {"experiment": sweep.experiment, "config": run.variant.config, "seeds": [run.seed]}


def run_problem(sweep: SweepConfig, run: RunSpec) -> str | None:
    """Why a ``corrupt`` run cannot continue (its result or checkpoint file), else ``None``."""
    if run.path.exists():
        try:
            load_result(run.path)
        except ResultError as err:
            return str(err)
        return None
    if run.checkpoint.exists():
        return checkpoint_problem(run.checkpoint, run_key(sweep, run))
    return None


def run_state(sweep: SweepConfig, run: RunSpec) -> str:
    """``done`` (valid result for this config), ``running`` (a process holds the run's lock, e.g. a worker
    of an earlier ``sweep run`` that is still alive), ``partial`` (a checkpoint this run can resume from),
    ``pending`` (nothing yet), ``stale`` (a result for another config or seed) or ``corrupt`` (an
    unreadable result, or a checkpoint that is unreadable or of another config: see :func:`run_problem`)."""
    if run.path.exists():
        try:
            res = load_result(run.path)
        except ResultError:
            return "corrupt"
        same = (res.meta.get("experiment") == sweep.experiment and res.meta.get("seeds") == [run.seed]
                and res.meta.get("config") == run.variant.config)
        return "done" if same else "stale"
    if holder_of(run.path) is not None:
        return "running"
    if run.checkpoint.exists():
        return "corrupt" if checkpoint_problem(run.checkpoint, run_key(sweep, run)) else "partial"
    return "pending"


def running_holder(run: RunSpec) -> str:
    """Who is writing ``run`` (pid, host, command), for messages about orphaned workers."""
    return describe_holder(holder_of(run.path) or {})


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
