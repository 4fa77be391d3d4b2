"""Reinforcement learning for the slippery-Ant chapter.

- :mod:`lopbook.rl.envs`: Gymnasium 1.x MuJoCo envs (Ant-v5, Hopper-v5, Walker2d-v5) whose friction changes
  (:class:`~lopbook.rl.envs.ChangingFriction`), vector envs, exact save/restore, frame rendering.
- :mod:`lopbook.rl.ppo`: a readable PPO with the paper's hyperparameters and variants
  (:data:`~lopbook.rl.ppo.VARIANTS`: bp, ns, l2, cbp, redo); plasticity methods from :mod:`lopbook.algos`.
"""
