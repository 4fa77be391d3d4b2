"""Command line: ``python -m lopbook run|list|info ...``.

Examples::

    python -m lopbook list
    python -m lopbook run scr --mode quick
    python -m lopbook run scr --preset full --seeds 30 --out data/scr/full.npz
    python -m lopbook info data/scr/full.npz
    python -m lopbook sweep run sweeps/scr_cbp_rates.yaml --max-parallel 2

Expected failures (bad input, missing data, an output that holds another result or is being written)
print one line naming the fix and exit with status 2; ``--debug`` shows their traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import NoReturn

from lopbook import experiments
from lopbook.errors import LopbookError
from lopbook.modes import MODES
from lopbook.results import load_result
from lopbook.validation import seed_range


def _cmd_list(args: argparse.Namespace) -> int:
    for name in experiments.names():
        exp = experiments.get(name)
        print(f"{name:18s} {exp.title}")
        for pname, p in exp.presets.items():
            scale = "paper scale" if p.paper_scale else "reduced"
            print(f"    --preset {pname:10s} {p.seeds:3d} seeds, {scale}: {p.note}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    preset = args.preset or args.mode or "quick"
    seeds = None
    if args.seeds is not None or args.seed_start:
        presets = experiments.get(args.experiment).presets
        count = args.seeds if args.seeds is not None else presets[preset].seeds if preset in presets else 1
        seeds = seed_range(count, args.seed_start)
    command = "python -m lopbook " + " ".join(shlex.quote(a) for a in args.argv)
    result = experiments.run_experiment(
        args.experiment, preset, seeds=seeds, device=args.device, out=args.out,
        overrides=experiments.parse_overrides(args.set), mode=args.mode, fresh=args.fresh, force=args.force,
        progress=not args.no_progress, command=command)
    if result.reused:
        print(f"{args.experiment}/{preset}: {args.out} already holds this result ({len(result.meta['seeds'])} "
              f"seeds, created {result.meta['created']}); nothing to do. Pass --force to run it again.")
        return 0
    where = f"wrote {args.out}" if args.out else "not saved (no --out)"
    print(f"{args.experiment}/{preset}: {result.meta['wall_time_s']:.1f} s, {where}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    res = load_result(args.path)
    print(json.dumps(res.meta, indent=1, sort_keys=True))
    for name, arr in sorted(res.arrays.items()):
        print(f"  {name:30s} {str(arr.dtype):8s} {arr.shape}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at ``--help`` (exit status 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lopbook", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected failures too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list experiments and their presets")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run one experiment and write its result")
    p.add_argument("experiment", help="experiment name (see `list`)")
    p.add_argument("--mode", choices=[m for m in MODES if m != "cached"],
                   help="quick: the quick preset, tiny scale in seconds on a CPU; full: the full preset "
                        "(default: quick, or whatever --preset says)")
    p.add_argument("--preset", help="named preset (default: the mode's name)")
    p.add_argument("--device", help="cpu, cuda or cuda:<i> (default: cuda for full runs when available)")
    p.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--out", help="result file (.npz); its checkpoint is <out>.ckpt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it holds another result (or this one: run it again)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("info", help="print the provenance and arrays of a result file")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)

    from lopbook.sweep import add_sweep_parser  # sweep run|status|aggregate CONFIG

    add_sweep_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; expected failures become one ``error:`` line and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # --debug is a global flag, but people type it anywhere (`run scr --debug`): accept it there too
    args = parser.parse_args(["--debug", *(a for a in argv if a != "--debug")] if "--debug" in argv else argv)
    args.argv = argv
    try:
        return args.func(args)
    except LopbookError as err:
        if args.debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted; rerun the same command to resume from the checkpoint", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    """The message on one line (some messages carry an indented command on a second line)."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())
