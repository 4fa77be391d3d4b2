"""Changing-friction MuJoCo envs, GAE, PPO and the slippery-Ant experiment (quick scale: a few thousand steps)."""

from __future__ import annotations

import dataclasses
import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats

from lopbook.checkpoint import Checkpoint
from lopbook.rl.envs import ChangingFriction, draw_friction, find_wrapper, make_env, make_vec_env
from lopbook.rl.ppo import PPO, config_for, gae, gaussian_logp

torch.set_num_threads(1)
TINY = {"num_envs": 2, "num_steps": 256, "num_minibatches": 4, "update_epochs": 2}


def x_displacement(friction: float, steps: int = 150, seed: int = 0) -> float:
    env = make_env("Ant-v5")
    find_wrapper(env, ChangingFriction).set_friction(friction)
    env.reset(seed=seed)
    x0 = env.unwrapped.data.qpos[0]
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 8))
    for a in actions:
        env.step(a)
    return float(env.unwrapped.data.qpos[0] - x0)


def test_friction_changes_the_simulation():
    # same seed, same actions: only the friction differs
    dx = {f: x_displacement(f) for f in (0.02, 1.0)}
    assert x_displacement(1.0) == dx[1.0]  # deterministic
    assert abs(dx[0.02] - dx[1.0]) > 0.1, dx


def test_friction_applied_to_all_geoms_and_logged():
    env = make_env("Ant-v5", change_every=50, friction_seed=3)
    w = find_wrapper(env, ChangingFriction)
    gf = env.unwrapped.model.geom_friction
    np.testing.assert_array_equal(w.original_friction[:, 0], 1.0)  # Ant: every geom starts at 1
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen, steps = [w.friction], 0
    while w.n_changes < 3:
        in_effect = gf[:, 0].copy()
        assert np.all(in_effect == w.friction)  # all 14 geoms, not just the floor
        _, _, term, trunc, info = env.step(rng.uniform(-1, 1, 8))
        steps += 1
        assert info["friction"] == in_effect[0]  # the friction the step actually ran with
        if info["friction_changed"]:
            assert term or trunc
            assert np.all(gf[:, 0] == w.friction) and w.friction != info["friction"]
            seen.append(w.friction)
        if term or trunc:
            env.reset()
    # the frictions follow the seeded log-uniform sequence; other columns (torsional, rolling) untouched
    ref = np.random.default_rng(3)
    assert seen == [draw_friction(ref) for _ in range(4)]
    np.testing.assert_array_equal(gf[:, 1:], w.original_friction[:, 1:])
    assert steps > 3 * 50


def test_scale_mode_keeps_relative_friction():
    env = make_env("Hopper-v5", friction_mode="scale")
    w = find_wrapper(env, ChangingFriction)
    w.set_friction(0.5)
    np.testing.assert_allclose(env.unwrapped.model.geom_friction[:, 0], 0.5 * w.original_friction[:, 0])
    with pytest.raises(ValueError, match="mode"):
        make_env("Ant-v5", friction_mode="oops")


def test_log_uniform_draws():
    rng = np.random.default_rng(0)
    f = np.array([draw_friction(rng) for _ in range(4000)])
    assert f.min() >= 0.02 and f.max() <= 2.0
    u = (np.log(f) - np.log(0.02)) / (np.log(2.0) - np.log(0.02))
    assert stats.kstest(u, "uniform").pvalue > 0.01
    assert abs(np.median(f) - 0.2) < 0.02  # geometric mean of 0.02 and 2


def test_gae_by_hand():
    g, lam = 0.9, 0.5
    r = np.array([[1.0], [2.0], [3.0], [4.0]])
    v = np.array([[0.5], [0.4], [0.3], [0.2]])
    # step 1 is truncated (bootstrap from V(final obs) = 0.9); step 2 terminates; step 3 runs on (V(s') = 0.7)
    nv = np.array([[0.4], [0.9], [0.8], [0.7]])
    term = np.array([[0.0], [0.0], [1.0], [0.0]])
    done = np.array([[0.0], [1.0], [1.0], [0.0]])
    adv, ret = gae(r, v, nv, term, done, g, lam)
    a3 = 4.0 + 0.9 * 0.7 - 0.2
    a2 = 3.0 - 0.3                           # terminated: no bootstrap, recursion cut
    a1 = 2.0 + 0.9 * 0.9 - 0.4               # truncated: bootstrap V(final obs), recursion cut
    a0 = (1.0 + 0.9 * 0.4 - 0.5) + 0.9 * 0.5 * a1
    np.testing.assert_allclose(adv[:, 0], [a0, a1, a2, a3])
    np.testing.assert_allclose(ret, adv + v)
    # upstream's behaviour (truncation = termination) differs exactly at the truncated step
    adv_up, _ = gae(r, v, nv, done, done, g, lam)
    assert adv_up[1, 0] == pytest.approx(2.0 - 0.4) and adv_up[2:, 0] == pytest.approx(adv[2:, 0])


def test_seeded_runs_repeat():
    def run(seed: int):
        agent = PPO(config_for("cbp", change_every=200, **TINY), seed=seed)
        agent.train_iteration()
        agent.close()
        return agent.episodes["return"], agent.actor.mean_net.head.weight.detach().clone()

    (r1, w1), (r2, w2), (_, w3) = run(0), run(0), run(1)
    assert r1 == r2 and torch.equal(w1, w2)
    assert not torch.equal(w1, w3)


def test_update_improves_surrogate_on_fixed_batch():
    agent = PPO(config_for("bp", change_every=0, **TINY), seed=0)
    batch = agent.collect()
    b = {k: torch.as_tensor(v) for k, v in batch.items()}
    b["adv"] = (b["adv"] - b["adv"].mean()) / (b["adv"].std() + 1e-8)
    with torch.no_grad():
        pg0, v0 = agent.losses(b)
    agent.update(batch)
    with torch.no_grad():
        pg1, v1 = agent.losses(b)
    agent.close()
    assert pg0.item() == pytest.approx(0.0, abs=1e-5)  # ratio 1 at the start, normalised advantages
    assert pg1.item() < pg0.item() - 1e-3
    assert v1.item() < v0.item()


def test_ppo_resume_is_exact():
    cfg = config_for("cbp", change_every=300, **TINY)
    cfg.method = {**cfg.method, "maturity_threshold": 2, "replacement_rate": 0.01}  # replacements do happen
    a = PPO(cfg, seed=1)
    for _ in range(2):
        a.train_iteration()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    for _ in range(2):
        a.train_iteration()
    buf.seek(0)
    b = PPO(cfg, seed=1)
    b.load_state_dict(torch.load(buf, weights_only=False))
    for _ in range(2):
        b.train_iteration()
    assert sum(a.methods[0].n_replaced) > 0
    assert a.episodes == b.episodes and a.iters["friction"] == b.iters["friction"]
    for x, y in zip(a.actor.state_dict().values(), b.actor.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    a.close()
    b.close()


def test_experiment_checkpoint_resume_equals_uninterrupted(tmp_path, monkeypatch):
    from lopbook import experiments
    from lopbook.experiments import slippery_ant as sa

    exp = experiments.get("slippery_ant")
    cfg = exp.make_config({"methods": ("bp", "redo"), "total_steps": 768, "change_every": 300, "num_steps": 256,
                           "num_minibatches": 4, "update_epochs": 2, "num_envs": 2, "bin_steps": 256})
    full = sa.run(cfg, seeds=[0], device="cpu", checkpoint=Checkpoint(None), progress=False).arrays

    ckpt = Checkpoint(tmp_path / "c.ckpt", key="k", every_s=0.0)
    calls = {"n": 0}
    original = PPO.train_iteration

    def crashing(self):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-way through the second run
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(PPO, "train_iteration", crashing)
    with pytest.raises(KeyboardInterrupt):
        sa.run(cfg, seeds=[0], device="cpu", checkpoint=ckpt, progress=False)
    monkeypatch.setattr(PPO, "train_iteration", original)
    resumed = sa.run(cfg, seeds=[0], device="cpu", checkpoint=ckpt, progress=False).arrays
    assert set(full) == set(resumed)
    for k in full:
        if k != "sps":  # wall-clock speed
            np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)
    assert full["returns_binned"].shape == (2, 1, 3) and np.isfinite(full["ep_return"]).all()


def test_vec_env_validates():
    with pytest.raises(ValueError, match="num_envs"):
        make_vec_env("Ant-v5", 0, change_every=10, seed=0)
    with pytest.raises(ValueError, match="unknown env"):
        make_env("Humanoid-v5")
    with pytest.raises(ValueError, match="multiple of num_envs"):
        config_for("bp", num_envs=3)


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5"])
def test_other_envs_train_with_changing_friction(env_id):
    agent = PPO(config_for("redo", env_id=env_id, change_every=100, **TINY), seed=0)
    agent.train_iteration()
    gf = agent.envs.envs[0].unwrapped.model.geom_friction[:, 0]
    assert np.all(gf == agent.friction[0].friction)
    assert agent.episodes["return"] and all(0.02 <= f <= 2.0 for f in agent.episodes["friction"])
    assert np.isfinite(agent.iters["pg_loss"][-1])
    agent.close()


def reference_collect(agent: PPO) -> dict[str, np.ndarray]:
    """The straightforward rollout the fast :meth:`PPO.collect` must reproduce bit for bit: the actor module's
    forward (hooks record the features), ``SyncVectorEnv.step`` with its info dicts, per-step ``log pi(a)``."""
    cfg, n = agent.cfg, agent.cfg.num_envs
    T = cfg.num_steps // n
    obs = np.zeros((T, n, 27), np.float32)
    real_next, acts = np.zeros_like(obs), np.zeros((T, n, 8), np.float32)
    logp, rew, term, done = np.zeros((T, n), np.float32), np.zeros((T, n)), np.zeros((T, n)), np.zeros((T, n))
    record_from = T - -(-cfg.metrics_window // n)
    for t in range(T):
        agent.recorder.enabled = t >= record_from
        obs[t] = agent.obs
        with torch.no_grad():
            mean = agent.actor(torch.as_tensor(agent.obs, dtype=torch.float32))
            a = mean + agent.actor.log_std.exp() * torch.randn(mean.shape, generator=agent.gen)
            logp[t] = gaussian_logp(a, mean, agent.actor.log_std).numpy()
        acts[t] = a.numpy()
        fr = [w.friction for w in agent.friction]
        next_obs, r, te, tr, info = agent.envs.step(acts[t].astype(np.float64))
        agent.global_step += n
        rew[t], term[t], done[t] = r, te, te | tr
        real_next[t] = next_obs
        agent.ep_return += r
        for i in np.flatnonzero(te | tr):
            real_next[t, i] = info["final_obs"][i]
            agent.episodes["return"].append(float(agent.ep_return[i]))
            agent.episodes["step"].append(agent.global_step)
            agent.episodes["friction"].append(fr[i])
            agent.ep_return[i] = 0.0
        agent.obs = next_obs
    agent.recorder.enabled = False
    with torch.no_grad():
        v = agent.critic(torch.as_tensor(obs.reshape(T * n, -1))).numpy()
        nv = agent.critic(torch.as_tensor(real_next.reshape(T * n, -1))).numpy()
    adv, ret = gae(rew, v.reshape(T, n), nv.reshape(T, n), term, done, cfg.gamma, cfg.gae_lambda)
    return {"obs": obs.reshape(T * n, -1), "act": acts.reshape(T * n, -1), "logp": logp.reshape(-1),
            "adv": adv.reshape(-1).astype(np.float32), "ret": ret.reshape(-1).astype(np.float32)}


@pytest.mark.parametrize("num_envs", [1, 3])
def test_fast_rollout_equals_reference(num_envs):
    # a 60-step time limit: many episode ends (resets, final observations) and friction changes
    cfg = config_for("cbp", change_every=150, num_envs=num_envs, num_steps=300, num_minibatches=3,
                     update_epochs=1, metrics_window=90)
    fast, ref = PPO(cfg, seed=4), PPO(cfg, seed=4)
    for agent in (fast, ref):
        for e in agent.envs.envs:
            find_wrapper(e, gym.wrappers.TimeLimit)._max_episode_steps = 60
    for _ in range(2):
        b_fast, b_ref = fast.collect(), reference_collect(ref)
        for k in b_ref:
            np.testing.assert_array_equal(b_fast[k], b_ref[k], err_msg=k)
        assert fast.episodes == ref.episodes and len(fast.episodes["return"]) >= 2 * num_envs
        for x, y in zip(fast.recorder.features(), ref.recorder.features(), strict=True):
            assert x.shape == (90, 256) and torch.equal(x, y)
        for agent, b in ((fast, b_fast), (ref, b_ref)):
            agent.update(b)
        assert torch.equal(fast.actor.mean_net.head.weight, ref.actor.mean_net.head.weight)
    assert np.array_equal(fast.obs, ref.obs) and fast.friction[0].n_changes >= 1
    fast.close()
    ref.close()


def test_stationary_run_resumes_bit_exactly_from_checkpoint_outside_work_tree(tmp_path, monkeypatch):
    """A long run writes ``<out>.ckpt`` next to ``--out`` (here a folder outside the work tree), is killed in
    the middle of its second (method, seed) run, and the same call resumes it to exactly the uninterrupted result."""
    from pathlib import Path

    from lopbook import checkpoint as ckpt_mod
    from lopbook.experiments import run_experiment

    assert not tmp_path.resolve().is_relative_to(Path(__file__).resolve().parents[1])
    over = {"methods": ("bp", "cbp"), "fixed_friction": 1.0, "change_every": 0, "total_steps": 768,
            "num_steps": 256, "num_minibatches": 4, "update_epochs": 2, "num_envs": 2, "bin_steps": 256,
            "cbp_maturity": 4, "cbp_replacement_rate": 0.01}
    full = run_experiment("slippery_ant", "quick", overrides=over, progress=False)

    init = ckpt_mod.Checkpoint.__init__
    monkeypatch.setattr(ckpt_mod.Checkpoint, "__init__",  # write every iteration, not once a minute
                        lambda self, path, key=None, every_s=60.0: init(self, path, key, 0.0))
    original, calls = PPO.train_iteration, {"n": 0}

    def killed(self):
        calls["n"] += 1
        if calls["n"] == 5:  # the second iteration of the second run
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(PPO, "train_iteration", killed)
    out = tmp_path / "cache" / "ant.npz"
    out.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_experiment("slippery_ant", "quick", overrides=over, out=out, progress=False)
    assert Path(str(out) + ".ckpt").exists() and not out.exists()
    monkeypatch.setattr(PPO, "train_iteration", original)
    resumed = run_experiment("slippery_ant", "quick", overrides=over, out=out, progress=False)
    assert resumed.meta["resumed_from_checkpoint"] and out.exists()
    assert set(full.arrays) == set(resumed.arrays)
    for k, v in full.arrays.items():
        if k != "sps":  # wall-clock speed
            np.testing.assert_array_equal(v, resumed.arrays[k], err_msg=k)
    assert np.all(full.arrays["friction"] == 1.0) and full.arrays["replaced"][1, 0, -1] > 0


@pytest.mark.parametrize("variant", ["bp", "cbp"])
def test_fused_adam_matches_default_up_to_rounding(variant):
    # (without replacements: which near-tied unit CBP replaces can flip on a rounding difference)
    cfg = config_for(variant, change_every=0, **TINY)
    plain, fused = PPO(cfg, seed=0), PPO(dataclasses.replace(cfg, fused_adam=True), seed=0)
    assert fused.optimizer.defaults["fused"] and not plain.optimizer.defaults["fused"]
    for agent in (plain, fused):  # same rollout (acting does not touch Adam), then 3 updates on it
        batch = agent.collect()
        for _ in range(3):
            agent.update(batch)
    pairs = list(zip([*plain.actor.parameters(), *plain.critic.parameters()],
                     [*fused.actor.parameters(), *fused.critic.parameters()], strict=True))
    for x, y in pairs:
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(x, y) for x, y in pairs)  # really another kernel, not the same arithmetic
    plain.close()
    fused.close()


def test_full_scale_appendix_states_the_cached_stationary_ant_cost():
    """The appendix's cost sentence for chapter 5's 10M-step runs matches data/slippery_ant/ant_cpu.npz."""
    from pathlib import Path

    from lopbook.results import load_result

    root = Path(__file__).resolve().parent.parent
    res = load_result(root / "data" / "slippery_ant" / "ant_cpu.npz")
    text = " ".join((root / "book" / "appendix" / "full_scale.md").read_text().split())
    hours, median_sps = res.meta["wall_time_s"] / 3600, float(np.median(res["sps"]))
    assert f"took {hours:.0f} h of wall time in all" in text
    assert f"a median of ≈ {round(median_sps, -1):.0f} steps/s per PPO iteration" in text
    assert f"≈ {20e6 / median_sps / 3600:.0f} h per 20M on a free core" in text
