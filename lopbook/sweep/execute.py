"""Running a sweep's unfinished runs with submitit: local subprocesses, a SLURM job array, or in-process.

``run_sweep`` holds ``<out>/sweep.lock`` while it runs, so a second ``sweep run`` of the same sweep stops
at once instead of running every job twice. Each run holds its own ``<file>.lock`` (taken by
``run_experiment``), so a run whose worker outlived a killed ``sweep run`` shows up as ``running`` and is
not started a second time. Corrupt results and checkpoints are listed, and deleted only with
``discard_corrupt=True`` (``--discard-corrupt``).
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lopbook import experiments
from lopbook.locking import OutputLock
from lopbook.results import _json_default, atomic_write_bytes
from lopbook.sweep.config import SWEEP_LOCK, RunSpec, SweepConfig, SweepConfigError, _submitit
from lopbook.sweep.state import STATES, run_problem, run_state, running_holder, status, write_manifest
from lopbook.validation import check_device


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
            torch = sys.modules.get("torch")
            if torch is not None:
                torch.set_num_threads(int(s["threads"]))
            else:  # torch reads it when (if) the experiment imports it; numpy-only runs never pay for torch
                os.environ["OMP_NUM_THREADS"] = str(int(s["threads"]))
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
    running: dict[str, str] = field(default_factory=dict)  # run -> who is still writing it (not started again)
    blocked: dict[str, str] = field(default_factory=dict)  # corrupt run -> why (not started without discard)
    discarded: dict[str, str] = field(default_factory=dict)  # corrupt run -> what was deleted

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


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


def plan(sweep: SweepConfig, *, discard_corrupt: bool = False) -> str:
    """A human-readable plan: counts per state and what the executor would do (for ``--dry-run``)."""
    st = status(sweep)
    lines = [f"sweep {sweep.name!r}: experiment {sweep.experiment!r}, preset {sweep.preset!r}, "
             f"{len(sweep.variants)} variants × {len(sweep.seeds)} seeds = {len(sweep.runs())} runs in {sweep.out}",
             "  " + ", ".join(f"{len(st[s])} {s}" for s in STATES),
             f"  every variant: preset {sweep.preset!r} + {json.dumps(sweep.overrides, default=_json_default)}"]
    for v in sweep.variants:
        lines.append(f"  {v.id:40s} {json.dumps(v.overrides, default=_json_default)}")
    todo = len(st["pending"]) + len(st["partial"]) + (len(st["corrupt"]) if discard_corrupt else 0)
    for r in st["running"]:
        lines.append(f"  {r.name} is being written by {running_holder(r)}; it would not be started again")
    for r in st["corrupt"]:
        what = "would be deleted and started over" if discard_corrupt else "blocks until you pass --discard-corrupt"
        lines.append(f"  {r.name}: {run_problem(sweep, r)}; {what}")
    for r in st["stale"]:
        lines.append(f"  {r.name}: {r.path} holds a result of another config or seed; `sweep run` refuses to start")
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


def run_sweep(sweep: SweepConfig, *, log: Callable[[str], None] = print, poll_s: float = 0.2,
              discard_corrupt: bool = False) -> SweepReport:
    """Run every unfinished run of ``sweep``; finished runs are skipped, interrupted ones resume.

    Local and debug executors block until all runs end (failures are collected, not raised: rerun the
    sweep to retry them, resuming from their checkpoints). SLURM submits one job array and returns.
    Runs another process is still writing are left alone (``report.running``); corrupt runs are left
    alone (``report.blocked``) unless ``discard_corrupt``, which deletes their bad file and starts them over.
    Raises :class:`~lopbook.errors.BusyError` when another ``sweep run`` of this sweep is going on.
    """
    if sweep.device and sweep.executor.type != "slurm":  # a SLURM head node need not have the GPUs itself
        check_device(sweep.device)
    with OutputLock(sweep.out / SWEEP_LOCK, what=f"sweep {sweep.name!r} in {sweep.out}",
                    fix="wait for that `sweep run` to finish, or stop it (kill <pid>) and rerun"):
        return _run_locked(sweep, log, poll_s, discard_corrupt)


def _discard(sweep: SweepConfig, run: RunSpec) -> str:
    """Delete the unusable file of a corrupt run; returns what was deleted and why."""
    problem = run_problem(sweep, run) or "unusable"
    bad = run.path if run.path.exists() else run.checkpoint
    bad.unlink(missing_ok=True)
    if bad == run.path:
        run.checkpoint.unlink(missing_ok=True)
    return f"deleted {bad.name} ({problem})"


def _run_locked(sweep: SweepConfig, log: Callable[[str], None], poll_s: float,
                discard_corrupt: bool) -> SweepReport:
    st = status(sweep)
    if st["stale"]:
        files = ", ".join(str(r.path) for r in st["stale"][:5])
        raise SweepConfigError(f"{len(st['stale'])} result files belong to another config or seed ({files}"
                               f"{', ...' if len(st['stale']) > 5 else ''}); the experiment's preset probably "
                               f"changed. Delete them or choose another `out:` folder")
    write_manifest(sweep)
    report = SweepReport(skipped=[r.name for r in st["done"]], resumed=[r.name for r in st["partial"]])
    for r in st["running"]:
        report.running[r.name] = running_holder(r)
        log(f"  {r.name} is still being written by {report.running[r.name]} (a worker of an earlier "
            f"`sweep run` that outlived it?); not starting it twice. Wait for it, or kill it and rerun")
    for r in st["corrupt"]:
        if discard_corrupt:
            report.discarded[r.name] = _discard(sweep, r)
            log(f"  {r.name}: {report.discarded[r.name]}; it starts over")
        else:
            report.blocked[r.name] = (f"{run_problem(sweep, r)}; rerun with --discard-corrupt to delete it "
                                      f"and start this run over")
            log(f"  BLOCKED {r.name}: {report.blocked[r.name]}")
    todo_names = {r.name for s in ("pending", "partial") for r in st[s]} | set(report.discarded)
    if sweep.executor.type == "slurm":  # jobs of an earlier submission that are still queued hold no lock yet
        for name, job_id in _slurm_queued(sweep).items():
            if name in todo_names:
                todo_names.discard(name)
                report.running[name] = f"SLURM job {job_id} (still queued or running)"
                log(f"  {name} is still in the SLURM queue as job {job_id}; not submitting it twice")
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
        recorded = {**_slurm_jobs(sweep), **{r.name: j.job_id for r, j in zip(todo, jobs, strict=True)}}
        atomic_write_bytes(sweep.out / SLURM_JOBS, json.dumps(recorded, indent=1).encode())
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


SLURM_JOBS = "slurm_jobs.json"


def _slurm_jobs(sweep: SweepConfig) -> dict[str, str]:
    """Run name -> SLURM job id of every submission so far (``<out>/slurm_jobs.json``)."""
    try:
        jobs = json.loads((sweep.out / SLURM_JOBS).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in jobs.items()} if isinstance(jobs, dict) else {}


def _slurm_queued(sweep: SweepConfig) -> dict[str, str]:
    """The recorded runs whose SLURM job is still queued or running (``squeue``; empty without it)."""
    jobs = _slurm_jobs(sweep)
    if not jobs:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-u", getpass.getuser()], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    live = set(out.stdout.split())
    return {name: job_id for name, job_id in jobs.items() if job_id in live}


def rerun_outlook(sweep: SweepConfig, run: RunSpec) -> str:
    """What rerunning ``sweep run`` will do for ``run``, judged from the files on disk now."""
    return {"done": "is done after all",
            "running": f"is still being written by {running_holder(run)}",
            "partial": "resumes from its checkpoint",
            "pending": "starts over (it wrote no checkpoint)",
            "stale": "holds a result of another config: delete it first",
            "corrupt": f"cannot continue ({run_problem(sweep, run)}): rerun with --discard-corrupt to start it over",
            }[run_state(sweep, run)]


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

