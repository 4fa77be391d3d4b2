"""PPO training throughput vs raw env stepping, on the same vector env and machine, in one run.

Prints env steps/s of (a) random actions on the vector env (resets included) and (b) the whole PPO loop
(acting, GAE, 10 epochs x 16 minibatches, the method's step(), metrics), and their ratio. Goal: training
costs less than 2x the env alone on a CPU.

    .venv/bin/python benchmarks/bench_ppo.py [--variant cbp] [--num-envs 4] [--iters 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lopbook.rl.ppo import PPO, config_for, random_steps_per_second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="cbp", help="bp, ns, l2, cbp or redo")
    ap.add_argument("--env", default="Ant-v5")
    ap.add_argument("--num-envs", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--iters", type=int, default=3, help="PPO iterations (2048 steps each) to time")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'env':<10} {'variant':<8} {'envs':>4} {'raw env sps':>12} {'PPO sps':>9} {'ratio':>6}  "
          f"(update share); medians over iterations")
    for n in args.num_envs:
        agent = PPO(config_for(args.variant, env_id=args.env, num_envs=n, change_every=0), seed=0)
        raw_env = PPO(config_for("bp", env_id=args.env, num_envs=n, change_every=0), seed=1).envs
        agent.train_iteration()  # warm-up (allocations, first-call overheads)
        # Interleave: one PPO iteration, then as many random-action steps, repeated. The machine is shared,
        # so both sides of each ratio see about the same load; report the median.
        ratios, ppo_sps, raw_sps, share = [], [], [], []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            batch = agent.collect()
            t1 = time.perf_counter()
            pg, vl = agent.update(batch)
            agent.log_metrics(pg, vl, 0.0)
            t2 = time.perf_counter()
            ppo_sps.append(agent.cfg.num_steps / (t2 - t0))
            share.append((t2 - t1) / (t2 - t0))
            raw_sps.append(random_steps_per_second(raw_env, agent.cfg.num_steps))
            ratios.append(raw_sps[-1] / ppo_sps[-1])
        agent.close()
        raw_env.close()
        print(f"{args.env:<10} {args.variant:<8} {n:>4} {np.median(raw_sps):>12.0f} {np.median(ppo_sps):>9.0f} "
              f"{np.median(ratios):>5.2f}x  ({np.median(share):.0%})")

if __name__ == "__main__":
    main()
