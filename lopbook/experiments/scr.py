"""Experiment ``scr``: slowly-changing regression (upstream "bit-flipping"), BP vs CBP vs L2 vs S&P.

Every (method, seed) run is trained at once by :class:`lopbook.problems.scr_trainer.BatchedSCRTrainer`:
one million examples for thirty seeds and ten configurations take minutes on a CPU.

Hyperparameters of the ``full`` preset (upstream ``cfg/sgd/bp/*``, SGD, step size 0.01):

- BP with each of the six activations (relu, tanh, sigmoid, elu, leaky_relu, swish) and the linear baseline;
- L2 (relu): lambda = 1e-3, one value of upstream's sweep ``relu_wd.json`` (1e-6 ... 1);
- S&P (relu): lambda = 1e-2 (the value upstream's ``relu_snp.json`` fixes for relu) and sigma = 1e-2, one value
  of its sweep (1e-6 ... 1e-1);
- CBP (relu): rho = 1e-4, m = 100, eta = 0.99, contribution utility (upstream's ``sgd/cbp/relu.json`` sweeps rho
  over 1e-6 ... 1e-2 with eta = 0.99 and asks for m = 100; its runner silently used m = 10, a bug not ported).
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lopbook.checkpoint import Checkpoint
from lopbook.experiments import Experiment, Preset, RunOutput
from lopbook.problems.scr import VARIANTS
from lopbook.problems.scr_trainer import ACTIVATIONS, BatchedSCRTrainer, MethodSpec, split_state

HIDDEN_ACTIVATIONS = [a for a in ACTIVATIONS if a != "linear"]


@dataclass
class SCRConfig:
    """Scale and hyperparameters of a slowly-changing regression run (see the module docstring)."""

    n_examples: int = 1_000_000
    variant: str = "redraw"
    period: int = 10_000
    bin_size: int = 20_000
    lr: float = 0.01
    bp_activations: list[str] = field(default_factory=lambda: list(HIDDEN_ACTIVATIONS))
    methods: list[str] = field(default_factory=lambda: ["cbp", "l2", "snp"])
    method_activations: list[str] = field(default_factory=lambda: ["relu"])
    linear_baseline: bool = True
    replacement_rate: float = 1e-4
    maturity_threshold: int = 100
    decay_rate: float = 0.99
    weight_decay: float = 1e-3
    snp_weight_decay: float = 1e-2
    perturb_scale: float = 1e-2
    chunk: int = 1_000
    probe_size: int = 500

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.n_examples <= 0 or self.n_examples % self.bin_size:
            raise ValueError(f"n_examples ({self.n_examples}) must be a positive multiple of bin_size "
                             f"({self.bin_size})")
        if self.bin_size % self.chunk:
            raise ValueError(f"chunk ({self.chunk}) must divide bin_size ({self.bin_size})")
        bad = sorted(set(self.bp_activations + self.method_activations) - set(HIDDEN_ACTIVATIONS))
        if bad:
            raise ValueError(f"unknown activations {bad}; choose from {HIDDEN_ACTIVATIONS}")
        bad = sorted(set(self.methods) - {"cbp", "l2", "snp"})
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from ['cbp', 'l2', 'snp'] (BP always runs)")
        for spec in method_specs(self):
            spec.validate()


def method_specs(cfg: SCRConfig) -> list[MethodSpec]:
    """The learner configurations a config asks for, labelled ``<method>_<activation>`` (and ``linear``)."""
    specs = [MethodSpec(f"bp_{a}", "bp", a, lr=cfg.lr) for a in cfg.bp_activations]
    for a in cfg.method_activations:
        for m in cfg.methods:
            if m == "cbp":
                specs.append(MethodSpec(f"cbp_{a}", "cbp", a, lr=cfg.lr, replacement_rate=cfg.replacement_rate,
                                        maturity_threshold=cfg.maturity_threshold, decay_rate=cfg.decay_rate))
            elif m == "l2":
                specs.append(MethodSpec(f"l2_{a}", "l2", a, lr=cfg.lr, weight_decay=cfg.weight_decay))
            elif m == "snp":
                specs.append(MethodSpec(f"snp_{a}", "snp", a, lr=cfg.lr, weight_decay=cfg.snp_weight_decay,
                                        perturb_scale=cfg.perturb_scale))
    if cfg.linear_baseline:
        specs.append(MethodSpec("linear", "bp", "linear", lr=cfg.lr))
    return specs


def train(cfg: SCRConfig, seeds: list[int], checkpoint: Checkpoint | None = None,
          progress: bool = False, initial_state: dict[str, Any] | None = None,
          position: int = 0) -> dict[str, np.ndarray]:
    """Train every configuration of ``cfg`` on every seed; returns the trainer's binned metrics.

    Resumes from ``checkpoint`` if it holds a state, else from ``initial_state`` if given.
    """
    trainer = BatchedSCRTrainer(method_specs(cfg), seeds, variant=cfg.variant, period=cfg.period,
                                bin_size=cfg.bin_size, chunk=cfg.chunk, probe_size=cfg.probe_size)
    state = checkpoint.load() if checkpoint is not None else None
    state = state if state is not None else initial_state
    if state is not None:
        trainer.load_state(state)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.n_examples, initial=trainer.t, unit="ex", position=position,
                   desc=f"scr seeds {seeds[0]}-{seeds[-1]} x{trainer.n_runs} runs")

    def on_chunk(tr: BatchedSCRTrainer) -> None:
        if bar is not None:
            bar.update(tr.chunk)

    def on_bin(tr: BatchedSCRTrainer) -> None:
        # a bin boundary is the one place where no accumulator is half-filled
        if checkpoint is not None:
            checkpoint.save(tr.state())

    trainer.train(cfg.n_examples, on_chunk=on_chunk, on_bin=on_bin)
    if bar is not None:
        bar.close()
    return trainer.results()


def idle_cores() -> int:
    """CPU cores this process may use minus those already busy (the 1-minute load average), at least 1.

    The batched trainer is compute-bound and runs one BLAS thread per process, so one process per idle core is
    the fastest split: on an idle 16-core machine that is 16 workers, on a 2-core machine whose other core is
    busy it is 1 (there, two workers ran at 0.67x the speed of one process).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        busy = 0
    return max(1, usable - busy)


def n_workers(cfg: SCRConfig, seeds: list[int]) -> int:
    """Worker processes for a run: env ``LOPBOOK_SCR_WORKERS`` if set, else one per idle core for big runs
    (:func:`idle_cores`) and 1 for small ones (starting processes would cost more than they save).

    Runs never interact, so splitting the seeds over processes gives exactly the same numbers.
    """
    env = os.environ.get("LOPBOOK_SCR_WORKERS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"LOPBOOK_SCR_WORKERS must be an integer, got {env!r}") from None
    else:
        big = cfg.n_examples * len(seeds) * len(method_specs(cfg)) >= 50_000_000
        n = idle_cores() if big else 1
    return max(1, min(n, len(seeds)))


def _worker(job: tuple) -> dict[str, np.ndarray]:
    cfg, seeds, path, key, state, position, progress = job
    ckpt = Checkpoint(path, key=key) if path is not None else None
    return train(cfg, seeds, ckpt, progress, initial_state=state, position=position)


def train_parallel(cfg: SCRConfig, seeds: list[int], checkpoint: Checkpoint | None, progress: bool,
                   workers: int) -> dict[str, np.ndarray]:
    """Split the seeds over ``workers`` processes (each checkpointing to ``<ckpt>.w<i>``) and merge.

    A one-process checkpoint at ``checkpoint`` is split by seed, so a run can switch to workers and resume.
    """
    parts = [list(map(int, p)) for p in np.array_split(np.asarray(seeds), workers) if len(p)]
    whole = checkpoint.load() if checkpoint is not None else None
    jobs = []
    for i, part in enumerate(parts):
        path = None
        if checkpoint is not None and checkpoint.path is not None:
            path = checkpoint.path.with_name(checkpoint.path.name + f".w{i}")
        state = split_state(whole, part) if whole is not None else None
        jobs.append((cfg, part, path, {"parent": checkpoint.key if checkpoint else None, "seeds": part},
                     state, i, progress))
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        outs = pool.map(_worker, jobs)
    merged = {k: (v if k in ("labels", "bin_end") else np.concatenate([o[k] for o in outs], axis=1))
              for k, v in outs[0].items()}
    for _, _, path, *_ in jobs:
        if path is not None:
            path.unlink(missing_ok=True)
    return merged


def run(cfg: SCRConfig, *, seeds: list[int], device: str, checkpoint: Checkpoint, progress: bool) -> RunOutput:
    """Registry entry point; the batched numpy trainer ignores ``device`` (it is CPU-only and fast there)."""
    workers = n_workers(cfg, seeds)
    if workers == 1:
        arrays = train(cfg, seeds, checkpoint, progress)
    else:
        arrays = train_parallel(cfg, seeds, checkpoint, progress, workers)
    arrays["linear_level"] = np.nanmean(arrays["err"][list(arrays["labels"]).index("linear")], 0) \
        if "linear" in list(arrays["labels"]) else np.zeros(0)
    note = (f"synthetic: 20 input bits (15 slow, {cfg.variant} every {cfg.period} examples), target 20-100-1 "
            f"LTU net with +-1 weights (beta = 0.7), generated from each seed")
    return RunOutput(arrays=arrays, dataset={"name": "slowly-changing regression", "stand_in": False,
                                             "note": note})


def live_comparison(replacement_rate: float = 1e-4, maturity_threshold: int = 100, lr: float = 0.01,
                    activation: str = "relu", n_examples: int = 100_000, seeds: int = 3,
                    bin_size: int = 10_000) -> dict[str, Any]:
    """A small BP-vs-CBP run for the chapter's widget: returns binned errors (methods x seeds x bins)."""
    cfg = SCRConfig(n_examples=n_examples, bin_size=bin_size, lr=lr, bp_activations=[activation],
                    methods=["cbp"], method_activations=[activation], linear_baseline=True,
                    replacement_rate=replacement_rate, maturity_threshold=maturity_threshold)
    cfg.validate()
    return train(cfg, list(range(seeds)))


EXPERIMENT = Experiment(
    name="scr",
    title="Slowly-changing regression: BP with six activations vs CBP, L2 and S&P",
    config_cls=SCRConfig,
    run=run,
    presets={
        "quick": Preset(overrides={"n_examples": 40_000, "bin_size": 4_000, "bp_activations": ["relu", "tanh"]},
                        seeds=3, paper_scale=False,
                        note="40k examples (4% of the paper), bins of 4k, BP relu/tanh, CBP/L2/S&P relu, linear"),
        "full": Preset(overrides={}, seeds=30, paper_scale=True,
                       note="1M examples per run as the paper's SGD configs; 30 seeds (upstream used 100); "
                            "BP x 6 activations, CBP/L2/S&P relu, linear; default (re-draw) variant"),
        "flip_one": Preset(overrides={"variant": "flip_one"}, seeds=30, paper_scale=True,
                           note="as full, but the flip-one-bit variant the papers describe (upstream ran it "
                                "for 3M examples)"),
    },
)
