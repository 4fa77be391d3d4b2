"""Cost of continual backprop per training step: BP vs BP+CBP, side by side, measured in one run.

A step is forward + backward + SGD(momentum) step (+ ``cbp.step()``). BP and CBP copies of the same network
are timed in interleaved rounds (so load changes on a shared machine hit both) and the median per-step time is
reported, plus the mean time of ``cbp.step()`` alone (the hook reductions inside the forward pass are not
in it), which is less exposed to load noise on a shared machine. CBP runs with maturity 0, so it replaces
units at its steady-state rate from the first step.

    .venv/bin/python benchmarks/bench_cbp.py            # CPU (and CUDA if available), a few minutes
    .venv/bin/python benchmarks/bench_cbp.py --device cuda --rounds 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lopbook.algos.cbp import ContinualBackprop
from lopbook.nets.resnet import ResNet18

try:
    from lopbook.nets.convnet import ConvNet
except ImportError:  # pragma: no cover - the library net is the one to time; this is only a fallback
    ConvNet = None


def imagenet_convnet() -> nn.Module:
    if ConvNet is not None:
        return ConvNet(2)
    return nn.Sequential(nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(64, 128, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 2000), nn.ReLU(), nn.Linear(2000, 2000), nn.ReLU(),
                         nn.Linear(2000, 2000), nn.ReLU(), nn.Linear(2000, 10))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(name: str, make: Callable[[], nn.Module], x_shape: tuple[int, ...], classes: int, cbp_kwargs: dict,
          device: str, rounds: int, steps_per_round: int) -> dict:
    torch.manual_seed(0)
    base = make().to(device)
    x = torch.randn(*x_shape, device=device)
    y = torch.randint(0, classes, (x_shape[0],), device=device)
    runs = {}
    for method in ("bp", "cbp"):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        cbp = ContinualBackprop(model, opt, maturity_threshold=0, **cbp_kwargs) if method == "cbp" else None
        runs[method] = (model, opt, cbp)

    def one_step(model: nn.Module, opt: torch.optim.Optimizer, cbp: ContinualBackprop | None) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cbp is not None:
            sync(device)
            t0 = time.perf_counter()
            cbp.step()
            sync(device)
            step_times.append(time.perf_counter() - t0)

    step_times: list[float] = []
    for method in runs:  # warm-up: allocations, optimizer state, first replacement
        one_step(*runs[method])
    sync(device)
    step_times.clear()
    times: dict[str, list[float]] = {"bp": [], "cbp": []}
    for r in range(rounds):
        order = ("bp", "cbp") if r % 2 == 0 else ("cbp", "bp")
        for method in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                one_step(*runs[method])
            sync(device)
            times[method].append((time.perf_counter() - t0) / steps_per_round)
    bp, cb = statistics.median(times["bp"]), statistics.median(times["cbp"])
    cbp = runs["cbp"][2]
    # cbp.step() alone (mean, replacement steps included): less exposed to load noise than the difference
    step_ms = 1e3 * statistics.fmean(step_times)
    return {"name": name, "device": device, "bp_ms": 1e3 * bp, "cbp_ms": 1e3 * cb, "ratio": cb / bp,
            "step_ms": step_ms, "step_ratio": (1e3 * bp + step_ms) / (1e3 * bp),
            "replaced": sum(cbp.n_replaced), "steps": cbp.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if available)")
    ap.add_argument("--rounds", type=int, default=0, help="timing rounds per case (0: per-case default)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps a shared machine fair)")
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    for device in devices:
        gpu = device.startswith("cuda")
        cases = [
            ("MLP 784-2000x3-10, batch 1", mlp, (1, 784), 10, {"replacement_rate": 1e-4}, 15 if gpu else 9, 20),
            ("MLP 784-2000x3-10, batch 1, out_refresh=10", mlp, (1, 784), 10,
             {"replacement_rate": 1e-4, "out_refresh": 10}, 15 if gpu else 9, 20),
            ("MLP 784-2000x3-10, batch 256", mlp, (256, 784), 10, {"replacement_rate": 1e-4}, 15 if gpu else 5, 5 if gpu else 2),
            ("ImageNet ConvNet, batch 100", imagenet_convnet, (100, 3, 32, 32), 2, {"replacement_rate": 1e-4},
             15 if gpu else 7, 10 if gpu else 3),
        ]
        if not args.skip_resnet:
            cases.append(("ResNet-18 CIFAR, batch 90", lambda: ResNet18(100), (90, 3, 32, 32), 100,
                          {"replacement_rate": 1e-5, "decay_rate": 0.99, "init": "kaiming_normal"},
                          15 if gpu else 3, 5 if gpu else 1))
        for name, make, shape, classes, kw, rounds, spr in cases:
            row = bench(name, make, shape, classes, kw, device, args.rounds or rounds, spr)
            rows.append(row)
            print(f"{row['device']:5s} {row['name']:44s} BP {row['bp_ms']:9.2f} ms  CBP {row['cbp_ms']:9.2f} ms  "
                  f"CBP/BP {row['ratio']:.3f} | cbp.step() {row['step_ms']:7.2f} ms, (BP+step)/BP "
                  f"{row['step_ratio']:.3f} | {row['replaced']} units replaced in {row['steps']} steps",
                  flush=True)
    print(f"\nthreads={args.threads} torch={torch.__version__}; goal CBP/BP <= 1.15")


if __name__ == "__main__":
    main()
