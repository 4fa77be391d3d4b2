"""Examples per second: one-seed autograd + optim.SGD loop vs the batched SCR trainer, side by side.

Run: ``.venv/bin/python benchmarks/bench_scr.py [--steps 4000] [--seeds 30] [--rounds 5] [--workers 1 2]``.
The measurements run interleaved in rounds (each round runs every setting once, in alternating order) on the
same CPU (single thread) and each setting's median over the rounds is printed, so the ratios are meaningful
even on a shared machine; the absolute numbers are not. "examples/s" counts learner updates summed over runs.
``--workers`` also times the full preset's seeds split over that many processes (the default worker count of
``lopbook.experiments.scr`` is one per idle core: see ``idle_cores``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _timing import interleaved, median

from lopbook.experiments.scr import SCRConfig, idle_cores, method_specs, train_parallel
from lopbook.problems.scr import SCRStream
from lopbook.problems.scr_trainer import BatchedSCRTrainer, MethodSpec


def autograd_loop(steps: int, seed: int = 0) -> float:
    """The straightforward way: nn.Sequential + autograd + optim.SGD, one example at a time."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(20, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = SCRStream(seed).next_chunk(steps, np.float32)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    errs = torch.empty(steps)
    start = time.perf_counter()
    for i in range(steps):
        loss = torch.nn.functional.mse_loss(net(xs[i:i + 1])[0, 0], ys[i])
        errs[i] = loss.detach()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def batched(specs: list[MethodSpec], seeds: int, steps: int) -> tuple[float, int]:
    tr = BatchedSCRTrainer(specs, list(range(seeds)), bin_size=steps, chunk=min(1000, steps), probe_size=200)
    start = time.perf_counter()
    tr.train(steps)
    return tr.n_runs * steps / (time.perf_counter() - start), tr.n_runs


def parallel(seeds: int, steps: int, workers: int) -> float:
    cfg = SCRConfig(n_examples=steps, bin_size=steps, chunk=min(1000, steps), probe_size=200)
    start = time.perf_counter()
    train_parallel(cfg, list(range(seeds)), None, progress=False, workers=workers)
    return len(method_specs(cfg)) * seeds * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4000, help="examples per run for each measurement")
    ap.add_argument("--seeds", type=int, default=30, help="seeds of the full-preset layout")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument("--workers", type=int, nargs="*", default=[], help="also time the full preset in N processes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = {}

    def relu_bp() -> float:
        r, n["relu"] = batched([MethodSpec(f"bp{i}", "bp", "relu") for i in range(10)], 30, args.steps)
        return r

    def full_preset() -> float:
        r, n["full"] = batched(method_specs(SCRConfig()), args.seeds, args.steps)
        return r

    sides = {"autograd": lambda: autograd_loop(args.steps), "relu": relu_bp, "full": full_preset}
    for w in args.workers:
        sides[f"full_w{w}"] = (lambda w=w: parallel(args.seeds, args.steps, w))
    rates = {k: median(v) for k, v in interleaved(sides, args.rounds).items()}
    base = rates["autograd"]
    print(f"{'setting':58s} {'runs':>5s} {'examples/s':>12s} {'x autograd':>10s}")
    print(f"{'autograd + optim.SGD, one seed (torch, 1 thread)':58s} {1:5d} {base:12,.0f} {1:10.1f}")
    print(f"{'batched numpy, relu BP':58s} {n['relu']:5d} {rates['relu']:12,.0f} {rates['relu'] / base:10.1f}")
    print(f"{'batched numpy, full preset (6 act. BP, CBP, L2, S&P, linear)':58s} {n['full']:5d} "
          f"{rates['full']:12,.0f} {rates['full'] / base:10.1f}")
    for w in args.workers:
        r = rates[f"full_w{w}"]
        print(f"{f'  same, seeds split over {w} worker processes':58s} {n['full']:5d} {r:12,.0f} {r / base:10.1f}"
              f"   ({r / rates['full']:.2f}x one process)")
    est = 1_000_000 * n["full"] / rates["full"] / 60
    print(f"full preset, 1M examples x {n['full']} runs at this speed: {est:.1f} min "
          f"(one-seed autograd loop: {1_000_000 * n['full'] / base / 3600:.1f} h); medians of {args.rounds} "
          f"interleaved rounds; idle cores now: {idle_cores()} of {os.cpu_count()}")


if __name__ == "__main__":
    main()
