"""Aggregation: stack a sweep's per-seed result files into one result, shaped as one multi-seed run."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lopbook import experiments
from lopbook.errors import OutputError
from lopbook.locking import OutputLock
from lopbook.results import (
    Result,
    ResultError,
    _json_default,
    combined_commit,
    load_result,
    provenance,
    save_result,
)
from lopbook.sweep.config import SweepConfig, SweepConfigError, Variant
from lopbook.sweep.state import run_state, status


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


def _scale_note(sweep: SweepConfig, kept: list[Variant], partial: bool) -> str:
    """The preset's scale note, then what the sweep changed: for every run, then per variant.

    A run's own note lists only its variant's overrides, so the aggregate of a sweep that splits a preset by
    method would otherwise describe every method by the first variant's settings.
    """
    parts = [f"sweep {sweep.name}: {len(kept)} variants × {len(sweep.seeds)} seeds of preset {sweep.preset!r}"
             + (" (partial)" if partial else ""),
             experiments.get(sweep.experiment).presets[sweep.preset].note]
    fmt = experiments.format_overrides
    if sweep.overrides:
        parts.append(f"every run with {fmt(sweep.overrides)}")
    parts.append("variants: " + "; ".join(f"{v.label} ({fmt(v.overrides) or 'no overrides'})" for v in kept))
    return "; ".join(parts)


def aggregate(sweep: SweepConfig, *, write: bool = True, target: str | os.PathLike | None = None,
              partial: bool = False, merge: str | None = "config", force: bool = False) -> Result:
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

    A target that holds anything but an earlier aggregate of this sweep (e.g. the result of a ``run``) is
    not replaced unless ``force=True``.
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
    scale_note = _scale_note(sweep, kept, partial=bool(missing))
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
    meta["git_commit"] = combined_commit(commits)
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
        path = Path(target) if target is not None else sweep.target
        with OutputLock(path, what=f"aggregate {path}"):
            if not force:
                _check_target(path, sweep.name)
            save_result(result, path)
    return result


def _check_target(path: Path, name: str) -> None:
    """Refuse to replace a file that is not an earlier aggregate of this sweep (e.g. a `run` result)."""
    if not path.exists():
        return
    fix = "choose another `aggregate:` target or --target, or pass --force to replace it"
    try:
        meta = load_result(path).meta
    except ResultError as err:
        raise OutputError(f"aggregate target {path} exists but is not a readable lopbook result ({err}); {fix}") \
            from err
    owner = meta.get("sweep", {}).get("name") if isinstance(meta.get("sweep"), dict) else None
    if owner != name:
        what = f"an aggregate of sweep {owner!r}" if owner else f"the result of `{meta.get('command', 'a run')}`"
        raise OutputError(f"aggregate target {path} holds {what}, created {meta.get('created', '?')}; "
                          f"not overwriting it: {fix}")

