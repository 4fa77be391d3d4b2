"""Cost of the safe checkpoint format against the old pickle one (``torch.save`` / ``torch.load(weights_only=False)``).

Two real states, each written to a file (atomically, with fsync, as runs do) and read back in both formats, in interleaved rounds (load changes on a
shared machine hit both), median per round:

- ``scr``: the SCR trainer at the paper's scale (30 seeds, every learner, 50 bins of history): numpy only;
- ``resnet``: an engine-style state of the incremental-CIFAR ResNet-18 (weights, SGD momentum, RNG states).

    .venv/bin/python benchmarks/bench_checkpoint.py --rounds 7
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lopbook.checkpoint import Checkpoint
from lopbook.results import atomic_write_bytes


def scr_state() -> dict[str, Any]:
    from lopbook.experiments import scr
    from lopbook.problems.scr_trainer import BatchedSCRTrainer

    cfg = scr.EXPERIMENT.preset_config("full")
    tr = BatchedSCRTrainer(scr.method_specs(cfg), list(range(30)), variant=cfg.variant, period=cfg.period,
                           bin_size=cfg.bin_size, chunk=cfg.chunk, probe_size=cfg.probe_size)
    st = tr.state()
    rng = np.random.default_rng(0)
    shape = (len(tr.methods), 30)
    st["history"] = {k: [rng.random(shape) for _ in range(50)] for k in st["history"]}
    return st


def resnet_state() -> dict[str, Any]:
    from lopbook.engine import rng_state
    from lopbook.nets.resnet import ResNet18

    model = ResNet18(num_classes=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()}, "optimizer": opt.state_dict(),
            "steps_done": 1, "rng": rng_state()}


def old_round_trip(state: dict[str, Any], folder: Path) -> int:
    """The previous format: one pickle, written atomically, read with ``weights_only=False``."""
    path = folder / "old.ckpt"
    buf = io.BytesIO()
    torch.save({"key": "k", "state": state, "elapsed_s": 0.0, "commits": []}, buf)
    atomic_write_bytes(path, buf.getvalue())
    torch.load(path, map_location="cpu", weights_only=False)
    return path.stat().st_size


def new_round_trip(state: dict[str, Any], folder: Path) -> int:
    path = folder / "new.ckpt"
    Checkpoint(path, key="k").save(state, force=True)
    Checkpoint(path, key="k").load()
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    for name, make in (("scr", scr_state), ("resnet", resnet_state)):
        state = make()
        times: dict[str, list[float]] = {"old": [], "new": []}
        sizes = {}
        for _ in range(args.rounds):
            for kind, fn in (("old", old_round_trip), ("new", new_round_trip)):
                t0 = time.perf_counter()
                sizes[kind] = fn(state, folder)
                times[kind].append(time.perf_counter() - t0)
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"{name:7s} save+load: pickle {old * 1e3:8.1f} ms ({sizes['old'] / 2**20:6.1f} MiB), "
              f"safe {new * 1e3:8.1f} ms ({sizes['new'] / 2**20:6.1f} MiB); safe/pickle time {new / old:.2f}x")


    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
