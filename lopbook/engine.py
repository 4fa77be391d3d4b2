"""A GPU-first engine for supervised continual learning (permuted MNIST, continual ImageNet, incremental CIFAR).

Design (why it is fast without being clever):

- Every dataset lives as a tensor on the training device (uint8 is fine); minibatches are drawn by an
  on-device index permutation from the engine's own seeded generator. No ``DataLoader``, no per-sample Python.
- A :class:`Task` is training tensors (+ optional test tensors) plus an optional ``transform`` applied on the
  device to every raw batch (uint8 -> float, a pixel permutation, normalisation). An optional ``augment``
  callback then changes training batches only (``augment(x, generator) -> x``).
- Per-step online accuracy and loss (measured on the batch *before* the update, as in the paper) are written
  into preallocated device buffers and copied to the host once per task, so the loop never waits on the GPU
  for logging.
- Plasticity methods follow the project protocol: objects with ``step()``, called right after
  ``optimizer.step()`` (see :func:`lopbook.algos.build_method`).
- Task-boundary hooks (head reset, LR schedules) and a per-task probe (dead units, effective rank, weight
  magnitude on a probe batch of the new task, *before* training on it, as upstream) are callbacks.
- :meth:`Engine.state_dict` holds everything a resumed run needs (model, optimizer, method states, all RNG
  states, the logs so far), so :func:`run_tasks` can checkpoint per task and resume bit-for-bit.

Mixed precision (``amp="bf16"`` or ``"fp16"``, CUDA only, off by default): only the forward pass and the loss
run under ``torch.autocast``; parameters, optimizer state, method statistics and every logged number stay
float32 (fp16 also uses a ``GradScaler``, whose state is checkpointed).

Several seeds in one process are run one after another here. ``torch.func.vmap`` over stacked modules cannot
express CBP or ReDo, which replace a data-dependent *number* of units per network per step; for MLPs,
:mod:`lopbook.stacked` trains many runs (seeds x methods) at once with hand-written stacked tensors and per-run
CBP instead (``benchmarks/bench_stacked.py``). See ``benchmarks/bench_engine.py`` for the engine's speed against a
DataLoader loop.

Minimal use::

    engine = Engine(model, optimizer, methods=build_method(spec, model, optimizer),
                    config=EngineConfig(batch_size=16, epochs=1), device="cuda", seed=0)
    logs = run_tasks(engine, stream, num_tasks=100)          # stream(t) -> Task
    logs["online_acc"]                                          # (num_tasks,) numpy array
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Task", "TaskStream", "EngineConfig", "Engine", "TaskHooks", "run_tasks", "default_probe",
           "rng_state", "set_rng_state", "stack_logs"]

Transform = Callable[[Tensor], Tensor]
Augment = Callable[[Tensor, torch.Generator], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Task:
    """One task of a continual-learning stream.

    Attributes:
        x_train, y_train: training inputs (any dtype, e.g. uint8 images) and integer labels, ideally already on
            the engine's device (they are moved there otherwise, once per task).
        x_test, y_test: optional held-out data, evaluated after training on the task (and after every epoch
            when ``EngineConfig.eval_every_epoch``).
        transform: applied on the device to every raw batch (train, test and probe), e.g. a pixel
            permutation plus ``/255``. Must be deterministic; randomness belongs in ``augment``.
        name: label for logs.
        info: free-form per-task facts (e.g. the classes in an ImageNet pair) that hooks can read.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor | None = None
    y_test: Tensor | None = None
    transform: Transform | None = None
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train):
            raise ValueError(f"task {self.name!r}: x_train has {len(self.x_train)} rows but y_train has "
                             f"{len(self.y_train)}")
        if len(self.x_train) == 0:
            raise ValueError(f"task {self.name!r} has no training examples")
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError(f"task {self.name!r}: give both x_test and y_test, or neither")
        if self.x_test is not None and len(self.x_test) != len(self.y_test):  # type: ignore[arg-type]
            raise ValueError(f"task {self.name!r}: x_test and y_test differ in length")

    def apply(self, x: Tensor) -> Tensor:
        """``transform(x)`` (or ``x`` as float when there is no transform)."""
        return self.transform(x) if self.transform is not None else x.float()


class TaskStream(Protocol):
    """Anything callable as ``stream(t) -> Task``; must return the same task for the same ``t`` (for resume)."""

    def __call__(self, t: int) -> Task: ...


@dataclass
class EngineConfig:
    """How the engine trains on each task.

    Attributes:
        batch_size: examples per update (the paper's permuted MNIST uses 1).
        epochs: passes over each task's training set (examples are reshuffled on the device every pass).
        examples_per_task: if set, train on exactly this many examples per task instead (cycling through
            reshuffled passes), e.g. the shift-rate study; ``epochs`` is then ignored.
        drop_last: skip a final partial batch in each pass.
        bins_per_task: the online accuracy/loss curve is kept as this many equal bins per task.
        eval_every_epoch: evaluate on the task's test set after every epoch (else only after the task).
        eval_batch_size: batch size for test evaluation and probes (no gradient).
        probe_size: the first ``probe_size`` training examples of each new task form the probe batch.
        amp: ``None`` (default), ``"bf16"`` or ``"fp16"``; CUDA only.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
    """

    batch_size: int = 1
    epochs: int = 1
    examples_per_task: int | None = None
    drop_last: bool = False
    bins_per_task: int = 1
    eval_every_epoch: bool = False
    eval_batch_size: int = 1024
    probe_size: int = 2000
    amp: str | None = None
    grad_clip: float | None = None

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.examples_per_task is not None and self.examples_per_task < 1:
            raise ValueError(f"examples_per_task must be >= 1 or None, got {self.examples_per_task}")
        if self.bins_per_task < 1:
            raise ValueError(f"bins_per_task must be >= 1, got {self.bins_per_task}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")


class TaskHooks:
    """Callbacks around each task; subclass and override what you need (all default to doing nothing).

    ``on_task_start`` runs after the probe and before training (e.g. reset the output layer);
    ``on_epoch_end`` runs after every pass (e.g. step an LR schedule); ``on_task_end`` may add numbers to the
    task's log dict (they are stacked into arrays by :func:`run_tasks`).
    """

    def on_task_start(self, engine: Engine, t: int, task: Task) -> None:
        """Called before training on task ``t``."""

    def on_epoch_end(self, engine: Engine, t: int, task: Task, epoch: int) -> None:
        """Called after every epoch of task ``t``."""

    def on_task_end(self, engine: Engine, t: int, task: Task, log: dict[str, Any]) -> None:
        """Called after task ``t``; ``log`` is the task's log dict and may be extended."""


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state a run depends on: Python, numpy's global, torch CPU (+ all CUDA), and ``generator``."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _method_state(method: Any) -> dict[str, Any]:
    """A plasticity method's state: its ``state_dict()`` if it has one, else its tensor/number attributes."""
    if hasattr(method, "state_dict") and callable(method.state_dict):
        return {"kind": "state_dict", "state": method.state_dict()}
    attrs: dict[str, Any] = {}
    for k, v in vars(method).items():
        if isinstance(v, Tensor) and not isinstance(v, nn.Parameter):
            attrs[k] = v.detach().clone()
        elif isinstance(v, (int, float, bool, np.generic)) or v is None:
            attrs[k] = v
        elif isinstance(v, (list, tuple)) and v and all(isinstance(e, Tensor) and not isinstance(e, nn.Parameter)
                                                       for e in v):
            attrs[k] = [e.detach().clone() for e in v]
    return {"kind": "attrs", "state": attrs}


def _load_method_state(method: Any, blob: dict[str, Any]) -> None:
    if blob["kind"] == "state_dict":
        method.load_state_dict(blob["state"])
        return
    for k, v in blob["state"].items():
        cur = getattr(method, k, None)
        if isinstance(cur, Tensor) and isinstance(v, Tensor):
            with torch.no_grad():
                cur.copy_(v.to(cur.device)) if cur.shape == v.shape else setattr(method, k, v.to(cur.device))
        elif isinstance(cur, list) and isinstance(v, list) and all(isinstance(e, Tensor) for e in cur):
            for c, e in zip(cur, v, strict=True):
                with torch.no_grad():
                    c.copy_(e.to(c.device))
        else:
            setattr(method, k, v)


class Engine:
    """Trains one model on a sequence of tasks (see the module docstring).

    Args:
        model: any ``nn.Module`` mapping a batch to logits (or to predictions for a custom ``loss_fn``).
        optimizer: a torch optimizer over ``model``'s parameters.
        methods: plasticity-method objects with ``step()`` (called after every ``optimizer.step()``), e.g.
            from :func:`lopbook.algos.build_method`.
        config: :class:`EngineConfig`.
        device: where data and model live (the model is moved there).
        seed: seeds the engine's generator (minibatch order, augmentation).
        loss_fn: ``loss_fn(output, y)``; cross-entropy by default. Accuracy is logged when the output is
            2-D (argmax), else only the loss.
        augment: ``augment(x, generator) -> x`` on a transformed training batch (on the device).
        probe: ``probe(model, x_probe) -> dict[str, float]`` measured on each new task before training on it;
            :func:`default_probe` gives dead units, effective/stable rank and weight magnitude.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, methods: Sequence[Any] = (),
                 config: EngineConfig | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 loss_fn: LossFn = F.cross_entropy, augment: Augment | None = None,
                 probe: Callable[[nn.Module, Tensor], dict[str, float]] | None = None) -> None:
        self.config = config or EngineConfig()
        self.config.validate()
        self.device = torch.device(device)
        if self.config.amp is not None and self.device.type != "cuda":
            raise ValueError(f"amp={self.config.amp!r} needs a CUDA device (got {self.device}); "
                             f"set amp=None to train in float32 on the CPU")
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.methods = list(methods)
        for m in self.methods:
            if not callable(getattr(m, "step", None)):
                raise TypeError(f"plasticity method {m!r} has no step() method; see lopbook.algos")
        self.loss_fn = loss_fn
        self.augment = augment
        self.probe = probe
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[self.config.amp]
        self.scaler = torch.amp.GradScaler("cuda") if self.config.amp == "fp16" else None
        self.steps_done = 0  # optimizer steps over the whole run

    # ----------------------------------------------------------------------------------------- helpers
    def _to_device(self, x: Tensor | None) -> Tensor | None:
        return None if x is None else x.to(self.device, non_blocking=True)

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()  # entering a disabled autocast costs microseconds per step
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _passes(self, n: int) -> list[tuple[int, list[int]]]:
        """One task's schedule: per pass over ``n`` examples, how many it takes and its batch sizes (host only).

        The permutation of each pass is drawn on the device when the pass starts, so memory does not grow with
        the number of epochs.
        """
        cfg = self.config
        total = cfg.examples_per_task if cfg.examples_per_task is not None else cfg.epochs * n
        passes: list[tuple[int, list[int]]] = []
        done = 0
        while done < total:
            take = min(n, total - done)
            stop = take - take % cfg.batch_size if cfg.drop_last else take
            passes.append((take, [min(cfg.batch_size, stop - i) for i in range(0, stop, cfg.batch_size)]))
            done += take
        return passes

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, transform: Transform | None = None) -> tuple[float, float]:
        """Accuracy and mean loss of the model on ``(x, y)`` (model switched to eval mode meanwhile)."""
        was_training = self.model.training
        self.model.eval()
        x, y = self._to_device(x), self._to_device(y)
        correct = torch.zeros((), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        bs = self.config.eval_batch_size
        for i in range(0, len(x), bs):
            xb = x[i:i + bs]
            xb = transform(xb) if transform is not None else xb.float()
            with self._autocast():
                out = self.model(xb)
            out = out.float()
            loss_sum += self.loss_fn(out, y[i:i + bs]) * len(xb)
            if out.ndim == 2:
                correct += (out.argmax(1) == y[i:i + bs]).sum()
        self.model.train(was_training)
        n = max(len(x), 1)
        return float(correct) / n, float(loss_sum) / n

    # ------------------------------------------------------------------------------------------- train
    def train_task(self, task: Task, t: int = 0, hooks: TaskHooks | None = None) -> dict[str, Any]:
        """Probe, then train on ``task``; returns the task's log (host numbers and small numpy arrays).

        Log keys: ``online_acc``, ``online_loss`` (means over the task's training examples, measured before
        each update), ``online_acc_bins``/``online_loss_bins`` (``bins_per_task`` values), ``epoch_acc``,
        ``epoch_loss`` (per epoch), ``test_acc``/``test_loss`` (after the task; ``epoch_test_acc`` per epoch
        when ``eval_every_epoch``), ``probe/<name>`` for every probe number, and ``steps``.
        """
        hooks = hooks or TaskHooks()
        cfg = self.config
        x, y = self._to_device(task.x_train), self._to_device(task.y_train)
        assert x is not None and y is not None
        xt, yt = self._to_device(task.x_test), self._to_device(task.y_test)
        log: dict[str, Any] = {}
        if self.probe is not None:
            xp = task.apply(x[: cfg.probe_size])
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                for k, v in self.probe(self.model, xp).items():
                    log[f"probe/{k}"] = float(v)
            self.model.train(was_training)
        hooks.on_task_start(self, t, task)
        self.model.train()

        passes = self._passes(len(x))
        sizes_h = np.array([sz for _, sizes in passes for sz in sizes], dtype=np.float64)
        n_steps = len(sizes_h)
        if n_steps == 0:
            raise ValueError(f"task {task.name!r} has {len(x)} examples, fewer than batch_size={cfg.batch_size} "
                             f"with drop_last=True: no update would run; lower the batch size or set drop_last=False")
        # Per-step correct counts and mean losses. On an accelerator they stay there as 0-d tensors (appending one
        # launches no kernel and waits for nothing) until the task ends, when they are stacked and copied to the
        # host once. On the CPU they are read at once (.item() costs nothing there): a task's worth of small
        # tensors kept alive between each step's large gradient buffers would fragment malloc's heap, and at
        # batch 1 on the paper's MLP the process grew to several GB.
        on_host = self.device.type == "cpu"
        acc_log: list[Tensor | int] = []
        loss_log: list[Tensor | float] = []
        epoch_ends: list[int] = []
        epoch_test: list[tuple[float, float]] = []
        step = 0
        for epoch, (take, sizes) in enumerate(passes):
            perm = torch.randperm(len(x), generator=self.generator, device=self.device)[:take]
            start = 0
            for bsz in sizes:
                idx = perm[start:start + bsz]
                start += bsz
                xb = task.apply(x[idx])
                yb = y[idx]
                if self.augment is not None:
                    xb = self.augment(xb, self.generator)
                with self._autocast():
                    out = self.model(xb)
                    loss = self.loss_fn(out.float(), yb)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if cfg.grad_clip is not None:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    self.optimizer.step()
                for m in self.methods:
                    m.step()
                # from the forward pass before the update: the online measure
                loss_log.append(loss.item() if on_host else loss.detach())
                if out.ndim == 2:
                    with torch.no_grad():
                        correct = (out.detach().argmax(1) == yb).sum()
                        acc_log.append(correct.item() if on_host else correct)
                step += 1
                self.steps_done += 1
            epoch_ends.append(step)
            if cfg.eval_every_epoch and xt is not None:
                epoch_test.append(self.evaluate(xt, yt, task.transform))  # type: ignore[arg-type]
            hooks.on_epoch_end(self, t, task, epoch)

        # the per-step logs as host arrays (from an accelerator: one transfer)
        size_h = sizes_h
        loss_h = _to_host(loss_log) * size_h
        acc_h = _to_host(acc_log) if acc_log else np.zeros(n_steps)
        total = size_h.sum()
        log["online_acc"] = acc_h.sum() / total
        log["online_loss"] = loss_h.sum() / total
        edges = np.linspace(0, n_steps, cfg.bins_per_task + 1).round().astype(int)
        log["online_acc_bins"] = _segment_means(acc_h, size_h, edges)
        log["online_loss_bins"] = _segment_means(loss_h, size_h, edges)
        log["epoch_acc"] = _segment_means(acc_h, size_h, np.array([0, *epoch_ends]))
        log["epoch_loss"] = _segment_means(loss_h, size_h, np.array([0, *epoch_ends]))
        if xt is not None:
            if epoch_test:
                log["epoch_test_acc"] = np.array([a for a, _ in epoch_test])
                log["epoch_test_loss"] = np.array([v for _, v in epoch_test])
                log["test_acc"], log["test_loss"] = epoch_test[-1]
            else:
                log["test_acc"], log["test_loss"] = self.evaluate(xt, yt, task.transform)  # type: ignore[arg-type]
        log["steps"] = n_steps
        hooks.on_task_end(self, t, task, log)
        return log

    # ------------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, method states, AMP scaler, step count and all RNG states (CPU tensors)."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "methods": [_to_cpu(_method_state(m)) for m in self.methods],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "steps_done": self.steps_done,
            "rng": rng_state(self.generator),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into this engine (same model/optimizer/method structure)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if len(state["methods"]) != len(self.methods):
            raise ValueError(f"checkpoint has {len(state['methods'])} method states, engine has "
                             f"{len(self.methods)} methods")
        for m, s in zip(self.methods, state["methods"], strict=True):
            _load_method_state(m, s)
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.steps_done = int(state["steps_done"])
        set_rng_state(state["rng"], self.generator)


def _to_host(values: list[Tensor] | list[float] | list[int]) -> np.ndarray:
    """Per-step logs as float64: numbers read on the host, or 0-d tensors stacked and copied once (as float32,
    the loss's own precision, so both routes give the same values)."""
    if values and isinstance(values[0], Tensor):
        return torch.stack(values).float().cpu().numpy().astype(np.float64)  # type: ignore[arg-type]
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _segment_means(sums: np.ndarray, sizes: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per-example means of per-step sums over the step ranges ``edges[i]:edges[i+1]``."""
    return np.array([sums[a:b].sum() / max(sizes[a:b].sum(), 1.0)
                     for a, b in zip(edges[:-1], edges[1:], strict=True)])


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def stack_logs(logs: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-task log dicts -> one array per key, tasks first (keys missing in some tasks are dropped)."""
    if not logs:
        return {}
    keys = [k for k in logs[0] if all(k in lg for lg in logs)]
    out: dict[str, np.ndarray] = {}
    for k in keys:
        vals = [np.asarray(lg[k], dtype=np.float64) for lg in logs]
        if all(v.shape == vals[0].shape for v in vals):
            out[k] = np.stack(vals)
    return out


def run_tasks(engine: Engine, stream: TaskStream | Callable[[int], Task], num_tasks: int, *,
              hooks: TaskHooks | None = None, resume: dict[str, Any] | None = None,
              on_task_done: Callable[[dict[str, Any]], None] | None = None,
              progress: Any = None) -> dict[str, np.ndarray]:
    """Train ``engine`` on tasks ``stream(0) … stream(num_tasks - 1)`` and return the stacked logs.

    ``resume``: a state previously handed to ``on_task_done`` (continue after its last finished task).
    ``on_task_done(state)`` is called after every task with ``{"engine": engine.state_dict(), "logs": [...],
    "next_task": t + 1}`` — pass it to :meth:`lopbook.checkpoint.Checkpoint.save` (or keep it in a larger
    checkpoint). ``progress``: an object with ``update(1)`` (e.g. a tqdm bar), optional.
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    logs: list[dict[str, Any]] = []
    start = 0
    if resume is not None:
        engine.load_state_dict(resume["engine"])
        logs = list(resume["logs"])
        start = int(resume["next_task"])
        if progress is not None and start:
            progress.update(start)
    for t in range(start, num_tasks):
        logs.append(engine.train_task(stream(t), t, hooks))
        if on_task_done is not None:
            on_task_done({"engine": engine.state_dict(), "logs": logs, "next_task": t + 1})
        if progress is not None:
            progress.update(1)
    return stack_logs(logs)


# ------------------------------------------------------------------------------------------- probing
def default_probe(model: nn.Module, x: Tensor) -> dict[str, float]:
    """Plasticity metrics on a probe batch, via :mod:`lopbook.metrics` (model in eval mode, no gradient).

    Returns ``dead_frac`` (units that are zero on every probe input, pooled over hidden layers: pMNIST's
    definition), ``dormant_frac`` (active on < 1% of inputs: CIFAR's), ``erank_frac`` and ``srank_frac``
    (per hidden layer effective rank and 99% stable rank divided by the width, averaged over layers: pMNIST's
    "effective rank as % of units") and ``weight_mag`` (mean |w| over weight matrices, no biases).
    """
    from lopbook import metrics

    feats = metrics.collect_features(model, x)
    if not feats:
        raise ValueError("the model exposes no hidden features to probe (use activation modules such as nn.ReLU)")
    erank, srank = [], []
    for f in feats.values():
        sv = metrics.singular_values(f)
        width = metrics.feature_matrix(f).shape[1]
        erank.append(metrics.effective_rank(f, sv=sv) / width)
        srank.append(metrics.stable_rank_99(f, sv=sv) / width)
    return {"dead_frac": metrics.dead_fraction(feats), "dormant_frac": metrics.dormant_fraction(feats),
            "erank_frac": float(np.mean(erank)), "srank_frac": float(np.mean(srank)),
            "weight_mag": float(metrics.mean_abs_weight(model))}  # type: ignore[arg-type]


def set_torch_threads(n: int | None) -> None:
    """Limit intra-op CPU threads (the shared CI machines have 2 cores)."""
    if n is not None and n > 0:
        torch.set_num_threads(int(n))

