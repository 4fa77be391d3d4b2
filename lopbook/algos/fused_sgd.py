"""Plain SGD's update of a weight matrix and ``Σ|w|`` per row and column of the result, in one pass over it.

Continual backprop's utilities need ``Σ|w|`` per row and column of the weights every step (Algorithm 1 reads
them after the optimiser step). On a memory-bound CPU step, e.g. the paper's 784-2000-2000-2000-10 MLP at
batch 1, a separate read of all 9.6M weights costs about a third of a BP step, while SGD's own update already
reads and writes every weight. :class:`FusedSGDMagnitudes` therefore performs that update itself, for the weight
matrices whose magnitudes CBP caches, in a compiled kernel (numba) that sums ``|w|`` as it writes ``w``:

- only where the update is ``w ← w − lr·g`` (``torch.optim.SGD`` without momentum, weight decay or
  ``maximize``; CPU; dense contiguous 2-D float tensors; ``step()`` without a closure); every other parameter
  and case goes through the optimiser unchanged;
- the update is the optimiser's own arithmetic (one fused multiply-add per entry, as ``Tensor.add_`` does), so the
  weights match ``torch.optim.SGD``'s to the last bit on CPUs where both use FMA (tested);
- the sums are complete recomputations, not increments, so nothing drifts; a weight changed after the step
  (its autograd version moved) is simply re-read by :class:`~lopbook.algos.magnitudes.LayerSums`.

The optimiser skips the fused weights by seeing no gradient during its ``step()``: a pre-hook hides their
``.grad`` and a post-hook puts it back, so user code sees the same gradients as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.autograd.graph import increment_version

try:  # an optional speed-up: without numba every weight is updated by the optimiser and read separately
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is not installed
    numba = None

AVAILABLE = numba is not None

if AVAILABLE:
    # contract: the update is one FMA per entry like torch's add_; reassoc: the sums vectorise. Column sums are
    # added four rows at a time, while those rows are still in the L1 cache. Serial and nogil: threads, when
    # wanted, come from a plain thread pool (numba's parallel layers keep idle workers spinning on a core).
    @numba.njit(nogil=True, fastmath={"contract", "reassoc", "nsz"}, cache=True, boundscheck=False)
    def _sgd_abs_sums(w, g, neg_lr, rows, c, lo, hi, want_cols):  # pragma: no cover (compiled)
        k = w.shape[1]
        for j in range(c.shape[0]):
            c[j] = 0
        for i0 in range(lo, hi, 4):  # 4 rows at a time: update them, then one pass into c
            i1 = min(hi, i0 + 4)
            for i in range(i0, i1):
                s = w.dtype.type(0)
                for j in range(k):
                    v = w[i, j] + neg_lr * g[i, j]
                    w[i, j] = v
                    s += abs(v)
                rows[i] = s
            if not want_cols:
                continue
            if i1 - i0 == 4:
                for j in range(k):
                    c[j] += (abs(w[i0, j]) + abs(w[i0 + 1, j])) + (abs(w[i0 + 2, j]) + abs(w[i0 + 3, j]))
            else:
                for i in range(i0, i1):
                    for j in range(k):
                        c[j] += abs(w[i, j])

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, workers, pool); idle workers sleep


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < workers:  # a forked child has no pool threads
        _POOL = (os.getpid(), workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lopbook-fused-sgd"))
    return _POOL[2]


def plain_sgd(group: dict[str, Any], optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer``'s update of this param group is exactly ``w ← w − lr·g``."""
    return (type(optimizer) is torch.optim.SGD and group.get("momentum", 0) == 0
            and group.get("weight_decay", 0) == 0 and not group.get("maximize", False)
            and not group.get("differentiable", False))


def fusable_weight(w: torch.Tensor) -> bool:
    """A weight the kernel can update in place: CPU, dense, contiguous, 2-D, float32 or float64."""
    return (w.device.type == "cpu" and w.layout == torch.strided and w.dim() == 2 and w.is_contiguous()
            and w.dtype in (torch.float32, torch.float64))


def sgd_step_abs_sums(w: torch.Tensor, g: torch.Tensor, lr: float, rows: torch.Tensor,
                      cols: torch.Tensor | None) -> None:
    """``w -= lr·g`` in place, then ``rows = Σ_j |w[:, j]|`` per row and ``cols`` per column, in one pass.

    ``w`` must pass :func:`fusable_weight` and ``g`` be a contiguous tensor of the same shape and dtype;
    ``cols=None`` skips the column sums (a layer whose inputs are not units, e.g. the first). Rows are split over
    up to ``torch.get_num_threads()`` threads (at least 64 rows each), each with its own column partial sums.
    """
    if not AVAILABLE:
        raise RuntimeError("sgd_step_abs_sums needs numba: pip install numba")
    blocks = max(1, min(torch.get_num_threads(), w.shape[0] // 64))  # >= 64 rows a block, or threads cost more
    wn, gn, rn = w.detach().numpy(), g.detach().numpy(), rows.numpy()
    neg_lr = wn.dtype.type(-lr)
    parts = np.empty((blocks, w.shape[1] if cols is not None else 0), dtype=wn.dtype)
    if blocks == 1:
        _sgd_abs_sums(wn, gn, neg_lr, rn, parts[0], 0, w.shape[0], cols is not None)
    else:  # blocks of rows, the first in this thread and the others in the pool (the kernel releases the GIL)
        per = -(-w.shape[0] // blocks)
        jobs = [_pool(blocks - 1).submit(_sgd_abs_sums, wn, gn, neg_lr, rn, parts[b], b * per,
                                         min(w.shape[0], (b + 1) * per), cols is not None) for b in range(1, blocks)]
        _sgd_abs_sums(wn, gn, neg_lr, rn, parts[0], 0, per, cols is not None)
        for job in jobs:
            job.result()
    if cols is not None:
        cols.copy_(torch.from_numpy(parts[0] if blocks == 1 else parts.sum(0)))
    increment_version(w)  # the write bypassed torch: keep autograd's in-place checks (and LayerSums) informed


def _groups(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def _fits(s: Any, group: dict[str, Any] | None, optimizer: torch.optim.Optimizer) -> bool:
    return (s.n_slices == 1 and fusable_weight(s.layer.weight) and group is not None
            and plain_sgd(group, optimizer))


def eligible(optimizer: torch.optim.Optimizer, sums: Iterable[Any]) -> list[Any]:
    """The :class:`~lopbook.algos.magnitudes.LayerSums` whose weight updates the kernel can take over: one slice
    (``refresh=1``), a weight that passes :func:`fusable_weight`, in a plain-SGD param group (:func:`plain_sgd`)."""
    groups = _groups(optimizer)
    return [s for s in sums if _fits(s, groups.get(id(s.layer.weight)), optimizer)]


class FusedSGDMagnitudes:
    """Take over plain SGD's update of the weights behind some :class:`~lopbook.algos.magnitudes.LayerSums`.

    Keeps the :func:`eligible` sums; if any, registers a step pre-hook and post-hook on ``optimizer``
    (:meth:`remove` unregisters them). Each step, for every such weight with a gradient, the pre-hook runs
    :func:`sgd_step_abs_sums` into the layer's cached sums and marks them current; the optimiser then updates
    everything else as usual.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, sums: Iterable[Any]):
        if not AVAILABLE:
            raise RuntimeError("FusedSGDMagnitudes needs numba: pip install numba")
        self.optimizer = optimizer
        self.sums = eligible(optimizer, sums)
        self._hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.updates = 0  # weight matrices updated by the kernel so far
        self._handles = [optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step)] if self.sums else []

    @property
    def layers(self) -> list[torch.nn.Module]:
        """The layers whose weight updates this object can take over."""
        return [s.layer for s in self.sums]

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        rest = args[1:] if args and args[0] is optimizer else args  # torch passes step()'s args with self first
        if (rest and rest[0] is not None) or kwargs.get("closure") is not None:
            return  # the closure recomputes gradients inside step(): leave everything to the optimiser
        groups = _groups(optimizer)
        for s in self.sums:
            w = s.layer.weight
            grad, group = w.grad, groups.get(id(w))
            if (not _fits(s, group, optimizer)  # checked again each step: the model or the param groups may change
                    or grad is None or grad.layout != torch.strided or not grad.is_contiguous()
                    or grad.dtype != w.dtype or grad.shape != w.shape):
                continue
            row, col = s.buffers()
            with torch.no_grad():
                sgd_step_abs_sums(w, grad, float(group["lr"]), row, col)
            s.version = w._version
            self.updates += 1
            self._hidden.append((w, grad))
            w.grad = None

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for w, grad in self._hidden:
            w.grad = grad
        self._hidden.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
