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

Concurrency: ``sweep run`` holds ``<out>/sweep.lock`` and every run holds ``<run file>.lock``
(:mod:`lopbook.locking`), so a second ``sweep run`` of the same sweep stops at once and a run whose worker
outlived a killed ``sweep run`` is reported as ``running`` instead of being started twice. Corrupt result
or checkpoint files block their run until ``--discard-corrupt`` deletes them.

Modules: :mod:`~lopbook.sweep.config` (parsing and validation), :mod:`~lopbook.sweep.state` (runs on disk),
:mod:`~lopbook.sweep.execute` (submitit), :mod:`~lopbook.sweep.aggregate`, :mod:`~lopbook.sweep.cli`.

Execution uses submitit: ``LocalExecutor`` (subprocesses on this machine; no server) by default,
``SlurmExecutor`` (one job array, requeued on preemption) for a cluster, ``DebugExecutor``
(in-process) for tests and debugging.
"""

from lopbook.sweep.aggregate import _find_tables, _merge_methods, _stack_seeds, aggregate
from lopbook.sweep.cli import add_sweep_parser
from lopbook.sweep.config import (
    ExecutorConfig,
    RunSpec,
    SweepConfig,
    SweepConfigError,
    Variant,
    load_sweep,
    parse_sweep,
    read_config_file,
    variant_id,
    variant_label,
)
from lopbook.sweep.execute import RunJob, SweepReport, _local_gpus, _local_threads, _pick_gpu, plan, run_sweep
from lopbook.sweep.state import STATES, run_problem, run_state, status, write_manifest

__all__ = ["SweepConfig", "SweepConfigError", "Variant", "RunSpec", "ExecutorConfig", "SweepReport", "RunJob",
           "load_sweep", "parse_sweep", "read_config_file", "variant_id", "variant_label", "status", "run_state",
           "run_problem", "plan", "run_sweep", "aggregate", "write_manifest", "add_sweep_parser", "STATES",
           "_stack_seeds", "_find_tables", "_merge_methods", "_local_gpus", "_local_threads", "_pick_gpu"]
