"""Training many small MLP runs (seeds × methods) at once in stacked tensors, on a CPU or a GPU.

- :class:`StackedMLP`: ``R`` ReLU MLPs as ``(R, fan_in, fan_out)`` weights; batched forward and a hand-written,
  fused backward + SGD step.
- :class:`StackedCBP`: continual backprop on the hidden layers, per run (ρ, m, η per run; the same decisions
  as :class:`lopbook.algos.ContinualBackprop`).
- :func:`probe_metrics`: dead/dormant units, effective and stable rank, mean |w| per run (via
  :mod:`lopbook.metrics`).
- :class:`StackedTrainer`: online classification over per-seed task streams with BP, L2, S&P and CBP runs
  side by side, checkpointable and resumable bit for bit.

Used by the ``cpu`` preset of :mod:`lopbook.experiments.permuted_mnist` (``trainer="stacked"``).
"""

from .cbp import StackedCBP
from .mlp import StackedMLP
from .probe import probe_metrics
from .trainer import RunSpec, StackedTrainer

__all__ = ["StackedMLP", "StackedCBP", "probe_metrics", "RunSpec", "StackedTrainer"]
