"""Per-entry Adam step counts for re-initialised units, on top of an unmodified ``torch.optim.Adam``/``AdamW``.

torch's Adam keeps one step count ``t`` per parameter tensor and divides the moments by ``1 − β1^t`` and
``1 − β2^t``. When continual backprop or ReDo re-initialise a unit they zero that unit's entries of ``exp_avg`` and
``exp_avg_sq``, but ``t`` stays large, so the new entries' first updates are corrected as if they were old:
``m/(1 − β1^t)`` is ``1 − β1^k`` of a fresh entry's after ``k`` steps and ``√(v/(1 − β2^t))`` is
``√(1 − β2^k)`` of it. With β = (0.9, 0.999) a constant gradient moves such an entry 3.2× the learning rate on its
first step (a fresh Adam entry: 1×), with β1 = β2 = 0.99 only 0.1×.

:class:`EntryAges` fixes this without replacing the optimiser. It records the step ``t0`` at which an entry
was reset (rows and columns of a weight, entries of a bias or norm parameter), and after every
``optimizer.step()`` (a step post-hook) it re-does that step's update for the entries reset less than a horizon
ago with their own age ``k = t − t0``: ``p += lr·[m/(1−β1^t)] / (√v/√(1−β2^t) + ε) − lr·[m/(1−β1^k)] /
(√v/√(1−β2^k) + ε)``, i.e. exactly what Adam with a per-element step (the authors' ``AdamGnT`` idea) would
do. Weight decay, coupled (Adam) or decoupled (AdamW), acts the same on every entry and needs nothing; with
``amsgrad`` the maximum of ``v`` is used. Entries older than the horizon (where ``β^k`` < 1e-4 for both betas)
are left to Adam alone, so the bookkeeping ends on its own.

``reinit_units`` calls :func:`entry_ages` for any optimiser it is given; it returns ``None`` for optimisers
other than Adam/AdamW (SGD has no bias correction).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

_TOL = 1e-4  # entries with β1^k and β2^k below this are treated as old
_NEVER = np.iinfo(np.int64).min // 2

_ATTR = "_lopbook_entry_ages"  # lives on the optimiser object, so it goes when the optimiser goes


def entry_ages(optimizer: torch.optim.Optimizer | None) -> EntryAges | None:
    """The :class:`EntryAges` of ``optimizer`` (created and hooked on first use), or ``None`` if it is not a
    ``torch.optim.Adam`` (``AdamW`` is one)."""
    if optimizer is None or not isinstance(optimizer, torch.optim.Adam):
        return None
    ages = getattr(optimizer, _ATTR, None)
    if ages is None:
        ages = EntryAges(optimizer)
        setattr(optimizer, _ATTR, ages)
    return ages


def ages_state(optimizer: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """``state_dict()`` of ``optimizer``'s :class:`EntryAges`, or ``None`` if it has none (for checkpoints)."""
    ages = getattr(optimizer, _ATTR, None)
    return None if ages is None else ages.state_dict()


def load_ages_state(optimizer: torch.optim.Optimizer | None, state: dict[str, Any] | None) -> None:
    """Restore :func:`ages_state` output into ``optimizer`` (nothing to do for ``None``)."""
    if state is None:
        return
    ages = entry_ages(optimizer)
    if ages is None:
        raise ValueError("the checkpoint has per-entry Adam steps but the optimizer is not torch.optim.Adam/AdamW")
    ages.load_state_dict(state)


class _Track:
    """Reset steps of one parameter: per row (dim 0) and, for weights, per input column (dim 1)."""

    def __init__(self, p: torch.Tensor):
        self.p = p
        self.rows = np.full(p.shape[0], _NEVER, dtype=np.int64)
        self.cols = np.full(p.shape[1], _NEVER, dtype=np.int64) if p.dim() > 1 else None
        self.last_t = -1


def _step_of(state: dict) -> int:
    s = state.get("step", 0)
    return int(s.item() if torch.is_tensor(s) else s)


class EntryAges:
    """Per-entry Adam steps for reset entries of ``optimizer``'s parameters (see the module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        if not isinstance(optimizer, torch.optim.Adam):
            raise TypeError(f"EntryAges needs torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self._tracks: dict[int, _Track] = {}
        self._handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step())

    # ------------------------------------------------------------------------------------------ marking
    def mark(self, p: torch.Tensor, index: torch.Tensor, dim: int) -> None:
        """Entries ``index`` of ``p`` along ``dim`` (0: rows/entries, 1: input columns) were just reset."""
        state = self.optimizer.state.get(p)
        if not state or dim > 1 or (dim == 1 and p.dim() < 2):
            return  # no Adam step yet: a fresh optimiser's own step count is already right
        tr = self._tracks.get(id(p))
        if tr is None:
            tr = self._tracks[id(p)] = _Track(p)
            tr.last_t = _step_of(state)
        births = tr.rows if dim == 0 else tr.cols
        births[index.detach().cpu().numpy()] = _step_of(state)

    # ------------------------------------------------------------------------------------------ update
    @torch.no_grad()
    def after_step(self) -> None:
        """Re-do the last update of young entries with their own step count (the step post-hook)."""
        if not self._tracks:
            return
        done, jobs = [], []
        for group in self.optimizer.param_groups:
            b1, b2 = group["betas"]
            b1, b2 = float(b1), float(b2)
            horizon = max((math.ceil(math.log(_TOL) / math.log(b)) for b in (b1, b2) if 0 < b < 1), default=1)
            for p in group["params"]:
                tr = self._tracks.get(id(p))
                if tr is None or tr.p is not p:
                    continue
                state = self.optimizer.state.get(p, {})
                t = _step_of(state)
                if t == tr.last_t:  # this parameter was not stepped (no gradient)
                    continue
                tr.last_t = t
                young_rows = np.nonzero(t - tr.rows < horizon)[0]
                young_cols = np.zeros(0, dtype=np.int64) if tr.cols is None else np.nonzero(t - tr.cols < horizon)[0]
                if young_rows.size == 0 and young_cols.size == 0:
                    done.append(id(p))
                    continue
                v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
                hp = (float(group["lr"]), b1, b2, float(group["eps"]), t)
                if young_rows.size:
                    jobs.append(self._job(p, state["exp_avg"], v, hp, 0, young_rows, tr, None))
                if young_cols.size:
                    mask = np.zeros(p.shape[0], dtype=bool)
                    mask[young_rows] = True  # those rows were redone above, column ages included
                    jobs.append(self._job(p, state["exp_avg"], v, hp, 1, young_cols, tr, mask))
        for k in done:
            del self._tracks[k]
        if jobs:
            self._redo(jobs)

    @staticmethod
    def _job(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hp: tuple, dim: int, index: np.ndarray,
             tr: _Track, young_rows_mask: np.ndarray | None) -> tuple:
        """Host-side part of a redo: the entries' ages and their bias-correction factors."""
        lr, b1, b2, eps, t = hp
        if dim == 0:  # a block of rows; an entry's age is the younger of its row's and its column's
            age = (t - tr.rows[index]).astype(np.float64)[:, None]
            if tr.cols is not None:
                col_age = (t - tr.cols).astype(np.float64)
                if (col_age < age.max()).any():
                    age = np.minimum(age, col_age[None, :])
        else:  # a block of columns, minus the rows already redone
            age = (t - tr.cols[index]).astype(np.float64)[None, :]
            if young_rows_mask is not None and young_rows_mask.any():
                age = np.where(young_rows_mask[:, None], float(t), age)
        age = np.clip(age, 1, t)
        shape = [*age.shape] + [1] * (p.dim() - age.ndim) if p.dim() > 1 else [age.shape[0]]
        dev, dt = p.device, p.dtype
        step_k = torch.from_numpy((lr / (1 - b1 ** age)).astype(np.float32)).to(dev, dt).view(shape)
        scale_k = torch.from_numpy((1 / np.sqrt(1 - b2 ** age)).astype(np.float32)).to(dev, dt).view(shape)
        return (p, m, v, dim, torch.from_numpy(index).to(dev), step_k, scale_k,
                lr / (1 - b1 ** t), 1 / math.sqrt(1 - b2 ** t), eps)

    @staticmethod
    def _redo(jobs: list[tuple]) -> None:
        """Add ``lr·m̂_t/(√v̂_t+ε) − lr·m̂_k/(√v̂_k+ε)`` to every job's entries: what Adam just did with the
        shared step ``t`` minus what a per-entry step ``k`` does (batched over tensors with ``_foreach`` ops)."""
        p, m, v, dim, idx, step_k, scale_k, step_t, scale_t, eps = (list(x) for x in zip(*jobs, strict=True))
        mi = [mm.index_select(d, i) for mm, d, i in zip(m, dim, idx, strict=True)]
        root = [vv.index_select(d, i) for vv, d, i in zip(v, dim, idx, strict=True)]
        torch._foreach_sqrt_(root)
        fix = torch._foreach_mul(root, scale_t)
        torch._foreach_add_(fix, eps)
        torch._foreach_reciprocal_(fix)
        torch._foreach_mul_(fix, step_t)
        torch._foreach_mul_(root, scale_k)
        torch._foreach_add_(root, eps)
        torch._foreach_reciprocal_(root)
        torch._foreach_mul_(root, step_k)
        torch._foreach_sub_(fix, root)
        torch._foreach_mul_(fix, mi)
        for pp, d, i, f in zip(p, dim, idx, fix, strict=True):
            pp.index_add_(d, i, f)

    # ------------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Reset steps, keyed by each parameter's position in ``optimizer.param_groups`` (flattened)."""
        pos = {id(p): i for i, p in enumerate(q for g in self.optimizer.param_groups for q in g["params"])}
        return {"tracks": {pos[k]: {"rows": torch.from_numpy(tr.rows.copy()),  # tensors: torch.load-safe
                                    "cols": None if tr.cols is None else torch.from_numpy(tr.cols.copy()),
                                    "last_t": tr.last_t}
                           for k, tr in self._tracks.items() if k in pos}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = [q for g in self.optimizer.param_groups for q in g["params"]]
        self._tracks = {}
        for i, d in state["tracks"].items():
            p = params[int(i)]
            tr = _Track(p)
            tr.rows[:] = np.asarray(d["rows"])
            if d["cols"] is not None:
                tr.cols[:] = np.asarray(d["cols"])
            tr.last_t = int(d["last_t"])
            self._tracks[id(p)] = tr

    def remove(self) -> None:
        """Detach the post-hook (the optimiser goes back to plain Adam for every entry)."""
        self._handle.remove()
        self._tracks = {}
        if getattr(self.optimizer, _ATTR, None) is self:
            delattr(self.optimizer, _ATTR)
