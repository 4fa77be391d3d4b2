"""Class-incremental CIFAR-100 (paper Fig. 2), on :mod:`lopbook.engine`.

Every method is trained on the same seeded class order, from the same initial ResNet-18, per seed. Arrays
(methods first): ``methods`` (M,); per increment (M, seeds, increments): ``test_acc`` (clean test images of the
active classes, BN in eval mode, after early stopping), ``test_acc_last_epoch`` (before restoring),
``best_val_acc``, ``train_acc`` (online, last epoch), ``dormant_frac``, ``erank_frac``, ``srank_frac`` (pooled
features, fraction of the feature width), ``weight_mag``; ``epoch_val_acc`` (M, seeds, increments, epochs);
``class_order`` (seeds, classes); ``n_classes`` (increments,).

Presets:

- ``quick``: seconds — 2 increments of 2 digit classes, a width-4 ResNet-18 at 16x16, 2 epochs.
- ``cpu``: the analog the book caches. **Not CIFAR-100:** 20 of the 40 classes of
  :func:`lopbook.data.digit_transforms.digit_transform_classes` (real MNIST digits x 4 fixed transformations),
  10 increments of 2 classes, ResNet-18 with stage widths 8/16/32/64 (1/8 of the paper's) on 16x16 images,
  30 training images per class, 30 epochs per increment, batch 16, no augmentation, so that every network reaches
  essentially 100% training accuracy on every increment (the paper's "trained to convergence") in ~20 CPU-minutes for
  3 seeds x (bp, cbp, retrain). CBP's ρ and maturity are the paper's, rescaled by :func:`scaled_cbp`.
- ``full``: the paper's scale on the real CIFAR-100 (20 increments of 5 classes, 200 epochs, batch 90, width 64);
  downloads CIFAR-100 when online, needs a GPU (≈ 1 M steps per run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lopbook.checkpoint import Checkpoint
from lopbook.data.cifar100 import class_order
from lopbook.engine import run_tasks, set_torch_threads
from lopbook.experiments import Experiment, Preset, RunOutput
from lopbook.problems.incremental_cifar import (
    METHOD_NAMES,
    RUN_KEYS,
    SOURCES,
    IncrementStream,
    build,
    load_splits,
)
from lopbook.stats import t_interval as mean_ci


@dataclass
class IncrementalCIFARConfig:
    """Class-incremental CIFAR settings (defaults = the paper's protocol)."""

    data: str = "cifar100"
    data_root: str = ""
    image_size: int = 32
    train_per_class: int | None = None  # None: all (450 for CIFAR-100)
    val_per_class: int = 50
    test_per_class: int = 100
    classes_per_increment: int = 5
    num_increments: int = 20
    epochs: int = 200
    batch_size: int = 90
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 64
    crop_padding: int = 4
    flip_p: float = 0.5  # horizontal flips (CIFAR); 0 for digits, whose mirror images are not the same digit
    rotation_deg: float = 0.0
    cbp_replacement_rate: float = 1e-5
    cbp_maturity: int = 1000
    cbp_decay: float = 0.99
    # True: cbp_replacement_rate / cbp_maturity are the paper's values, rescaled by :func:`scaled_cbp` to this
    # config's first increment (same share of units replaced per increment, same maturity share of an increment)
    cbp_scaled: bool = False
    # new conv weights as the network's own init (kaiming-normal, fan_in), as in the authors' ResNet code
    cbp_init: str = "kaiming_normal"
    methods: list[str] = field(default_factory=lambda: list(METHOD_NAMES))
    analysis_size: int = 1000
    threads: int | None = 1

    def validate(self) -> None:
        if self.data not in SOURCES:
            raise ValueError(f"data must be one of {SOURCES}, got {self.data!r}")
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown or not self.methods:
            raise ValueError(f"unknown or no methods {unknown}; choose from {METHOD_NAMES}")
        total = {"cifar100": 100, "mnist_standin": 10, "mnist_derived": 40}[self.data]
        if self.classes_per_increment * self.num_increments > total:
            raise ValueError(f"classes_per_increment x num_increments = "
                             f"{self.classes_per_increment * self.num_increments} exceeds the {total} classes")
        for name in ("epochs", "batch_size", "width", "num_increments", "classes_per_increment", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


PAPER_STEPS_FIRST_INCREMENT = 200 * 25  # 200 epochs x (5 classes x 450 images / batch 90)


def scaled_cbp(steps_first_increment: int, replacement_rate: float = 1e-5, maturity: int = 1000) -> tuple[float, int]:
    """CBP's ρ and maturity for a run whose first increment takes ``steps_first_increment`` SGD steps.

    The rule, fixed before any run: the *fraction of units replaced per increment* (ρ x steps) and the maturity
    *as a share of an increment* stay the paper's (ρ = 1e-5, m = 1,000 over 5,000 steps in its first increment;
    both scale alike with the later, longer increments since steps grow with the classes in both).
    """
    if steps_first_increment < 1:
        raise ValueError(f"steps_first_increment must be >= 1, got {steps_first_increment}")
    scale = PAPER_STEPS_FIRST_INCREMENT / steps_first_increment
    return replacement_rate * scale, max(1, round(maturity / scale))


def cbp_settings(cfg: IncrementalCIFARConfig, train_per_class: int) -> dict[str, Any]:
    """The CBP spec of ``cfg``; with ``cfg.cbp_scaled``, ρ and maturity rescaled by :func:`scaled_cbp` to the
    SGD steps of the first increment (``train_per_class`` images per class, the last batch of an epoch kept)."""
    rho, maturity = cfg.cbp_replacement_rate, cfg.cbp_maturity
    if cfg.cbp_scaled:
        steps = cfg.epochs * math.ceil(cfg.classes_per_increment * train_per_class / cfg.batch_size)
        rho, maturity = scaled_cbp(steps, rho, maturity)
    return {"replacement_rate": rho, "maturity_threshold": maturity, "decay_rate": cfg.cbp_decay,
            "utility": "contribution", "init": cfg.cbp_init}


def run(cfg: IncrementalCIFARConfig, *, seeds: list[int], device: str, checkpoint: Checkpoint,
        progress: bool) -> RunOutput:
    """Train every method on every seed; resumable per increment through ``checkpoint``."""
    set_torch_threads(cfg.threads if device == "cpu" else None)
    data = load_splits(cfg.data, cfg.data_root, image_size=cfg.image_size, train_per_class=cfg.train_per_class,
                       val_per_class=cfg.val_per_class, test_per_class=cfg.test_per_class)
    state: dict[str, Any] = checkpoint.load() or {"done": {}, "current": None}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cfg.methods) * len(seeds) * cfg.num_increments, desc="incremental CIFAR",
                   unit="increment")
    cbp = cbp_settings(cfg, len(data.train_y) // data.num_classes)
    orders = np.stack([class_order(s, data.num_classes) for s in seeds])
    for si, seed in enumerate(seeds):
        stream = IncrementStream(data, orders[si], cfg.classes_per_increment, device, analysis_seed=seed)
        for method in cfg.methods:
            key = f"{method}|{seed}"
            if key in state["done"]:
                if bar is not None:
                    bar.update(cfg.num_increments)
                continue
            engine, hooks = build(method, seed=seed, num_classes=data.num_classes, width=cfg.width, device=device,
                                  lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, cbp=cbp,
                                  batch_size=cfg.batch_size, epochs=cfg.epochs,
                                  classes_per_increment=cfg.classes_per_increment, analysis_size=cfg.analysis_size,
                                  augment_kw={"padding": cfg.crop_padding, "flip_p": cfg.flip_p,
                                              "rotation_deg": cfg.rotation_deg})
            cur = state["current"]
            resume = cur["resume"] if cur is not None and cur["key"] == key else None

            def on_task_done(s: dict[str, Any], key: str = key) -> None:
                state["current"] = {"key": key, "resume": s}
                checkpoint.save(state)

            logs = run_tasks(engine, stream, cfg.num_increments, hooks=hooks, resume=resume,
                             on_task_done=on_task_done, progress=bar)
            out = {k: logs[k] for k in RUN_KEYS if k != "train_acc"}
            out["train_acc"] = logs["epoch_acc"][:, -1]
            out["epoch_val_acc"] = logs["epoch_val_acc"]
            state["done"][key] = out
            state["current"] = None
            checkpoint.save(state, force=True)
    if bar is not None:
        bar.close()
    arrays: dict[str, np.ndarray] = {"methods": np.array(cfg.methods), "class_order": orders,
                                     "n_classes": cfg.classes_per_increment * np.arange(1, cfg.num_increments + 1)}
    for k in (*RUN_KEYS, "epoch_val_acc"):
        arrays[k] = np.stack([np.stack([state["done"][f"{m}|{s}"][k] for s in seeds]) for m in cfg.methods])
    return RunOutput(arrays=arrays, dataset=data.info)


def paired_gap(arrays: Any, key: str, a: str, b: str, increment: int = -1) -> tuple[float, float, float]:
    """``key`` of method ``a`` minus method ``b`` at ``increment``, paired by seed (same class order and initial
    network), with its Student-t interval (:func:`lopbook.stats.t_interval`); ``arrays`` is a result (anything indexable by array name)."""
    methods = [str(m) for m in arrays["methods"]]
    missing = [m for m in (a, b) if m not in methods]
    if missing:
        raise ValueError(f"methods {missing} are not in this result; it has {methods}")
    x = np.asarray(arrays[key])
    return mean_ci(x[methods.index(a), :, increment] - x[methods.index(b), :, increment])


EXPERIMENT = Experiment(
    name="incremental_cifar",
    title="Class-incremental CIFAR-100 with ResNet-18",
    config_cls=IncrementalCIFARConfig,
    run=run,
    presets={
        "quick": Preset({"data": "mnist_standin", "image_size": 16, "train_per_class": 20, "val_per_class": 10,
                         "test_per_class": 20, "classes_per_increment": 2, "num_increments": 2, "epochs": 2,
                         "batch_size": 20, "width": 4, "crop_padding": 2, "flip_p": 0.0, "cbp_replacement_rate": 1e-2,
                         "cbp_maturity": 2, "analysis_size": 80}, seeds=1, paper_scale=False,
                        note="2 increments x 2 epochs, width-4 ResNet-18 on 16x16 MNIST digits; a smoke test"),
        "cpu": Preset({"data": "mnist_derived", "image_size": 16, "train_per_class": 30, "val_per_class": 15,
                       "test_per_class": 80, "classes_per_increment": 2, "num_increments": 10, "epochs": 30,
                       "batch_size": 16, "width": 8, "crop_padding": 0, "flip_p": 0.0, "cbp_scaled": True,
                       "analysis_size": 500, "methods": ["bp", "cbp", "retrain"]}, seeds=3, paper_scale=False,
                      note="ANALOG, not CIFAR-100: 20 of 40 MNIST digit x transform classes in 10 increments of 2 "
                           "(paper: 100 CIFAR-100 classes, 20 increments of 5), ResNet-18 at 1/8 width on 16x16 "
                           "images, 30 training images per class (paper: 450), 30 epochs per increment (paper: 200), "
                           "batch 16 (paper: 90), no augmentation (paper: crop + flip), CBP rho and maturity "
                           "scaled to the paper's replacement per increment; 6,300 SGD steps per run "
                           "(paper: 1.05 million, ~170x more)"),
        "full": Preset({}, seeds=5, paper_scale=True,
                       note="CIFAR-100, 20 increments of 5 classes x 200 epochs, batch 90, "
                            "ResNet-18 width 64, 5 seeds (the repo does not state its number of runs)"),
    },
)

__all__ = ["IncrementalCIFARConfig", "EXPERIMENT", "run", "scaled_cbp", "cbp_settings", "mean_ci", "paired_gap"]
