"""A readable PPO for continuous control, in CleanRL's style, with the paper's settings.

One screen per idea: :meth:`PPO.collect` (rollout), :func:`gae` (advantages), :meth:`PPO.update` (clipped
surrogate + value loss, minibatch by minibatch, each followed by the plasticity methods' ``step()``).

Paper settings (the defaults of :class:`PPOConfig`): 2048-step rollouts; GAE with gamma 0.99, lambda 0.95;
advantages normalised over the batch; 10 epochs x 16 minibatches of 128; clip 0.2; loss = surrogate + value
MSE with **no value coefficient and no entropy bonus**; one Adam (lr 1e-4, constant) over policy, value net
and ``log_std``; no gradient clipping; no observation or reward normalisation; sampled actions go to the env
unclipped (MuJoCo clamps controls itself; the control cost sees the raw action, as upstream).

Deviation from upstream (documented in the book's differences appendix): upstream treated the 1000-step time limit as
termination. Here a **truncated** episode bootstraps from ``V(final observation)``; only a true termination
(the ant falls) cuts the return. ``bootstrap_truncation=False`` restores upstream's behaviour.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lopbook.metrics import dormant_fraction, stable_rank_99
from lopbook.rl.envs import (
    ChangingFriction,
    find_wrapper,
    load_vec_env_state,
    make_vec_env,
    step_envs,
    vec_env_state,
)

# name -> (Adam betas, weight decay, plasticity-method spec or None): the paper's five PPO variants.
# New input weights of replaced units come from the nets' own LeCun-uniform init, as upstream. Unlike upstream
# (torch Adam, no state reset) our CBP/ReDo engines also zero the Adam moments of the replaced weights.
VARIANTS: dict[str, tuple[tuple[float, float], float, dict[str, Any] | None]] = {
    "bp": ((0.9, 0.999), 0.0, None),     # "standard PPO"
    "ns": ((0.99, 0.99), 0.0, None),     # "NS Adam" / "PPO with proper Adam"
    "l2": ((0.99, 0.99), 1e-3, None),
    "cbp": ((0.99, 0.99), 1e-4, {"name": "cbp", "weight_decay": 1e-4, "replacement_rate": 1e-4,
                                  "maturity_threshold": 10_000, "decay_rate": 0.99, "utility": "contribution",
                                  "init": "lecun"}),
    "redo": ((0.99, 0.99), 1e-4, {"name": "redo", "weight_decay": 1e-4, "threshold": 0.1, "reset_period": 100,
                                   "init": "lecun"}),
}
VARIANT_LABELS = {"bp": "Standard PPO (BP)", "ns": "PPO, NS Adam", "l2": "PPO + L2", "cbp": "PPO + CBP (+L2)",
                  "redo": "PPO + ReDo"}


@dataclass
class PPOConfig:
    """PPO hyperparameters (paper values by default)."""

    env_id: str = "Ant-v5"
    num_envs: int = 1              # the paper used one env; rollouts hold num_steps transitions in total
    num_steps: int = 2048          # transitions per rollout (over all envs)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 10
    num_minibatches: int = 16      # 2048 / 16 = 128 per minibatch
    clip: float = 0.2
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0      # coupled L2, as torch Adam's weight_decay (the paper's "L2")
    method: dict[str, Any] | None = None  # spec for lopbook.algos.build_method, applied to both nets
    hidden: tuple[int, ...] = (256, 256)
    change_every: int = 2_000_000  # total env steps between friction changes (0 = fixed friction)
    fixed_friction: float | None = None  # e.g. 1.0 for plain Ant
    friction_mode: str = "set"
    bootstrap_truncation: bool = True
    metrics_window: int = 1000     # acting steps behind the dormant-unit and stable-rank metrics
    fused_adam: bool = False       # torch's fused Adam kernel: ~20% faster updates on a CPU, same update up to
                                   # float rounding (so runs are not bit-identical to the default's)

    def validate(self) -> None:
        if self.num_steps % self.num_envs:
            raise ValueError(f"num_steps ({self.num_steps}) must be a multiple of num_envs ({self.num_envs})")
        if self.num_steps % self.num_minibatches:
            raise ValueError(f"num_steps ({self.num_steps}) must be a multiple of num_minibatches "
                             f"({self.num_minibatches})")


def config_for(variant: str, **overrides: Any) -> PPOConfig:
    """The :class:`PPOConfig` of one of the paper's variants (``bp``, ``ns``, ``l2``, ``cbp``, ``redo``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown PPO variant {variant!r}; choose one of {sorted(VARIANTS)}")
    betas, wd, method = VARIANTS[variant]
    cfg = PPOConfig(betas=betas, weight_decay=wd, method=method, **overrides)
    cfg.validate()
    return cfg


def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
        dones: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over a rollout of shape ``(T, num_envs)``.

    ``next_values[t]`` is ``V`` of the state actually reached after step ``t`` (the final observation when the
    episode ended there). ``terminated`` cuts the bootstrap (``delta = r - V``); ``dones`` (terminated or
    truncated) cuts the recursion, so a truncated step keeps ``r + gamma V(s_final)`` as its one-step target::

        delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
        A_t     = delta_t + gamma lam (1 - done_t) A_{t+1}

    Returns ``(advantages, returns = advantages + values)``.
    """
    adv = np.zeros_like(rewards, dtype=np.float64)
    last = np.zeros(rewards.shape[1:], dtype=np.float64)
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * (1.0 - terminated[t]) * next_values[t] - values[t]
        last = delta + gamma * lam * (1.0 - dones[t]) * last
        adv[t] = last
    return adv, adv + values


def gaussian_logp(a: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log pi(a) of a diagonal Gaussian, summed over action dims (what ``Normal(...).log_prob(a).sum(-1)``
    gives, without the distribution object's per-call validation cost)."""
    return (-0.5 * ((a - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class FeatureRecorder:
    """The policy's hidden activations over the last ``window`` acting steps, per layer.

    :meth:`PPO.collect` appends its rollout's block to ``buffers`` directly; the forward hooks record a module
    forward instead while ``enabled`` (the tests' reference rollout uses them).
    """

    def __init__(self, activations: list[torch.nn.Module], window: int):
        self.window, self.enabled = window, False
        self.buffers: list[list[torch.Tensor]] = [[] for _ in activations]
        self.handles = [a.register_forward_hook(self._hook(i)) for i, a in enumerate(activations)]

    def _hook(self, i: int):
        def hook(_mod: torch.nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if self.enabled:
                self.buffers[i].append(out.detach().reshape(-1, out.shape[-1]).clone())
        return hook

    def features(self) -> list[torch.Tensor]:
        """Per layer, the last ``window`` acting steps' features, shape ``(<=window, width)``."""
        out = []
        for i, buf in enumerate(self.buffers):
            feats = torch.cat(buf)[-self.window:] if buf else torch.zeros(0)
            self.buffers[i] = [feats]  # compact, keep only the window
            out.append(feats)
        return out


class PPO:
    """PPO on a changing-friction MuJoCo env: ``train_iteration()`` = one rollout + one update.

    Logs (read them from the attributes): ``episodes`` (return, env step at which it ended, friction during
    it), ``iters`` (per rollout: env step, friction of env 0, dormant fraction per policy layer, stable rank
    of the last policy hidden layer, mean |W| per policy layer, losses). State for checkpointing:
    :meth:`state_dict` / :meth:`load_state_dict` (nets, optimizer, methods, env physics, RNGs, logs).
    """

    def __init__(self, cfg: PPOConfig, seed: int, device: str = "cpu"):
        from lopbook.nets import PPOActor, PPOCritic

        cfg.validate()
        self.cfg, self.seed, self.device = cfg, int(seed), torch.device(device)
        self.envs = make_vec_env(cfg.env_id, cfg.num_envs, change_every=cfg.change_every, seed=seed,
                                 friction_mode=cfg.friction_mode, fixed_friction=cfg.fixed_friction)
        self.friction = [find_wrapper(e, ChangingFriction) for e in self.envs.envs]
        obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        act_dim = int(np.prod(self.envs.single_action_space.shape))
        torch.manual_seed(seed)
        self.actor = PPOActor(obs_dim, act_dim, cfg.hidden).to(self.device)
        self.critic = PPOCritic(obs_dim, cfg.hidden).to(self.device)
        params = [*self.actor.parameters(), *self.critic.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                          fused=True if cfg.fused_adam else None)
        self.methods: list[Any] = []
        if cfg.method:  # CBP / ReDo on the policy-mean net and on the value net, after every minibatch
            from lopbook.algos import build_method

            self.methods = [*build_method(dict(cfg.method), self.actor.mean_net, self.optimizer),
                            *build_method(dict(cfg.method), self.critic.value_net, self.optimizer)]
        self.gen = torch.Generator().manual_seed(seed)  # action sampling and minibatch shuffling
        self.recorder = FeatureRecorder(self.actor.mean_net.activations, cfg.metrics_window)
        self.obs, _ = self.envs.reset(seed=seed)
        self.global_step = 0
        self.ep_return = np.zeros(cfg.num_envs)
        self.episodes: dict[str, list[float]] = {"return": [], "step": [], "friction": []}
        self.iters: dict[str, list[Any]] = {"step": [], "friction": [], "dormant": [], "stable_rank": [],
                                            "weight_mag": [], "pg_loss": [], "v_loss": [], "sps": [], "replaced": []}

    # ---- rollout -----------------------------------------------------------------------------------------
    def collect(self) -> dict[str, np.ndarray]:
        """Act for ``num_steps`` transitions; return the batch with GAE advantages and value targets.

        Acting is the hot loop of a CPU run, so it avoids per-step overhead without changing a bit of the result:
        the policy forward calls each layer's ``forward`` directly (no module-hook dispatch; the recorded
        features are written into one preallocated block), the sub-envs are stepped directly with same-step
        autoreset (:func:`~lopbook.rl.envs.step_envs`, what ``SyncVectorEnv`` does without merging every step's
        info dicts), and ``log pi(a)`` is computed for the whole rollout at once from the stored means.
        """
        cfg, n = self.cfg, self.cfg.num_envs
        T = cfg.num_steps // n
        obs = np.zeros((T, n, *self.envs.single_observation_space.shape), dtype=np.float32)
        real_next = np.zeros_like(obs)
        act_shape = (n, *self.envs.single_action_space.shape)
        acts = torch.zeros((T, *act_shape), device=self.device)
        means = torch.zeros_like(acts)
        rew = np.zeros((T, n))
        term, trunc = np.zeros((T, n), dtype=bool), np.zeros((T, n), dtype=bool)
        record_from = max(T - math.ceil(cfg.metrics_window / n), 0)  # the metrics only look at the last window
        layers = list(self.actor.mean_net.layers)
        acts_mods = {id(m): i for i, m in enumerate(self.actor.mean_net.activations)}
        feats = [torch.zeros(T - record_from, n, m.out_features, device=self.device)
                 for m in self.actor.mean_net.hidden_linears]
        env_list = self.envs.envs
        # per-row views: writing through `out=` / copy_ skips tensor indexing, a few microseconds per call
        act_rows, mean_rows, noise = acts.unbind(0), means.unbind(0), torch.empty(act_shape)
        feat_rows = [f.unbind(0) for f in feats]
        with torch.no_grad():
            std = self.actor.log_std.exp()
            for t in range(T):
                obs[t] = self.obs
                x = torch.from_numpy(obs[t]).to(self.device)
                for mod in layers:  # == self.actor(x), minus the hook dispatch (no hook needs acting steps)
                    x = mod.forward(x)
                    i = acts_mods.get(id(mod))
                    if i is not None and t >= record_from:
                        feat_rows[i][t - record_from].copy_(x)
                mean_rows[t].copy_(x)
                torch.randn(act_shape, generator=self.gen, out=noise)
                torch.mul(std, noise.to(self.device), out=act_rows[t]).add_(x)  # = mean + std * noise
                a64 = act_rows[t].cpu().numpy().astype(np.float64)
                ended = step_envs(env_list, a64, self.obs, real_next[t], rew[t], term[t], trunc[t])
                self.global_step += n
                self.ep_return += rew[t]
                for i, info in ended:
                    self.episodes["return"].append(float(self.ep_return[i]))
                    self.episodes["step"].append(self.global_step)
                    self.episodes["friction"].append(info["friction"])  # in effect during the last step
                    self.ep_return[i] = 0.0
            logp = gaussian_logp(acts, means, self.actor.log_std).cpu().numpy()
            for buf, f in zip(self.recorder.buffers, feats, strict=True):
                if len(f):
                    buf.append(f.reshape(-1, f.shape[-1]))
            v = self.critic(torch.as_tensor(obs.reshape(T * n, -1), device=self.device)).cpu().numpy()
            nv = self.critic(torch.as_tensor(real_next.reshape(T * n, -1), device=self.device)).cpu().numpy()
        done = (term | trunc).astype(np.float64)
        cut = term.astype(np.float64) if cfg.bootstrap_truncation else done  # upstream: truncation = termination
        adv, ret = gae(rew, v.reshape(T, n), nv.reshape(T, n), cut, done, cfg.gamma, cfg.gae_lambda)
        flat = lambda x: x.reshape(T * n, *x.shape[2:])  # noqa: E731
        return {"obs": flat(obs), "act": flat(acts.cpu().numpy()), "logp": flat(logp), "adv": flat(adv).astype(np.float32),
                "ret": flat(ret).astype(np.float32)}

    # ---- update ------------------------------------------------------------------------------------------
    def update(self, batch: dict[str, np.ndarray]) -> tuple[float, float]:
        """``update_epochs`` passes of shuffled minibatches; plasticity methods step after each minibatch."""
        cfg = self.cfg
        b = {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}
        b["adv"] = (b["adv"] - b["adv"].mean()) / (b["adv"].std() + 1e-8)  # normalised over the whole batch
        size = b["obs"].shape[0]
        mb = size // cfg.num_minibatches
        pg_sum = v_sum = 0.0
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(size, generator=self.gen).to(self.device)
            for start in range(0, size, mb):
                idx = perm[start:start + mb]
                pg_loss, v_loss = self.losses({k: v[idx] for k, v in b.items()})
                self.optimizer.zero_grad(set_to_none=True)
                (pg_loss + v_loss).backward()  # value loss without coefficient, no entropy bonus (paper)
                self.optimizer.step()
                for m in self.methods:
                    m.step()
                pg_sum, v_sum = pg_sum + pg_loss.item(), v_sum + v_loss.item()
        n_mb = cfg.update_epochs * cfg.num_minibatches
        return pg_sum / n_mb, v_sum / n_mb

    def losses(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipped-surrogate policy loss and value MSE on minibatch ``mb`` (normalised ``adv``)."""
        ratio = (gaussian_logp(mb["act"], self.actor(mb["obs"]), self.actor.log_std) - mb["logp"]).exp()
        clipped = ratio.clamp(1 - self.cfg.clip, 1 + self.cfg.clip)
        pg_loss = -torch.min(ratio * mb["adv"], clipped * mb["adv"]).mean()
        v_loss = (self.critic(mb["obs"]) - mb["ret"]).pow(2).mean()
        return pg_loss, v_loss

    # ---- one iteration + plasticity metrics --------------------------------------------------------------
    def train_iteration(self) -> None:
        t0 = time.perf_counter()
        batch = self.collect()
        pg, vl = self.update(batch)
        self.log_metrics(pg, vl, self.cfg.num_steps / (time.perf_counter() - t0))

    def log_metrics(self, pg_loss: float, v_loss: float, sps: float) -> None:
        """Dormant fraction per policy layer (active in <= 1% of the last ``metrics_window`` acting steps),
        stable rank of the last hidden layer's features over those steps, mean |W| per policy layer."""
        feats = self.recorder.features()
        dormant = [dormant_fraction(f, 0.01, inclusive=True) if f.numel() else np.nan for f in feats]
        it = self.iters
        it["step"].append(self.global_step)
        it["friction"].append(self.friction[0].friction)
        it["dormant"].append(dormant)
        it["stable_rank"].append(stable_rank_99(feats[-1]) if feats[-1].numel() else 0)
        layers = [*self.actor.mean_net.hidden_linears, self.actor.mean_net.head]
        it["weight_mag"].append([float(lin.weight.detach().abs().mean()) for lin in layers])
        it["pg_loss"].append(pg_loss)
        it["v_loss"].append(v_loss)
        it["sps"].append(sps)
        # units re-initialised so far by CBP / ReDo in both nets (0 for the other variants)
        it["replaced"].append(sum(sum(getattr(m, "n_replaced", None) or getattr(m, "n_reset", [0]))
                                  for m in self.methods))

    # ---- checkpointing -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: nets, optimizer, methods, env physics + RNGs, logs."""
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "methods": [m.state_dict() if hasattr(m, "state_dict") else None for m in self.methods],
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "envs": vec_env_state(self.envs), "obs": self.obs.copy(), "global_step": self.global_step,
                "ep_return": self.ep_return.copy(), "episodes": {k: list(v) for k, v in self.episodes.items()},
                "iters": {k: list(v) for k, v in self.iters.items()},
                "features": [torch.cat(b) if b else torch.zeros(0) for b in self.recorder.buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        for m, s in zip(self.methods, state["methods"], strict=True):
            if s is not None:
                m.load_state_dict(s)
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        load_vec_env_state(self.envs, state["envs"])
        self.obs = np.array(state["obs"])
        self.global_step = int(state["global_step"])
        self.ep_return = np.array(state["ep_return"])
        self.episodes = {k: list(v) for k, v in state["episodes"].items()}
        self.iters = {k: list(v) for k, v in state["iters"].items()}
        self.recorder.buffers = [[f] if f.numel() else [] for f in state["features"]]

    def close(self) -> None:
        self.envs.close()


def random_steps_per_second(env: gym.vector.SyncVectorEnv, steps: int, seed: int = 0) -> float:
    """Raw env throughput with random actions on ``env``'s sub-envs (resets included), stepped the way
    :meth:`PPO.collect` steps them (:func:`~lopbook.rl.envs.step_envs`): the benchmark's baseline."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    n = env.num_envs
    obs = np.zeros((n, *env.single_observation_space.shape))
    nxt, rew, term, trunc = np.zeros_like(obs), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
    t0 = time.perf_counter()
    for _ in range(steps // n):
        step_envs(env.envs, env.action_space.sample().astype(np.float64), obs, nxt, rew, term, trunc)
    return steps / (time.perf_counter() - t0)
