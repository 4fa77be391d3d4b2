"""Online permuted MNIST: every task is the same images under a fresh pixel permutation.

Upstream permutes the already-permuted data in place at every task boundary; the composition of a uniform random
permutation with any fixed one is again uniform, so drawing a fresh permutation of the *original* pixels per task
gives the same distribution of task sequences, and lets any task be rebuilt from ``(seed, task)`` alone (which a
resumed run needs). Pixels are scaled to [0, 1] with no mean/std normalisation, as upstream.

The images stay on the device as uint8 ``(N, P)``; the permutation and the scaling happen per batch, on the
device, in :attr:`lopbook.engine.Task.transform`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lopbook.engine import Task

__all__ = ["task_permutation", "PermutedStream", "PermuteScale"]


def task_permutation(seed: int, task: int, n_pixels: int) -> torch.Tensor:
    """The pixel permutation of task ``task`` in run ``seed``: a bijection of ``range(n_pixels)`` (int64).

    Seeded by the pair ``(seed, task)`` through numpy's SeedSequence, so it does not depend on what ran before.
    """
    if n_pixels < 1:
        raise ValueError(f"n_pixels must be >= 1, got {n_pixels}")
    if seed < 0 or task < 0:
        raise ValueError(f"seed and task must be >= 0, got seed={seed}, task={task}")
    rng = np.random.default_rng([int(seed), int(task), 0x9E3779B9])
    return torch.from_numpy(rng.permutation(n_pixels).astype(np.int64))


@dataclass
class PermuteScale:
    """The per-batch transform: ``x[:, perm] / 255`` as float32 (``x`` is uint8 ``(B, P)``)."""

    perm: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.perm).float().div_(255.0)


class PermutedStream:
    """A task stream ``stream(t) -> Task`` for permuted MNIST (or any image set flattened to ``(N, P)``).

    Args:
        images: uint8 images ``(N, H, W)`` or ``(N, P)``; flattened and moved to ``device`` once.
        labels: int64 labels ``(N,)``.
        seed: the run's seed; task ``t`` uses :func:`task_permutation` ``(seed, t, P)``.
        device: where the data and permutations live.
        permute_first: if ``False``, task 0 keeps the original pixel order (a sanity baseline); default ``True``,
            as upstream (the first task is already permuted).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, seed: int, device: str | torch.device = "cpu",
                 permute_first: bool = True) -> None:
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (0-255), got {images.dtype}; the stream divides by 255 itself")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device)
        self.x = images.reshape(len(images), -1).to(self.device)
        self.y = labels.to(torch.long).to(self.device)
        self.seed = int(seed)
        self.permute_first = permute_first
        self.n_pixels = self.x.shape[1]

    def permutation(self, t: int) -> torch.Tensor:
        """Task ``t``'s permutation on the stream's device."""
        if t == 0 and not self.permute_first:
            return torch.arange(self.n_pixels, device=self.device)
        return task_permutation(self.seed, t, self.n_pixels).to(self.device)

    def __call__(self, t: int) -> Task:
        return Task(self.x, self.y, transform=PermuteScale(self.permutation(t)), name=f"permutation {t}",
                    info={"task": t})
