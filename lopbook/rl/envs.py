"""MuJoCo environments whose friction changes over time (the paper's *Slippery Ant*), for Gymnasium 1.x.

Upstream (``lop/envs/slippery_ant.py``, gym 0.23 + mujoco-py) rewrote the default-geom friction in ``ant.xml``
and rebuilt the env at the first episode end after every 2M steps. Here the same change is made at run time:
``model.geom_friction[:, 0]`` is writable and takes effect on the next ``mj_step``. MuJoCo combines two geoms'
friction by the element-wise **maximum** (same priority), so only changing the floor would leave the contact
friction at the legs' 1.0; we therefore set the sliding friction of **all** geoms, which is what the upstream
XML edit of the *default* geom did for Ant.

Fixed relative to upstream (see the book's differences appendix): the friction logged is the one actually in effect
(upstream always logged 1.0), and the env is seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

#: Environments with a changing-friction variant, and the keyword arguments we pass to ``gym.make``.
#: Ant drops the contact forces from the observation (27 dims): under mujoco-py 2.x, which the paper used,
#: Ant-v3's contact-force entries were all zeros, so position + velocity is the closest match.
ENV_KWARGS: dict[str, dict[str, Any]] = {
    "Ant-v5": {"include_cfrc_ext_in_observation": False},
    "Hopper-v5": {},
    "Walker2d-v5": {},
}

FRICTION_RANGE = (0.02, 2.0)


def draw_friction(rng: np.random.Generator, low: float = FRICTION_RANGE[0], high: float = FRICTION_RANGE[1]) -> float:
    """One friction coefficient, log-uniform on ``[low, high]`` (upstream's frictions file looks log-uniform)."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


class ChangingFriction(gym.Wrapper):
    """Set every geom's sliding friction to a new log-uniform value at the first episode end after
    ``change_every`` steps since the last change.

    The first friction is drawn at construction (upstream starts seed ``s`` at ``frictions[s][0]``).
    ``mode="set"`` gives all geoms the same friction ``f`` (Ant: identical to upstream's XML edit);
    ``mode="scale"`` multiplies each geom's original friction by ``f`` (keeps e.g. Hopper's grippy foot).
    ``change_every=0`` keeps the first friction forever. ``info["friction"]`` is the friction in effect
    during the step just taken; ``info["friction_changed"]`` is true on the step after which it changed.
    """

    def __init__(self, env: gym.Env, change_every: int, seed: int, low: float = FRICTION_RANGE[0],
                 high: float = FRICTION_RANGE[1], mode: str = "set", initial: float | None = None):
        super().__init__(env)
        if mode not in ("set", "scale"):
            raise ValueError(f"friction mode must be 'set' or 'scale', got {mode!r}")
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high for the friction range, got [{low}, {high}]")
        if change_every < 0:
            raise ValueError(f"change_every must be >= 0 (0 = never), got {change_every}")
        model = env.unwrapped.model  # type: ignore[attr-defined]
        self.original_friction = model.geom_friction.copy()  # reset() does not restore it; keep our own copy
        self.change_every, self.low, self.high, self.mode = int(change_every), low, high, mode
        self.rng = np.random.default_rng(seed)
        self.steps_since_change = 0
        self.n_changes = 0
        self.friction = float(initial) if initial is not None else draw_friction(self.rng, low, high)
        self._apply()

    def _apply(self) -> None:
        gf = self.env.unwrapped.model.geom_friction  # type: ignore[attr-defined]
        base = self.original_friction[:, 0]
        gf[:, 0] = base * 0 + self.friction if self.mode == "set" else base * self.friction

    def set_friction(self, f: float) -> None:
        """Put friction ``f`` into effect now (used by tests and demos)."""
        self.friction = float(f)
        self._apply()

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps_since_change += 1
        info = dict(info)
        info["friction"] = self.friction
        info["friction_changed"] = False
        if (terminated or truncated) and self.change_every and self.steps_since_change > self.change_every:
            self.friction = draw_friction(self.rng, self.low, self.high)
            self._apply()
            self.steps_since_change = 0
            self.n_changes += 1
            info["friction_changed"] = True
        return obs, reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "friction": self.friction,
                "steps_since_change": self.steps_since_change, "n_changes": self.n_changes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.friction = float(state["friction"])
        self.steps_since_change = int(state["steps_since_change"])
        self.n_changes = int(state["n_changes"])
        self._apply()


def find_wrapper(env: gym.Env, cls: type) -> Any:
    """The first wrapper of type ``cls`` in ``env``'s wrapper chain (``None`` if absent)."""
    while env is not None:
        if isinstance(env, cls):
            return env
        env = getattr(env, "env", None)
    return None


def make_env(env_id: str = "Ant-v5", *, change_every: int = 0, friction_seed: int = 0,
             friction_mode: str = "set", render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """One env with changing friction. ``change_every`` counts this env's steps; 0 = fixed (random) friction.

    Pass ``friction_mode=None``-like behaviour by using :func:`gym.make` directly if no friction wrapper is wanted.
    """
    if env_id not in ENV_KWARGS:
        raise ValueError(f"unknown env {env_id!r}; choose one of {sorted(ENV_KWARGS)}")
    env = gym.make(env_id, render_mode=render_mode, **{**ENV_KWARGS[env_id], **kwargs})
    return ChangingFriction(env, change_every=change_every, seed=friction_seed, mode=friction_mode)


def make_vec_env(env_id: str, num_envs: int, *, change_every: int, seed: int,
                 friction_mode: str = "set", fixed_friction: float | None = None) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies in a :class:`~gymnasium.vector.SyncVectorEnv` with same-step autoreset.

    ``change_every`` is in *total* env steps: each copy counts its own steps against
    ``change_every // num_envs``. All copies draw from the same friction sequence (same RNG seed), so the
    world's friction changes for every copy at about the same time (each at its own next episode end).
    ``fixed_friction`` (e.g. 1.0) gives plain, stationary Ant. Call ``reset(seed=seed)`` to seed the physics.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    per_env = change_every // num_envs if change_every else 0

    def thunk() -> Callable[[], gym.Env]:
        def _make() -> gym.Env:
            env = make_env(env_id, change_every=0 if fixed_friction is not None else per_env,
                           friction_seed=seed, friction_mode=friction_mode)
            if fixed_friction is not None:
                find_wrapper(env, ChangingFriction).set_friction(fixed_friction)
            return env
        return _make

    return gym.vector.SyncVectorEnv([thunk() for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def step_envs(envs: list[gym.Env], actions: np.ndarray, obs_out: np.ndarray, next_out: np.ndarray,
              rew_out: np.ndarray, term_out: np.ndarray, trunc_out: np.ndarray) -> list[tuple[int, dict[str, Any]]]:
    """Step each env once with same-step autoreset, writing into the given rows (no allocation per env).

    What ``SyncVectorEnv(autoreset_mode=SAME_STEP).step`` does for a training loop, minus merging every step's
    info dicts into arrays (most of its cost next to a MuJoCo step): ``next_out[i]`` is the observation the
    step reached (the final one if the episode ended), ``obs_out[i]`` the one to act on next (after the reset).
    Returns ``(i, info)`` of the envs whose episode ended in this step.
    """
    ended = []
    for i, env in enumerate(envs):
        o, r, te, tr, info = env.step(actions[i])
        rew_out[i], term_out[i], trunc_out[i] = r, te, tr
        next_out[i] = o
        if te or tr:
            ended.append((i, info))
            o, _ = env.reset()
        obs_out[i] = o
    return ended


# --- exact save/restore of a running vector env (for checkpoint/resume mid-episode) ---

def _physics_state(env: gym.Env) -> bytes:
    # The whole MjData, not just mj_getState's integration state: the next step reads derived fields
    # (e.g. Ant's torso xpos, which after mj_step lags the integrated qpos) that mj_forward would recompute.
    # MjData's own serialisation (what its pickle wraps), so a checkpoint holds bytes and never a pickle.
    return env.unwrapped.data.__getstate__()


def _physics_from_bytes(blob: bytes) -> mujoco.MjData:
    data = mujoco.MjData.__new__(mujoco.MjData)
    data.__setstate__(blob)
    return data


def vec_env_state(vec: gym.vector.SyncVectorEnv) -> list[dict[str, Any]]:
    """Everything needed to continue each copy bit-for-bit: physics, time limit, RNGs, friction."""
    states = []
    for env in vec.envs:
        tl = find_wrapper(env, gym.wrappers.TimeLimit)
        states.append({"physics": _physics_state(env),
                       "elapsed": tl._elapsed_steps,
                       "np_random": env.unwrapped.np_random.bit_generator.state,
                       "friction": find_wrapper(env, ChangingFriction).state_dict()})
    return states


def load_vec_env_state(vec: gym.vector.SyncVectorEnv, states: list[dict[str, Any]]) -> None:
    """Inverse of :func:`vec_env_state` (the vector env must have been reset once)."""
    if len(states) != len(vec.envs):
        raise ValueError(f"state has {len(states)} envs, the vector env {len(vec.envs)}")
    for env, st in zip(vec.envs, states, strict=True):
        u = env.unwrapped
        mujoco.mj_copyData(u.data, u.model, _physics_from_bytes(st["physics"]))
        find_wrapper(env, gym.wrappers.TimeLimit)._elapsed_steps = st["elapsed"]
        u.np_random.bit_generator.state = st["np_random"]
        find_wrapper(env, ChangingFriction).load_state_dict(st["friction"])


def render_frame(env_id: str = "Ant-v5", friction: float = 1.0, steps: int = 20, seed: int = 0,
                 width: int = 480, height: int = 360) -> np.ndarray:
    """One ``rgb_array`` frame after ``steps`` random actions (set ``MUJOCO_GL=egl`` on a headless machine)."""
    env = make_env(env_id, render_mode="rgb_array", width=width, height=height)
    try:
        find_wrapper(env, ChangingFriction).set_friction(friction)
        env.reset(seed=seed)
        env.action_space.seed(seed)
        for _ in range(steps):
            env.step(env.action_space.sample())
        return np.asarray(env.render())
    finally:
        env.close()


def save_friction_frames(path: str, frictions: tuple[float, ...] = (0.02, 2.0), steps: int = 60, seed: int = 0,
                         width: int = 320, height: int = 240) -> np.ndarray:
    """Render Ant after the same ``steps`` random actions under each friction, side by side, and save a PNG.

    The book's setup figure (``book/chapters/images/slippery_ant_frames.png``) is made with this. Needs an
    offscreen OpenGL: ``MUJOCO_GL=egl`` (set it before MuJoCo is imported).
    """
    import imageio.v3 as iio

    frames = [render_frame("Ant-v5", f, steps, seed, width, height) for f in frictions]
    gap = np.full((height, 8, 3), 255, np.uint8)
    row = np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)
    iio.imwrite(path, row)
    return row
