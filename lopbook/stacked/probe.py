"""Per-run plasticity metrics of a :class:`~lopbook.stacked.mlp.StackedMLP` on per-run probe batches.

The same numbers as :func:`lopbook.engine.default_probe` gives for one ``nn`` MLP, computed with the functions of
:mod:`lopbook.metrics` on each run's features; the singular values of all runs of a layer come from one batched
SVD.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lopbook import metrics

from .mlp import StackedMLP

__all__ = ["PROBE_KEYS", "probe_metrics"]

#: what :func:`probe_metrics` returns, in :func:`lopbook.engine.default_probe`'s names
PROBE_KEYS = ("dead_frac", "dormant_frac", "erank_frac", "srank_frac", "weight_mag")


@torch.no_grad()
def probe_metrics(net: StackedMLP, x: Tensor) -> dict[str, np.ndarray]:
    """Metrics of every run on its probe batch ``x`` ``(R, P, fan_in)``; each value is an ``(R,)`` array.

    ``dead_frac`` (units zero on every probe input, pooled over hidden layers), ``dormant_frac`` (active on < 1%
    of inputs), ``erank_frac`` / ``srank_frac`` (effective rank and 99% stable rank of each hidden layer's
    features over its width, averaged over layers) and ``weight_mag`` (mean |w| over all weight matrices, no
    biases).
    """
    _, hidden = net.forward(x)
    runs = net.runs
    svs = [torch.linalg.svdvals(h.double()) for h in hidden]  # (R, min(P, width)) per layer
    out = {k: np.zeros(runs) for k in PROBE_KEYS}
    for r in range(runs):
        feats = {f"layer{i}": h[r] for i, h in enumerate(hidden)}
        out["dead_frac"][r] = metrics.dead_fraction(feats)
        out["dormant_frac"][r] = metrics.dormant_fraction(feats)
        out["erank_frac"][r] = np.mean([metrics.effective_rank(h[r], sv=sv[r]) / h.shape[2]
                                        for h, sv in zip(hidden, svs, strict=True)])
        out["srank_frac"][r] = np.mean([metrics.stable_rank_99(h[r], sv=sv[r]) / h.shape[2]
                                        for h, sv in zip(hidden, svs, strict=True)])
    abs_sum = sum(w.abs().double().sum((1, 2)) for w in net.weights)
    count = sum(w.shape[1] * w.shape[2] for w in net.weights)
    out["weight_mag"] = (abs_sum / count).cpu().numpy()
    return out
