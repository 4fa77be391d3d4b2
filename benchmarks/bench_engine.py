"""Engine vs a plain ``torch.utils.data.DataLoader`` loop: same model, same data, same number of updates.

Both train an MLP on permuted MNIST-shaped data (uint8 images, a pixel permutation and /255 per batch) for one
pass. The DataLoader loop is the idiomatic baseline: a ``TensorDataset`` on the host, shuffling ``DataLoader``,
per-batch ``.to(device)``, ``loss.item()`` and accuracy read back every step (a host sync per step). The engine
keeps the data on the device, draws batches by an on-device permutation and fetches its logs once per task.

Run: ``python benchmarks/bench_engine.py [--device cuda] [--batch-sizes 1 16 64] [--examples 4000] [--rounds 5]``.
Prints examples/s for both and their ratio: the two run interleaved in rounds (alternating which goes first)
and each one's median over the rounds is reported, so load changes on a shared machine hit both alike.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _timing import interleaved, median
from torch.utils.data import DataLoader, TensorDataset

from lopbook.engine import Engine, EngineConfig
from lopbook.nets import MLP
from lopbook.problems.permuted_mnist import PermutedStream, task_permutation


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_engine(images, labels, width, batch_size, device, seed=0) -> float:
    torch.manual_seed(seed)
    model = MLP(784, [width] * 3, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    eng = Engine(model, opt, config=EngineConfig(batch_size=batch_size), device=device, seed=seed)
    task = PermutedStream(images, labels, seed=seed, device=device)(0)
    _sync(device)
    t0 = time.perf_counter()
    eng.train_task(task)
    _sync(device)
    return len(images) / (time.perf_counter() - t0)


def bench_dataloader(images, labels, width, batch_size, device, seed=0) -> float:
    torch.manual_seed(seed)
    model = MLP(784, [width] * 3, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    perm = task_permutation(seed, 0, 784)
    loader = DataLoader(TensorDataset(images.reshape(len(images), -1), labels), batch_size=batch_size,
                        shuffle=True)
    accs, losses = [], []
    _sync(device)
    t0 = time.perf_counter()
    for xb, yb in loader:
        xb = xb[:, perm].float().div_(255).to(device)
        yb = yb.to(device)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accs.append((out.argmax(1) == yb).float().mean().item())
    _sync(device)
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.examples, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.examples,), generator=g)
    print(f"device={args.device} width={args.width} examples={args.examples} threads={args.threads} "
          f"torch={torch.__version__}")
    print(f"medians of {args.rounds} interleaved rounds")
    print(f"{'batch':>6} {'engine ex/s':>12} {'DataLoader ex/s':>16} {'ratio':>7}")
    for bs in args.batch_sizes:
        sides = {"engine": lambda bs=bs: bench_engine(images, labels, args.width, bs, args.device),
                 "loader": lambda bs=bs: bench_dataloader(images, labels, args.width, bs, args.device)}
        rates = interleaved(sides, args.rounds)
        e, d = median(rates["engine"]), median(rates["loader"])
        print(f"{bs:>6} {e:>12.0f} {d:>16.0f} {e / d:>6.2f}x")


if __name__ == "__main__":
    main()
