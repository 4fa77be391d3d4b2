"""A tiny registered-style experiment for testing the framework (registry, CLI, checkpoints, sweeps).

It fits y = 2x + 1 by SGD, checkpointing after every step. Setting ``LOPBOOK_TOY_CRASH_AT=k`` makes the
run raise at step k, to simulate an interruption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lopbook.experiments import Experiment, Preset, RunOutput


@dataclass
class ToyConfig:
    steps: int = 20
    lr: float = 0.1

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError("steps must be positive")


class ToyCrash(RuntimeError):
    pass


def run(cfg: ToyConfig, *, seeds, device, checkpoint, progress):
    state = checkpoint.load() or {"step": 0, "w": np.zeros((len(seeds), 2)), "loss": []}
    crash_at = int(os.environ.get("LOPBOOK_TOY_CRASH_AT", "-1"))
    rngs = [np.random.default_rng([s, 0]) for s in seeds]
    # advance the per-seed streams to where the checkpoint stopped, so a resumed run sees the same data
    xs = np.stack([r.uniform(-1, 1, cfg.steps) for r in rngs])
    while state["step"] < cfg.steps:
        t = state["step"]
        if t == crash_at:
            raise ToyCrash(f"simulated crash at step {t}")
        x = xs[:, t]
        pred = state["w"][:, 0] * x + state["w"][:, 1]
        err = pred - (2 * x + 1)
        state["w"] = state["w"] - cfg.lr * np.stack([err * x, err], 1)
        state["loss"].append(err ** 2)
        state["step"] = t + 1
        checkpoint.save(state, force=True)
    return RunOutput(arrays={"loss": np.stack(state["loss"], 1), "w": state["w"]},
                     dataset={"name": "toy line", "stand_in": False, "note": "synthetic by design"})


EXPERIMENT = Experiment(
    name="toy", title="Toy line fit", config_cls=ToyConfig, run=run,
    presets={"quick": Preset({"steps": 10}, seeds=2, paper_scale=False, note="10 steps"),
             "full": Preset({"steps": 40}, seeds=3, paper_scale=True, note="40 steps")})
