"""PPO training throughput vs raw env stepping, on the same env configuration and machine, interleaved.

Per (variant, number of envs), each round times (a) one whole PPO iteration (acting, GAE, 10 epochs x 16
minibatches, the method's step(), metrics) and (b) as many random-action steps on an identical set of envs
(resets included, stepped the way PPO steps them), in alternating order (``benchmarks/_timing.py``). The ratio is
PPO wall time per env step / raw wall time per env step, from each side's median over the rounds (and the same
ratio of process CPU time, which a loaded machine disturbs less). Goal (issue
#14): <= 1.3x for standard PPO and <= 1.4x for PPO+CBP with one env. "acting only" is the ratio without the update
(``ratio x (1 - update share)``): what the loop would cost if the paper's 10 epochs of minibatch updates were free.
"GEMM floor" is the ratio the loop could not beat even if acting cost nothing beyond the env and the update were
nothing but its matrix products: each round also times, on their own, the forward, input-gradient and
weight-gradient products of every Linear layer of both nets for all 160 minibatches of 128 (the same shapes, on this
machine's BLAS), and the floor is (raw + those products) / raw.

The env is stationary Ant (friction fixed at 1). CBP runs in its steady state: its maturity is lowered from the
paper's 10,000 updates (128k env steps, more than a benchmark runs) to ``--cbp-maturity`` (default 100), so units
are replaced and the replaced entries' per-entry Adam steps are paid for during the timed rounds, as in a long run.
The machine's load average is printed with the numbers: on a shared machine, both sides slow down together.

    .venv/bin/python benchmarks/bench_ppo.py [--variants bp cbp] [--num-envs 1 4] [--rounds 7] [--fused-adam]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from _timing import interleaved, median

from lopbook.rl.envs import make_vec_env
from lopbook.rl.ppo import PPO, config_for, random_steps_per_second


def matmul_side(agent: PPO, cfg) -> Callable[[], float]:
    """Time the update's matrix products alone (seconds per env step): a lower bound on the update's cost."""
    mb = cfg.num_steps // cfg.num_minibatches
    ops = []
    for net in (agent.actor.mean_net, agent.critic.value_net):
        linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        ops += [(torch.randn(mb, m.in_features), m.weight.detach().clone(), torch.randn(mb, m.out_features), i > 0)
                for i, m in enumerate(linears)]
    n = cfg.update_epochs * cfg.num_minibatches

    def side() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            for x, w, g, needs_input_grad in ops:
                torch.mm(x, w.T)           # forward
                torch.mm(g.T, x)           # weight gradient
                if needs_input_grad:       # the first layer's input (the observation) needs no gradient
                    torch.mm(g, w)
        return (time.perf_counter() - t0) / cfg.num_steps

    return side


def bench(variant: str, env_id: str, n: int, rounds: int, cbp_maturity: int, fused_adam: bool) -> dict[str, float]:
    cfg = config_for(variant, env_id=env_id, num_envs=n, change_every=0, fixed_friction=1.0, fused_adam=fused_adam)
    if cfg.method and "maturity_threshold" in cfg.method:
        cfg.method = {**cfg.method, "maturity_threshold": cbp_maturity}
    agent = PPO(cfg, seed=0)
    raw_env = make_vec_env(env_id, n, change_every=0, seed=1, fixed_friction=1.0)
    steps = cfg.num_steps
    shares: list[float] = []
    cpu: dict[str, list[float]] = {"ppo": [], "raw": []}  # process CPU seconds per step: less load-sensitive

    def ppo() -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        batch = agent.collect()
        t1 = time.perf_counter()
        pg, vl = agent.update(batch)
        agent.log_metrics(pg, vl, 0.0)
        t2 = time.perf_counter()
        cpu["ppo"].append((time.process_time() - c0) / steps)
        shares.append((t2 - t1) / (t2 - t0))
        return (t2 - t0) / steps

    def raw() -> float:
        c0 = time.process_time()
        sps = random_steps_per_second(raw_env, steps)
        cpu["raw"].append((time.process_time() - c0) / steps)
        return 1.0 / sps

    for _ in range(2 if cfg.method else 1):  # warm-up; with CBP, until units are mature and get replaced
        agent.train_iteration()
    times = interleaved({"ppo": ppo, "raw": raw, "matmul": matmul_side(agent, cfg)}, rounds)
    replaced = agent.iters["replaced"][-1]
    agent.close()
    raw_env.close()
    return {"raw_sps": 1 / median(times["raw"]), "ppo_sps": 1 / median(times["ppo"]),
            "ratio": median(times["ppo"]) / median(times["raw"]), "cpu_ratio": median(cpu["ppo"]) / median(cpu["raw"]),
            "share": float(np.median(shares)), "floor": 1 + median(times["matmul"]) / median(times["raw"]),
            "replaced": replaced}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["bp", "cbp"], help="of bp, ns, l2, cbp, redo")
    ap.add_argument("--env", default="Ant-v5")
    ap.add_argument("--num-envs", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (one PPO iteration each)")
    ap.add_argument("--cbp-maturity", type=int, default=100, help="CBP maturity in updates (paper: 10,000)")
    ap.add_argument("--fused-adam", action="store_true", help="torch's fused Adam (equal up to float rounding)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("fused Adam" if args.fused_adam else "torch's default Adam (bit-identical to the reference loop)")
    print(f"{'env':<8} {'variant':<7} {'envs':>4} {'raw env sps':>11} {'PPO sps':>8} {'ratio':>6} {'(CPU s)':>7}  "
          f"update share  acting only  GEMM floor  units replaced  load avg (1 min) before/after; medians over {args.rounds} "
          "rounds")
    for n in args.num_envs:
        for variant in args.variants:
            load0 = os.getloadavg()[0]
            r = bench(variant, args.env, n, args.rounds, args.cbp_maturity, args.fused_adam)
            print(f"{args.env:<8} {variant:<7} {n:>4} {r['raw_sps']:>11.0f} {r['ppo_sps']:>8.0f} "
                  f"{r['ratio']:>5.2f}x {r['cpu_ratio']:>6.2f}x  {r['share']:>11.0%}  "
                  f"{r['ratio'] * (1 - r['share']):>10.2f}x  {r['floor']:>9.2f}x  {r['replaced']:>14}  "
                  f"{load0:.1f}/{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
