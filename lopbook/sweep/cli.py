"""``python -m lopbook sweep run|status|aggregate CONFIG``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lopbook.sweep.aggregate import aggregate
from lopbook.sweep.config import EXECUTOR_TYPES, load_sweep
from lopbook.sweep.execute import plan, rerun_outlook, run_sweep
from lopbook.sweep.state import STATES, status


def _cmd_sweep_run(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.config, executor=args.executor, max_parallel=args.max_parallel, out=args.out)
    if args.dry_run:
        print(plan(sweep, discard_corrupt=args.discard_corrupt))
        return 0
    report = run_sweep(sweep, discard_corrupt=args.discard_corrupt)
    done = len(report.skipped) + len(report.completed)
    print(f"sweep {sweep.name}: {len(report.completed)} runs finished now, {len(report.skipped)} were done, "
          f"{len(report.failed)} failed, {len(report.submitted)} submitted to SLURM, {len(report.running)} still "
          f"running elsewhere, {len(report.blocked)} blocked by corrupt files; {done}/{len(sweep.runs())} complete")
    if report.failed or report.blocked:
        print("what rerunning the same command will do:", file=sys.stderr)
        by_name = {r.name: r for r in sweep.runs()}
        for name, msg in report.failed.items():
            print(f"  {name} failed: {msg}; a rerun {rerun_outlook(sweep, by_name[name])}", file=sys.stderr)
        for name, msg in report.blocked.items():
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
    res = aggregate(sweep, target=target, partial=args.partial, force=args.force)
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
    r.add_argument("--discard-corrupt", action="store_true",
                   help="delete unreadable results and unusable checkpoints and start those runs over")
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
    a.add_argument("--force", action="store_true",
                   help="replace the target even if it is not an earlier aggregate of this sweep")
    a.set_defaults(func=_cmd_sweep_aggregate)


__all__ = ["add_sweep_parser"]
