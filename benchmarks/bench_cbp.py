"""Cost of continual backprop per training step: BP vs BP+CBP on the networks, batch sizes, optimisers and
utilities the presets use, side by side.

A step is forward + backward + optimiser step (+ ``cbp.step()``). BP and CBP copies of the same network are
timed in interleaved rounds (each round runs both, in alternating order, so load changes on a shared machine
hit both) and the median per-step time over the rounds is reported, with the mean time of ``cbp.step()``
alone and ``(BP + cbp.step()) / BP``, which is far less exposed to load noise than the ratio of two step times
(but leaves out the hook reductions inside the forward pass). CBP runs with maturity 0, so it replaces units at
its steady-state rate from the first step.

Where CBP does plain SGD's update of a weight matrix itself, fused with its ``Σ|w|`` sums (``fuse_sgd``,
:mod:`lopbook.algos.fused_sgd`; the line says how many layers), that work runs inside ``optimizer.step()``: only
CBP/BP counts it, and the ``fuse_sgd=False`` case shows what a separate read of the weights costs instead.

    .venv/bin/python benchmarks/bench_cbp.py                # CPU (and CUDA if available), a few minutes
    .venv/bin/python benchmarks/bench_cbp.py --device cuda --rounds 20
    .venv/bin/python benchmarks/bench_cbp.py --only convnet # cases whose name contains 'convnet'
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from _timing import interleaved, median
from torch import nn

from lopbook.algos.cbp import ContinualBackprop
from lopbook.nets.convnet import ConvNet
from lopbook.nets.resnet import ResNet18


def pmnist_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 2000), nn.ReLU(), nn.Linear(2000, 2000), nn.ReLU(),
                         nn.Linear(2000, 2000), nn.ReLU(), nn.Linear(2000, 10))


def ppo_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(17, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 6))


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> Callable:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def adam(lr: float, betas: tuple[float, float], weight_decay: float = 0.0) -> Callable:
    return lambda params: torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


@dataclass
class Case:
    name: str
    make: Callable[[], nn.Module]
    x_shape: tuple[int, ...]
    classes: int  # 0: regression (MSE on `classes`-free outputs)
    optimizer: Callable
    cbp: dict = field(default_factory=dict)
    rounds: int = 7
    steps_per_round: int = 10


CASES = [
    # permuted MNIST, paper scale: batch 1, SGD 0.003, the adaptable utility. One step per round and many rounds:
    # on a shared machine the speed drifts within a second, and alternating single steps pairs them closely.
    Case("pMNIST MLP 784-2000x3-10, batch 1, SGD, adaptable", pmnist_mlp, (1, 784), 10, sgd(0.003),
         {"replacement_rate": 1e-4, "utility": "adaptable_contribution", "init": "kaiming_uniform"}, 301, 1),
    # the same, with the magnitudes read in a separate pass instead of inside the fused SGD update
    Case("pMNIST MLP 784-2000x3-10, batch 1, SGD, adaptable, fuse_sgd=False", pmnist_mlp, (1, 784), 10,
         sgd(0.003), {"replacement_rate": 1e-4, "utility": "adaptable_contribution", "init": "kaiming_uniform",
                      "fuse_sgd": False}, 301, 1),
    Case("pMNIST MLP 784-2000x3-10, batch 1, SGD, contribution", pmnist_mlp, (1, 784), 10, sgd(0.003),
         {"replacement_rate": 1e-4}, 301, 1),
    # continual ImageNet: batch 100, SGD 0.01 with momentum 0.9, the adaptable utility
    Case("ImageNet ConvNet, batch 100, SGD+momentum, adaptable", lambda: ConvNet(2), (100, 3, 32, 32), 2,
         sgd(0.01, 0.9), {"replacement_rate": 3e-4, "utility": "adaptable_contribution"}, 9, 3),
    # slippery ant: PPO's 256x2 MLPs, minibatch 128, Adam betas (0.99, 0.99), L2 1e-4, contribution
    Case("PPO MLP 17-256-256-6, batch 128, Adam (0.99, 0.99), contribution", ppo_mlp, (128, 17), 0,
         adam(1e-4, (0.99, 0.99), 1e-4), {"replacement_rate": 1e-4, "decay_rate": 0.99, "init": "lecun"}, 9, 20),
    # incremental CIFAR: ResNet-18, batch 90, SGD 0.1 with momentum 0.9 and L2 5e-4, contribution
    Case("ResNet-18 CIFAR, batch 90, SGD+momentum, contribution", lambda: ResNet18(100), (90, 3, 32, 32), 100,
         sgd(0.1, 0.9, 5e-4), {"replacement_rate": 1e-5, "decay_rate": 0.99, "init": "kaiming_normal"}, 5, 1),
]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(case: Case, device: str, rounds: int) -> dict:
    torch.manual_seed(0)
    base = case.make().to(device)
    x = torch.randn(*case.x_shape, device=device)
    if case.classes:
        y = torch.randint(0, case.classes, (case.x_shape[0],), device=device)
        loss_fn = F.cross_entropy
    else:
        with torch.no_grad():
            y = torch.randn_like(base(x))
        loss_fn = F.mse_loss
    runs = {}
    for method in ("bp", "cbp"):
        model = copy.deepcopy(base)
        opt = case.optimizer(model.parameters())
        cbp = ContinualBackprop(model, opt, maturity_threshold=0, **case.cbp) if method == "cbp" else None
        runs[method] = (model, opt, cbp)
    step_times: list[float] = []

    def one_step(model: nn.Module, opt: torch.optim.Optimizer, cbp: ContinualBackprop | None) -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cbp is not None:
            sync(device)
            t0 = time.perf_counter()
            cbp.step()
            sync(device)
            step_times.append(time.perf_counter() - t0)

    def side(method: str) -> Callable[[], float]:
        def run() -> float:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(case.steps_per_round):
                one_step(*runs[method])
            sync(device)
            return (time.perf_counter() - t0) / case.steps_per_round
        return run

    for method in runs:  # warm-up: allocations, optimizer state, first replacement
        one_step(*runs[method])
    step_times.clear()
    times = interleaved({m: side(m) for m in runs}, rounds)
    bp, cb = median(times["bp"]), median(times["cbp"])
    cbp = runs["cbp"][2]
    step_ms = 1e3 * sum(step_times) / len(step_times)
    return {"name": case.name, "device": device, "bp_ms": 1e3 * bp, "cbp_ms": 1e3 * cb, "ratio": cb / bp,
            "ratios": sorted(c / b for b, c in zip(times["bp"], times["cbp"], strict=True)),
            "step_ms": step_ms, "step_ratio": (1e3 * bp + step_ms) / (1e3 * bp),
            "replaced": sum(cbp.n_replaced), "steps": cbp.steps, "rounds": rounds, "fused": len(cbp.fused_layers)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if available)")
    ap.add_argument("--rounds", type=int, default=0, help="timing rounds per case (0: per-case default, >= 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps a shared machine fair)")
    ap.add_argument("--only", default="", help="run only cases whose name contains this (case-insensitive)")
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for device in devices:
        for case in CASES:
            if args.only.lower() not in case.name.lower() or (args.skip_resnet and "ResNet" in case.name):
                continue
            rounds = args.rounds or (max(case.rounds, 15) if device.startswith("cuda") else case.rounds)
            row = bench(case, device, rounds)
            lo, hi = row["ratios"][0], row["ratios"][-1]
            print(f"{row['device']:5s} {row['name']:68s} BP {row['bp_ms']:8.2f} ms  CBP {row['cbp_ms']:8.2f} ms  "
                  f"CBP/BP {row['ratio']:.3f} (per round: median {median(row['ratios']):.3f}, {lo:.2f}-{hi:.2f}; "
                  f"{rounds} rounds) | cbp.step() {row['step_ms']:6.2f} ms, (BP+step)/BP {row['step_ratio']:.3f} | "
                  f"{row['replaced']} replaced in {row['steps']} steps | fused SGD layers {row['fused']}", flush=True)
    print(f"\nthreads={args.threads} torch={torch.__version__}; medians of interleaved rounds")


if __name__ == "__main__":
    main()
