"""The lowest cost that exact per-step CBP magnitudes can have on a memory-bound step, measured beside BP.

The adaptable-contribution utility needs, every step, ``Σ|w|`` per row and per column of every weight matrix it
scores, i.e. one read of all of them. On the permuted-MNIST MLP (784-2000-2000-2000-10, 9.6M weights) at batch 1
a BP step itself is little more than a few passes over the weights, so that one read is a visible share of it.
This script times, in interleaved rounds (``benchmarks/_timing.py``, medians):

- ``bp``: one SGD step of the MLP (forward, backward, ``optimizer.step()``);
- ``read``: a bare read of every weight matrix (``torch.sum``), the floor for anything that looks at all weights;
- ``sums``: lopbook's single-pass ``Σ|w|`` per row and per column (:func:`lopbook.algos.units.abs_sums`).

and prints ``(bp + read) / bp`` (the floor for exact per-step magnitudes, whatever the kernel) and
``(bp + sums) / bp`` (what lopbook pays for them).

    .venv/bin/python benchmarks/bench_cbp_floor.py [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _timing import interleaved, median
from bench_cbp import pmnist_mlp

from lopbook.algos.units import abs_sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps (or passes) per round and side")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = pmnist_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.003)
    weights = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
    x, y = torch.rand(args.steps, 1, 784), torch.randint(0, 10, (args.steps, 1))

    def bp() -> float:
        t0 = time.perf_counter()
        for i in range(args.steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
        return (time.perf_counter() - t0) / args.steps

    def passes(fn) -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                for w in weights:
                    fn(w)
            return (time.perf_counter() - t0) / args.steps

    sides = {"bp": bp, "read": lambda: passes(torch.sum), "sums": lambda: passes(abs_sums)}
    bp()  # warm-up: allocations, first-touch page faults
    t = {k: median(v) for k, v in interleaved(sides, args.rounds).items()}
    n = sum(w.numel() for w in weights)
    print(f"784-2000-2000-2000-10 MLP, batch 1, SGD, {n / 1e6:.1f}M weights, threads={args.threads}, "
          f"medians of {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"  BP step {1e3 * t['bp']:.1f} ms | bare read of all weights {1e3 * t['read']:.1f} ms | "
          f"Σ|w| per row and column {1e3 * t['sums']:.1f} ms")
    print(f"  floor for exact per-step magnitudes (bp + read) / bp = {(t['bp'] + t['read']) / t['bp']:.2f}x")
    print(f"  lopbook's magnitude pass            (bp + sums) / bp = {(t['bp'] + t['sums']) / t['bp']:.2f}x")


if __name__ == "__main__":
    main()
