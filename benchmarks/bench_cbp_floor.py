"""The lowest cost that exact per-step CBP magnitudes can have on a memory-bound step, measured beside BP.

The adaptable-contribution utility needs, every step, ``Σ|w|`` per row and per column of every weight matrix it
scores, i.e. one read of all of them. On the permuted-MNIST MLP (784-2000-2000-2000-10, 9.6M weights) at batch 1
a BP step itself is little more than a few passes over the weights, so that one read is a visible share of it.
This script times, in interleaved rounds (``benchmarks/_timing.py``, medians):

- ``bp``: one SGD step of the MLP (forward, backward, ``optimizer.step()``);
- ``read``: a bare read of every weight matrix (``torch.sum``), the floor for anything that looks at all weights;
- ``sums``: lopbook's single-pass ``Σ|w|`` per row and per column (:func:`lopbook.algos.units.abs_sums`);
- ``fused``: the BP step with its SGD update of the weight matrices done by
  :func:`lopbook.algos.fused_sgd.sgd_step_abs_sums`, which sums ``|w|`` per row and column while it writes ``w``.

and prints ``(bp + read) / bp`` (the floor for a separate exact read, whatever the kernel), ``(bp + sums) / bp``
(lopbook's separate pass) and ``fused / bp`` (the magnitudes inside the update, what CBP does with plain SGD).

    .venv/bin/python benchmarks/bench_cbp_floor.py [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _timing import interleaved, median
from bench_cbp import pmnist_mlp

from lopbook.algos import fused_sgd
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

    sums = [(torch.empty(w.shape[0]), torch.empty(w.shape[1])) for w in weights]
    fused_ids = {id(w) for w in weights}
    bias_opt = torch.optim.SGD([p for p in model.parameters() if id(p) not in fused_ids], lr=0.003)

    def fused() -> float:
        t0 = time.perf_counter()
        for i in range(args.steps):
            bias_opt.zero_grad(set_to_none=True)
            for w in weights:
                w.grad = None
            F.cross_entropy(model(x[i]), y[i]).backward()
            for w, (r, c) in zip(weights, sums, strict=True):
                fused_sgd.sgd_step_abs_sums(w, w.grad, 0.003, r, c)
            bias_opt.step()
        return (time.perf_counter() - t0) / args.steps

    def passes(fn) -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                for w in weights:
                    fn(w)
            return (time.perf_counter() - t0) / args.steps

    sides = {"bp": bp, "read": lambda: passes(torch.sum), "sums": lambda: passes(abs_sums)}
    if fused_sgd.AVAILABLE:
        sides["fused"] = fused
        fused()  # warm-up: compiles the kernel (cached on disk afterwards)
    bp()  # warm-up: allocations, first-touch page faults
    t = {k: median(v) for k, v in interleaved(sides, args.rounds).items()}
    n = sum(w.numel() for w in weights)
    print(f"784-2000-2000-2000-10 MLP, batch 1, SGD, {n / 1e6:.1f}M weights, threads={args.threads}, "
          f"medians of {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"  BP step {1e3 * t['bp']:.1f} ms | bare read of all weights {1e3 * t['read']:.1f} ms | "
          f"Σ|w| per row and column {1e3 * t['sums']:.1f} ms")
    print(f"  floor for exact per-step magnitudes (bp + read) / bp = {(t['bp'] + t['read']) / t['bp']:.2f}x")
    print(f"  lopbook's magnitude pass            (bp + sums) / bp = {(t['bp'] + t['sums']) / t['bp']:.2f}x")
    if "fused" in t:
        print(f"  magnitudes inside the SGD update    fused / bp       = {t['fused'] / t['bp']:.2f}x "
              f"(fused step {1e3 * t['fused']:.1f} ms)")
    else:
        print("  (numba is not installed: no fused side)")


if __name__ == "__main__":
    main()
