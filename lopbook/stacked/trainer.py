"""Online classification for many runs (seeds × methods) at once on a :class:`~lopbook.stacked.mlp.StackedMLP`.

Every run follows :class:`lopbook.engine.Engine`'s protocol for its seed: the network a seeded
:class:`lopbook.nets.MLP` gets (``torch.manual_seed(seed)``), task ``t`` from ``streams[seed](t)``, one pass over
the task's examples in the order ``torch.randperm`` draws from a generator seeded with ``seed`` (the engine's),
online accuracy and loss measured on each batch *before* the update, and the probe metrics
(:func:`~lopbook.stacked.probe.probe_metrics`) on the task's first ``probe_size`` examples before training on it.
So a BP run here equals an engine BP run up to float rounding (``tests/test_stacked.py``).

Methods per run (:class:`RunSpec`), all with plain SGD at the run's own step size:

- ``bp``: backprop;
- ``l2``: coupled weight decay on every weight and bias, ``θ ← θ − lr (g + λθ)`` (``torch.optim.SGD`` semantics);
- ``snp``: the same decay, then ``N(0, σ²)`` noise on every weight and bias after each step (Shrink & Perturb as
  :class:`lopbook.algos.ShrinkAndPerturb`), from the run's own generator;
- ``cbp``: backprop plus :class:`~lopbook.stacked.cbp.StackedCBP` after each step.

The runs are kept sorted by method, so each method's runs form one contiguous slice of the stack and the
regularisers touch only their slice.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lopbook.engine import Task

from .cbp import INITS, UTILITIES, StackedCBP
from .mlp import StackedMLP
from .probe import PROBE_KEYS, probe_metrics

__all__ = ["METHODS", "RunSpec", "StackedTrainer"]

METHODS = ("bp", "l2", "snp", "cbp")
_TAG_NOISE, _TAG_CBP = 31, 32


@dataclass(frozen=True)
class RunSpec:
    """One run of the stack: a method label, a seed and the method's hyperparameters.

    Args:
        label: the method's name in results (e.g. ``"cbp"``); runs with the same label and seed are an error.
        seed: initial weights, task stream and example order (shared by every label of this seed).
        method: ``"bp"``, ``"l2"``, ``"snp"`` or ``"cbp"``.
        lr: SGD step size.
        weight_decay: coupled L2 λ (``l2``, ``snp``).
        noise_std: S&P σ (``snp``).
        replacement_rate, maturity_threshold, decay_rate, utility, init: CBP's ρ, m, η, utility and the
            distribution of new incoming weights (``cbp``).
    """

    label: str
    seed: int
    method: str = "bp"
    lr: float = 0.01
    weight_decay: float = 0.0
    noise_std: float = 0.0
    replacement_rate: float = 0.0
    maturity_threshold: int = 100
    decay_rate: float = 0.99
    utility: str = "adaptable_contribution"
    init: str = "kaiming_uniform"

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"run {self.label!r}: the stacked trainer supports methods {METHODS}, not "
                             f"{self.method!r}; use trainer='engine' for others")
        if not self.lr > 0:
            raise ValueError(f"run {self.label!r}: lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.noise_std < 0:
            raise ValueError(f"run {self.label!r}: weight_decay and noise_std must be >= 0")
        if self.method == "bp" and (self.weight_decay or self.noise_std):
            raise ValueError(f"run {self.label!r}: bp takes no weight_decay/noise_std; use method 'l2' or 'snp'")
        if self.method == "l2" and not self.weight_decay > 0:
            raise ValueError(f"run {self.label!r}: l2 needs weight_decay > 0")
        if self.method == "cbp":
            if self.utility not in UTILITIES or self.init not in INITS:
                raise ValueError(f"run {self.label!r}: utility must be one of {UTILITIES} and init one of {INITS}")
            if not 0 <= self.replacement_rate < 1 or not 0 <= self.decay_rate < 1 or self.maturity_threshold < 0:
                raise ValueError(f"run {self.label!r}: need 0 <= replacement_rate < 1, 0 <= decay_rate < 1, "
                                 f"maturity_threshold >= 0")


def _stream_seed(seed: int, label: str, tag: int) -> int:
    """A per-run random stream that does not depend on which other runs share the stack."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(label.encode()), tag]).generate_state(1)[0])


def _span(mask: np.ndarray) -> slice | None:
    """The smallest slice covering the True entries (runs are sorted by method, so it is that method block)."""
    idx = np.nonzero(mask)[0]
    return None if idx.size == 0 else slice(int(idx[0]), int(idx[-1]) + 1)


class StackedTrainer:
    """Trains every :class:`RunSpec` on its seed's task stream, all runs in one set of stacked tensors.

    Args:
        runs: the runs (any order; they are kept sorted by method internally, results come back in this order).
        streams: ``seed -> stream`` with ``stream(t) -> Task`` (uint8 images plus a ``transform``), e.g.
            :class:`lopbook.problems.permuted_mnist.PermutedStream`.
        in_dim, hidden, n_classes: the ReLU MLP ``in_dim -> hidden... -> n_classes``.
        batch_size: examples per update; a task is one pass over its examples.
        probe_size: the first ``probe_size`` examples of each new task form the probe batch.
        bins_per_task: online accuracy is also kept as this many equal bins per task.
        device: where everything lives.
        reg_every: apply L2's decay and S&P's noise every this many steps, aggregated: ``θ ← (1 − lr·λ)^k θ`` and
            noise ``N(0, k σ²)`` (the same decay and noise variance per ``k`` steps). 1 (default) is the exact
            per-step method; both are tiny per step (``lr·λ = 10⁻⁶``, ``σ = 10⁻⁵`` in the paper), and drawing
            noise for every weight at every step costs more than the step itself on a CPU.
        cbp_mag_refresh: :class:`~lopbook.stacked.cbp.StackedCBP`'s ``mag_refresh``.
    """

    def __init__(self, runs: Sequence[RunSpec], streams: Mapping[int, Callable[[int], Task]], in_dim: int,
                 hidden: Sequence[int], n_classes: int, *, batch_size: int = 1, probe_size: int = 2000,
                 bins_per_task: int = 1, device: str | torch.device = "cpu", reg_every: int = 1,
                 cbp_mag_refresh: int = 1) -> None:
        from lopbook.nets import MLP

        if not runs:
            raise ValueError("no runs given")
        keys = [(r.label, r.seed) for r in runs]
        if len(set(keys)) != len(keys):
            raise ValueError("two runs share a (label, seed); give each method a distinct label")
        for r in runs:
            r.validate()
        missing = sorted({r.seed for r in runs} - set(streams))
        if missing:
            raise ValueError(f"no task stream for seeds {missing}")
        if min(batch_size, probe_size, bins_per_task, reg_every, cbp_mag_refresh) < 1:
            raise ValueError("batch_size, probe_size, bins_per_task, reg_every and cbp_mag_refresh must be >= 1")
        self.reg_every = int(reg_every)
        rank = {m: i for i, m in enumerate(METHODS)}
        self.order = sorted(range(len(runs)), key=lambda i: (rank[runs[i].method], runs[i].utility, runs[i].init, i))
        self.runs = [runs[i] for i in self.order]  # sorted by method
        self.device = torch.device(device)
        self.batch_size, self.probe_size, self.bins_per_task = int(batch_size), int(probe_size), int(bins_per_task)
        self.seeds = sorted({r.seed for r in self.runs})
        self.streams = {s: streams[s] for s in self.seeds}
        self.seed_pos = torch.tensor([self.seeds.index(r.seed) for r in self.runs], device=self.device)

        models = {}
        for s in self.seeds:  # the engine's initial weights: a seeded MLP
            torch.manual_seed(s)
            models[s] = MLP(in_dim, list(hidden), n_classes, activation="relu")
        self.net = StackedMLP.from_modules([models[r.seed] for r in self.runs]).to(self.device)
        n = len(self.runs)
        col = torch.tensor
        self.lr_scale = col([r.lr / self.batch_size for r in self.runs], device=self.device).view(n, 1, 1)
        wd = np.array([r.weight_decay for r in self.runs])
        self.decay_span = _span(wd > 0)
        self.decay = None
        if self.decay_span is not None:
            lr = np.array([r.lr for r in self.runs])
            factor = (1.0 - lr * wd) ** self.reg_every
            self.decay = col(factor, dtype=torch.float32, device=self.device)[self.decay_span].view(-1, 1, 1)
        noise = np.array([r.noise_std for r in self.runs])
        self.noise_runs = [int(i) for i in np.nonzero(noise > 0)[0]]
        self.noise_gens = []
        for i in self.noise_runs:
            g = torch.Generator(device=self.device)
            g.manual_seed(_stream_seed(self.runs[i].seed, self.runs[i].label, _TAG_NOISE))
            self.noise_gens.append(g)
        self.cbps: list[StackedCBP] = []
        for key in sorted({(r.utility, r.init) for r in self.runs if r.method == "cbp"}):
            sl = _span(np.array([r.method == "cbp" and (r.utility, r.init) == key for r in self.runs]))
            block = self.runs[sl]
            self.cbps.append(StackedCBP(
                self.net, sl, replacement_rate=[r.replacement_rate for r in block],
                maturity_threshold=[r.maturity_threshold for r in block], decay_rate=[r.decay_rate for r in block],
                utility=key[0], init=key[1], seeds=[_stream_seed(r.seed, r.label, _TAG_CBP) for r in block],
                mag_refresh=cbp_mag_refresh))
        self.order_gens = {}
        for s in self.seeds:  # the engine's minibatch order: Engine(seed=s).generator
            g = torch.Generator(device=self.device)
            g.manual_seed(int(s))
            self.order_gens[s] = g
        self.logs: list[dict[str, np.ndarray]] = []
        self.steps_done = 0

    # ---------------------------------------------------------------------------------------------- data
    def _task_data(self, t: int) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs ``(S, N, D)`` and labels ``(S, N)`` in this task's training order per seed, and the probe
        inputs ``(S, P, D)``."""
        xs, ys, probes = [], [], []
        for s in self.seeds:
            task = self.streams[s](t)
            x, y = task.x_train.to(self.device), task.y_train.to(self.device)
            perm = torch.randperm(len(x), generator=self.order_gens[s], device=self.device)
            xs.append(task.apply(x[perm]))
            ys.append(y[perm])
            probes.append(task.apply(x[: self.probe_size]))
        return torch.stack(xs), torch.stack(ys), torch.stack(probes)

    # --------------------------------------------------------------------------------------------- train
    @torch.no_grad()
    def train_task(self, t: int) -> dict[str, np.ndarray]:
        """Probe, then one pass over task ``t`` for every run; returns the task's per-run log (arrays ``(R,)``)."""
        x_all, y_all, x_probe = self._task_data(t)
        log: dict[str, np.ndarray] = {}
        pos = self.seed_pos
        for k, v in probe_metrics(self.net, x_probe.index_select(0, pos)).items():
            log[f"probe/{k}"] = v
        del x_probe
        n_ex, bsz = x_all.shape[1], self.batch_size
        starts = list(range(0, n_ex, bsz))
        n_runs = self.net.runs
        acc_buf = torch.zeros(n_runs, len(starts), device=self.device)
        loss_buf = torch.zeros(n_runs, len(starts), device=self.device)
        replaced0 = [c.n_replaced.sum(1).copy() for c in self.cbps]
        net, lr_scale, decay, span, every = self.net, self.lr_scale, self.decay, self.decay_span, self.reg_every
        params = net.parameters()
        noise_std = [self.runs[r].noise_std * every ** 0.5 for r in self.noise_runs]
        for i, a in enumerate(starts):
            yb = y_all[:, a:a + bsz].index_select(0, pos).unsqueeze(2)
            xb = x_all[:, a:a + bsz].index_select(0, pos)
            logits, hidden = net.forward(xb)
            logp = torch.log_softmax(logits, 2)
            picked = logp.gather(2, yb)
            loss_buf[:, i] = picked.sum((1, 2)).neg_()
            acc_buf[:, i] = (logits.argmax(2, keepdim=True) == yb).sum((1, 2))
            g = logp.exp_().scatter_add_(2, yb, torch.full_like(picked, -1.0)).mul_(lr_scale)
            net.sgd_step(xb, hidden, g, decay=None if span is None or every > 1 else (span, decay))
            if every == 1 or (self.steps_done + i + 1) % every == 0:
                if span is not None and every > 1:
                    for p in params:
                        p[span].mul_(decay)
                for r, gen, std in zip(self.noise_runs, self.noise_gens, noise_std, strict=True):
                    for p in params:
                        p[r].add_(torch.randn(p.shape[1:], generator=gen, device=self.device), alpha=std)
            for cbp in self.cbps:
                cbp.step(hidden)
        self.steps_done += len(starts)
        sizes = np.array([min(bsz, n_ex - a) for a in starts], dtype=np.float64)
        acc_h, loss_h = acc_buf.cpu().numpy().astype(np.float64), loss_buf.cpu().numpy().astype(np.float64)
        log["online_acc"] = acc_h.sum(1) / n_ex
        log["online_loss"] = loss_h.sum(1) / n_ex
        edges = np.linspace(0, len(starts), self.bins_per_task + 1).round().astype(int)
        log["online_acc_bins"] = np.stack([acc_h[:, e0:e1].sum(1) / max(sizes[e0:e1].sum(), 1.0)
                                           for e0, e1 in zip(edges[:-1], edges[1:], strict=True)], 1)
        replaced = np.zeros(n_runs)
        for c, before in zip(self.cbps, replaced0, strict=True):
            replaced[c.runs] = c.n_replaced.sum(1) - before
        log["replaced_frac"] = replaced / sum(net.widths)  # hidden units replaced in this task / all hidden units
        unsorted = {k: np.empty_like(v) for k, v in log.items()}
        for k, v in log.items():
            unsorted[k][self.order] = v  # back to the caller's run order
        self.logs.append(unsorted)
        return unsorted

    def train(self, num_tasks: int, on_task_done: Callable[[StackedTrainer], None] | None = None) -> None:
        """Train tasks ``len(self.logs) … num_tasks - 1`` (continues after a :meth:`load_state_dict`)."""
        for t in range(len(self.logs), num_tasks):
            self.train_task(t)
            if on_task_done is not None:
                on_task_done(self)

    def results(self) -> dict[str, np.ndarray]:
        """Every logged key stacked as ``(runs, tasks[, bins])`` in the caller's run order."""
        if not self.logs:
            return {}
        return {k: np.stack([lg[k] for lg in self.logs], 1) for k in self.logs[0]}

    # ----------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-exact resume needs (CPU tensors and numpy arrays)."""
        return {"runs": [asdict(r) for r in self.runs], "net": self.net.state_dict(),
                "cbp": [c.state_dict() for c in self.cbps], "noise": [g.get_state() for g in self.noise_gens],
                "order": {s: g.get_state() for s, g in self.order_gens.items()}, "logs": list(self.logs),
                "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["runs"] != [asdict(r) for r in self.runs]:
            raise ValueError("checkpoint was written for other runs (methods, seeds or hyperparameters)")
        self.net.load_state_dict(state["net"])
        for c, s in zip(self.cbps, state["cbp"], strict=True):
            c.load_state_dict(s)
        for g, s in zip(self.noise_gens, state["noise"], strict=True):
            g.set_state(s)
        for s, g in self.order_gens.items():
            g.set_state(state["order"][s])
        self.logs = list(state["logs"])
        self.steps_done = int(state["steps_done"])


PROBE_LOG_KEYS = tuple(f"probe/{k}" for k in PROBE_KEYS)
