"""Slippery Ant (paper Fig. 3): PPO on Ant whose friction changes every ``change_every`` steps.

Each (method, seed) run trains one PPO agent (:class:`lopbook.rl.ppo.PPO`) for ``total_steps`` env steps.
Friction is redrawn log-uniformly in [0.02, 2] at the first episode end after every ``change_every`` steps,
from a sequence fixed by the seed (every method sees the same frictions). ``fixed_friction=1.0`` gives the
paper's stationary Ant (Fig. 4a); ``env_id`` may also be ``Hopper-v5`` or ``Walker2d-v5``.

Arrays (M methods, S seeds, B return bins, I PPO iterations, L policy hidden layers):
``methods`` (M,), ``bin_end`` (B,), ``returns_binned`` (M, S, B) mean return of the episodes that ended in each
bin (NaN if none), ``iter_step`` (I,), ``friction`` (M, S, I) friction in effect at each iteration's end,
``dormant`` (M, S, I, L), ``stable_rank`` (M, S, I), ``weight_mag`` (M, S, I, L+1), ``pg_loss``, ``v_loss``,
``sps``, ``replaced`` (units re-initialised so far by CBP/ReDo) (M, S, I), and every episode: ``ep_return``, ``ep_step``, ``ep_friction``, ``ep_method``, ``ep_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lopbook.checkpoint import Checkpoint
from lopbook.experiments import Experiment, Preset, RunOutput
from lopbook.rl.envs import ENV_KWARGS
from lopbook.rl.ppo import PPO, VARIANTS, config_for


@dataclass
class SlipperyAntConfig:
    """Config of the slippery-Ant experiment (defaults: the paper's scale)."""

    env_id: str = "Ant-v5"
    methods: tuple[str, ...] = ("bp", "ns", "l2", "cbp", "redo")
    total_steps: int = 20_000_000
    change_every: int = 2_000_000        # friction changes at the first episode end after this many steps
    fixed_friction: float | None = None  # 1.0: the stationary Ant of Fig. 4a
    friction_mode: str = "set"           # "set": every geom gets f (paper); "scale": each geom's own x f
    num_envs: int = 1                    # the paper used 1; more amortise the policy forward on a CPU
    num_steps: int = 2048
    num_minibatches: int = 16
    update_epochs: int = 10
    hidden: tuple[int, ...] = (256, 256)
    bootstrap_truncation: bool = True    # False = upstream's (buggy) time-limit-as-termination
    bin_steps: int = 100_000             # width of the return bins (paper: 100k for slippery Ant)
    threads: int = 1                     # torch threads per process
    cbp_maturity: int = 10_000           # CBP's m in minibatch updates (paper 1e4 = 128k env steps)
    cbp_replacement_rate: float = 1e-4   # CBP's rho
    fused_adam: bool = False             # torch's fused Adam: faster on a CPU, equal up to float rounding

    def validate(self) -> None:
        if self.env_id not in ENV_KWARGS:
            raise ValueError(f"env_id must be one of {sorted(ENV_KWARGS)}, got {self.env_id!r}")
        bad = [m for m in self.methods if m not in VARIANTS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {sorted(VARIANTS)}, got {list(self.methods)}")
        if self.total_steps < self.num_steps:
            raise ValueError(f"total_steps ({self.total_steps}) must be at least one rollout ({self.num_steps})")
        if self.friction_mode not in ("set", "scale"):
            raise ValueError(f"friction_mode must be 'set' or 'scale', got {self.friction_mode!r}")
        if self.bin_steps <= 0 or self.change_every < 0:
            raise ValueError("bin_steps must be > 0 and change_every >= 0")
        self.ppo_config("bp").validate()

    def ppo_config(self, method: str) -> Any:
        cfg = config_for(method, env_id=self.env_id, num_envs=self.num_envs, num_steps=self.num_steps,
                         num_minibatches=self.num_minibatches, update_epochs=self.update_epochs,
                         hidden=tuple(self.hidden), change_every=self.change_every,
                         fixed_friction=self.fixed_friction, bootstrap_truncation=self.bootstrap_truncation,
                         friction_mode=self.friction_mode, fused_adam=self.fused_adam)
        if method == "cbp":
            cfg.method = {**cfg.method, "maturity_threshold": self.cbp_maturity,
                          "replacement_rate": self.cbp_replacement_rate}
        return cfg

    @property
    def n_iters(self) -> int:
        return self.total_steps // self.num_steps


def _run_arrays(agent: PPO, cfg: SlipperyAntConfig) -> dict[str, np.ndarray]:
    """One run's logs as fixed-shape arrays (plus its variable-length episode list)."""
    ep_ret = np.asarray(agent.episodes["return"], float)
    ep_step = np.asarray(agent.episodes["step"], np.int64)
    n_bins = -(-cfg.n_iters * cfg.num_steps // cfg.bin_steps)
    which = np.minimum((ep_step - 1) // cfg.bin_steps, n_bins - 1)
    sums = np.bincount(which, ep_ret, minlength=n_bins)
    counts = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        binned = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    it = agent.iters
    return {"returns_binned": binned, "friction": np.asarray(it["friction"]), "dormant": np.asarray(it["dormant"]),
            "stable_rank": np.asarray(it["stable_rank"], float), "weight_mag": np.asarray(it["weight_mag"]),
            "pg_loss": np.asarray(it["pg_loss"]), "v_loss": np.asarray(it["v_loss"]), "sps": np.asarray(it["sps"]),
            "replaced": np.asarray(it["replaced"]),
            "iter_step": np.asarray(it["step"], np.int64), "ep_return": ep_ret, "ep_step": ep_step,
            "ep_friction": np.asarray(agent.episodes["friction"], float)}


def run(cfg: SlipperyAntConfig, *, seeds: list[int], device: str, checkpoint: Checkpoint,
        progress: bool) -> RunOutput:
    """Train every (method, seed) in turn; resumes mid-run from ``checkpoint``."""
    torch.set_num_threads(cfg.threads)
    state = checkpoint.load() or {"done": {}, "current": None}
    done: dict[str, dict[str, np.ndarray]] = state["done"]
    runs = [(m, s) for m in cfg.methods for s in seeds]
    bar = tqdm(total=len(runs) * cfg.n_iters, disable=not progress, desc="slippery_ant", unit="it")
    bar.update(len(done) * cfg.n_iters)
    for method, seed in runs:
        key = f"{method}/{seed}"
        if key in done:
            continue
        agent = PPO(cfg.ppo_config(method), seed=seed, device=device)
        cur = state.get("current")
        if cur is not None and cur["key"] == key:
            agent.load_state_dict(cur["agent"])
            bar.update(len(agent.iters["step"]))
        try:
            while len(agent.iters["step"]) < cfg.n_iters:
                agent.train_iteration()
                bar.update(1)
                rets = agent.episodes["return"][-10:]
                bar.set_postfix(run=key, ret=f"{np.mean(rets):.0f}" if rets else "-",
                                f=f"{agent.friction[0].friction:.2f}")
                if checkpoint.enabled:  # cheap next to an iteration; written at most once a minute
                    checkpoint.save({"done": done, "current": {"key": key, "agent": agent.state_dict()}})
        finally:
            agent.close()
        done[key] = _run_arrays(agent, cfg)
        checkpoint.save({"done": done, "current": None}, force=True)
    bar.close()
    return RunOutput(arrays=_stack(done, cfg, seeds), dataset={
        "name": f"Gymnasium {cfg.env_id} (MuJoCo)" + (" with friction redrawn log-uniformly in [0.02, 2] every "
                                                      f"{cfg.change_every:,} steps" if cfg.fixed_friction is None
                                                      else f" with fixed friction {cfg.fixed_friction}"),
        "stand_in": False,
        "note": "Gymnasium 1.x Ant-v5 with the mujoco package stands in for the paper's gym 0.23 Ant-v3 + "
                "mujoco-py (27-dim observation without the contact forces, which were zeros under mujoco-py 2); "
                "time-limit truncation bootstraps from V(final obs) (upstream treated it as termination)."})


def _stack(done: dict[str, dict[str, np.ndarray]], cfg: SlipperyAntConfig, seeds: list[int]) -> dict[str, np.ndarray]:
    """(method, seed) run arrays -> the experiment's (M, S, ...) arrays and concatenated episodes."""
    out: dict[str, Any] = {"methods": np.array(cfg.methods), "seeds": np.array(seeds)}
    first = done[f"{cfg.methods[0]}/{seeds[0]}"]
    out["bin_end"] = (np.arange(len(first["returns_binned"])) + 1) * cfg.bin_steps
    out["iter_step"] = first["iter_step"]
    for k in ("returns_binned", "friction", "dormant", "stable_rank", "weight_mag", "pg_loss", "v_loss", "sps",
              "replaced"):
        out[k] = np.stack([np.stack([done[f"{m}/{s}"][k] for s in seeds]) for m in cfg.methods])
    eps = [(mi, si, done[f"{m}/{s}"]) for mi, m in enumerate(cfg.methods) for si, s in enumerate(seeds)]
    for k in ("ep_return", "ep_step", "ep_friction"):
        out[k] = np.concatenate([d[k] for _, _, d in eps])
    out["ep_method"] = np.concatenate([np.full(len(d["ep_return"]), mi) for mi, _, d in eps])
    out["ep_seed"] = np.concatenate([np.full(len(d["ep_return"]), si) for _, si, d in eps])
    return out


EXPERIMENT = Experiment(
    name="slippery_ant",
    title="PPO on Slippery Ant: friction changes, plasticity fades",
    config_cls=SlipperyAntConfig,
    run=run,
    presets={
        "quick": Preset({"methods": ("bp", "cbp"), "total_steps": 2048, "change_every": 1000, "num_steps": 512,
                         "num_minibatches": 4, "update_epochs": 2, "num_envs": 2, "bin_steps": 512,
                         "cbp_maturity": 20},
                        seeds=1, paper_scale=False,
                        note="smoke test: 2,048 steps, friction change after 1,000, 2 epochs x 4 minibatches"),
        "cpu": Preset({"methods": ("bp", "ns", "l2", "cbp", "redo"), "total_steps": 61_440, "change_every": 20_000,
                       "num_envs": 4, "bin_steps": 6_144, "cbp_maturity": 1_000},
                      seeds=2, paper_scale=False,
                      note="CPU run: 61k steps per run (paper: 20M), friction change after 20k (paper: 2M), "
                           "all 5 methods, 2 seeds (paper: 100), 4 parallel envs; PPO hyperparameters as in "
                           "the paper except CBP's maturity m = 1,000 updates (paper 10,000 = 128k steps, longer than "
                           "this whole run)"),
        "full": Preset({}, seeds=30, paper_scale=True,
                       note="20M steps, friction change every 2M, std/ns/l2/cbp/redo"),
        "ant": Preset({"fixed_friction": 1.0, "total_steps": 50_000_000, "bin_steps": 250_000}, seeds=20,
                      paper_scale=True, note="stationary Ant (Fig. 4a): 50M steps, friction 1"),
        "ant_cpu": Preset({"fixed_friction": 1.0, "methods": ("bp", "cbp"), "total_steps": 10_000_000,
                           "bin_steps": 250_000}, seeds=2, paper_scale=False,
                          note="stationary Ant (Fig. 4a) on a CPU: 10M steps per run (paper: 50M), standard PPO vs "
                               "PPO+L2+CBP (paper: also NS Adam, L2, ReDo), 2 seeds (paper: 20), one env; PPO and "
                               "CBP hyperparameters as in the paper"),
    },
)
