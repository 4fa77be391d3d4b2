"""Examples per second: one-seed autograd + optim.SGD loop vs the batched SCR trainer, side by side.

Run: ``.venv/bin/python benchmarks/bench_scr.py [--steps 4000] [--seeds 30]``. Both measurements run in this
process one after the other on the same CPU (single thread), so the ratio is meaningful even on a shared
machine; the absolute numbers are not. "examples/s" counts learner updates summed over runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lopbook.experiments.scr import SCRConfig, method_specs
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4000, help="examples per run for each measurement")
    ap.add_argument("--seeds", type=int, default=30, help="seeds of the full-preset layout")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = autograd_loop(args.steps)
    relu300, n300 = batched([MethodSpec(f"bp{i}", "bp", "relu") for i in range(10)], 30, args.steps)
    full, nfull = batched(method_specs(SCRConfig()), args.seeds, args.steps)
    print(f"{'setting':58s} {'runs':>5s} {'examples/s':>12s} {'x autograd':>10s}")
    print(f"{'autograd + optim.SGD, one seed (torch, 1 thread)':58s} {1:5d} {base:12,.0f} {1:10.1f}")
    print(f"{'batched numpy, relu BP':58s} {n300:5d} {relu300:12,.0f} {relu300 / base:10.1f}")
    print(f"{'batched numpy, full preset (6 act. BP, CBP, L2, S&P, linear)':58s} {nfull:5d} {full:12,.0f} "
          f"{full / base:10.1f}")
    est = 1_000_000 * nfull / full / 60
    print(f"full preset, 1M examples x {nfull} runs at this speed: {est:.1f} min "
          f"(one-seed autograd loop: {1_000_000 * nfull / base / 3600:.1f} h)")


if __name__ == "__main__":
    main()
