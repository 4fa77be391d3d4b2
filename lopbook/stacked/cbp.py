"""Continual backprop for the hidden layers of a :class:`~lopbook.stacked.mlp.StackedMLP`, per run.

The same algorithm and the same decisions as :class:`lopbook.algos.ContinualBackprop` with SGD on an MLP
(``tests/test_stacked_cbp.py`` runs both side by side and compares utilities, ages, replaced units and weights):
per hidden layer and step, deepest layer first,

1. ``age += 1``; ``util ← η util + (1 − η) y`` with ``y_u = mean_b|h_u| · Σ|W_out[u, :]|`` (``contribution``) or
   ``y_u = mean_b|h_u − ĥ_u| · Σ|W_out[u, :]| / mean|W_in[:, u]|`` (``adaptable_contribution``), ``ĥ`` the
   bias-corrected running mean activation; the weights are those *after* this step's SGD update;
2. bias-corrected utility ``û = util / (1 − η^age)``;
3. a host-side counter per (run, layer): ``c += ρ · n_eligible`` (eligible: ``age > m``), replace ``k = ⌊c⌋``
   eligible units with the lowest ``û`` and keep the remainder, so the fraction replaced is exact;
4. a replaced unit gets new incoming weights from the run's own generator (``kaiming_uniform``: ``U(±√2·√(3/fan_in))``
   for ReLU; or ``default``: ``U(±1/√fan_in)``), incoming bias 0, outgoing weights 0, utility, mean activation
   and age 0.

Only the runs in ``runs`` (a contiguous slice of the stack) are touched, each with its own ρ, m and η; a
run's numbers never depend on which other runs share the stack.

API::

    cbp = StackedCBP(net, runs=slice(10, 15), replacement_rate=[...], maturity_threshold=100, decay_rate=0.99,
                     utility="adaptable_contribution", init="kaiming_uniform", seeds=[...])
    logits, hidden = net.forward(x); ...; net.sgd_step(x, hidden, g)
    cbp.step(hidden)          # after the update, with this step's features
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .mlp import StackedMLP

__all__ = ["StackedCBP", "UTILITIES", "INITS"]

UTILITIES = ("contribution", "adaptable_contribution")
INITS = ("kaiming_uniform", "default")
_EPS = 1e-9  # the same rounding slack on the counter as lopbook.algos.ContinualBackprop


def _per_run(value: float | Sequence[float], n: int, name: str) -> np.ndarray:
    arr = np.full(n, float(value)) if np.isscalar(value) else np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be one number or one per run ({n}), got shape {arr.shape}")
    return arr


class StackedCBP:
    """Generate-and-test on every hidden layer of the runs ``runs`` of ``net`` (see the module docstring).

    Args:
        net: the stacked network.
        runs: the slice of runs that use CBP (contiguous, so their tensors are views, not copies).
        replacement_rate: ρ per run (or one for all), in [0, 1).
        maturity_threshold: m per run (integers >= 0).
        decay_rate: η per run, in [0, 1).
        utility: ``"contribution"`` or ``"adaptable_contribution"`` (shared by the slice).
        init: ``"kaiming_uniform"`` or ``"default"`` for the new incoming weights.
        seeds: one integer per run: seeds the run's generator for new weights (see :attr:`generators`).
        mag_refresh: recompute the weight magnitudes ``Σ|W_out|`` and ``mean|W_in|`` every this many steps (1, the
            default, is exactly Algorithm 1; :class:`lopbook.algos.ContinualBackprop`'s ``out_refresh`` does the
            same for ``Σ|W_out|``). In between, the cached values are kept exact for replaced units and their
            neighbours and only miss the slow drift of SGD: reading every weight matrix each step is most of
            CBP's cost on a memory-bound CPU step.
    """

    def __init__(self, net: StackedMLP, runs: slice, *, replacement_rate: float | Sequence[float],
                 maturity_threshold: int | Sequence[int] = 100, decay_rate: float | Sequence[float] = 0.99,
                 utility: str = "adaptable_contribution", init: str = "kaiming_uniform",
                 seeds: Sequence[int] | None = None, mag_refresh: int = 1) -> None:
        start, stop, step = runs.indices(net.runs)
        if mag_refresh < 1 or int(mag_refresh) != mag_refresh:
            raise ValueError(f"mag_refresh must be an integer >= 1 (steps), got {mag_refresh}")
        self.mag_refresh = int(mag_refresh)
        if step != 1 or stop <= start:
            raise ValueError(f"runs must be a non-empty contiguous slice of the {net.runs} runs, got {runs}")
        if utility not in UTILITIES:
            raise ValueError(f"unknown utility {utility!r}; choose one of {UTILITIES}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; the stacked CBP supports {INITS}")
        n = stop - start
        self.net, self.runs, self.n_runs = net, slice(start, stop), n
        self.rho = _per_run(replacement_rate, n, "replacement_rate")
        self.maturity = _per_run(maturity_threshold, n, "maturity_threshold").astype(np.int64)
        self.eta_host = _per_run(decay_rate, n, "decay_rate")
        if ((self.rho < 0) | (self.rho >= 1)).any() or ((self.eta_host < 0) | (self.eta_host >= 1)).any():
            raise ValueError("replacement_rate and decay_rate must be in [0, 1)")
        if (self.maturity < 0).any():
            raise ValueError("maturity_threshold must be >= 0")
        self.utility, self.init = utility, init
        dev = net.weights[0].device
        self.eta = torch.tensor(self.eta_host, dtype=torch.float32, device=dev).unsqueeze(1)  # (n, 1)
        widths = net.widths
        # equal widths (the usual MLP): one (n, layers, width) tensor per statistic, updated for all layers in one
        # set of ops (per-step op overhead dominates on a CPU); the per-layer lists are views into it
        self._fused = len(set(widths)) == 1
        if self._fused:
            shape = (n, len(widths), widths[0])
            self._all = {k: torch.zeros(shape, device=dev) for k in ("age", "util", "mean_act", "out_mag", "in_mag")}
            self._age_host_all = np.zeros(shape, dtype=np.int64)
            self.age, self.util, self.mean_act = ([self._all[k][:, i] for i in range(len(widths))]
                                                  for k in ("age", "util", "mean_act"))
            self.age_host = [self._age_host_all[:, i] for i in range(len(widths))]
        else:
            self.age = [torch.zeros(n, w, device=dev) for w in widths]
            self.util = [torch.zeros(n, w, device=dev) for w in widths]
            self.mean_act = [torch.zeros(n, w, device=dev) for w in widths]
            self.age_host = [np.zeros((n, w), dtype=np.int64) for w in widths]
        self.counter = np.zeros((n, len(widths)))
        self.n_replaced = np.zeros((n, len(widths)), dtype=np.int64)
        seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != n:
            raise ValueError(f"need one seed per CBP run ({n}), got {len(seeds)}")
        #: one generator per run for the new incoming weights (set its state to replay another stream)
        self.generators = [torch.Generator(device=dev) for _ in range(n)]
        for g, s in zip(self.generators, seeds, strict=True):
            g.manual_seed(s)
        self.last_replaced: list[list[Tensor | None]] = [[None] * len(widths) for _ in range(n)]
        self.steps = 0
        self._out_mag: list[Tensor | None] = [None] * len(widths)
        self._in_mag: list[Tensor | None] = [None] * len(widths)
        # scratch space for |W| (large temporaries are slow to allocate on a CPU)
        self._buf = [torch.empty(n, *net.weights[i].shape[1:], device=dev) for i in range(len(net.weights))]

    def _magnitudes(self, layer: int) -> tuple[Tensor, Tensor]:
        """``(Σ|W_out[u, :]|, mean|W_in[:, u]|)`` of the slice's runs, ``(n, width)`` each (cached, see
        ``mag_refresh``)."""
        if self._out_mag[layer] is None or (self.steps - 1) % self.mag_refresh == 0:
            sl, w = self.runs, self.net.weights
            self._out_mag[layer] = torch.abs(w[layer + 1][sl], out=self._buf[layer + 1]).sum(2)
            self._in_mag[layer] = torch.abs(w[layer][sl], out=self._buf[layer]).mean(1)
        return self._out_mag[layer], self._in_mag[layer]  # type: ignore[return-value]

    def _bound(self, layer: int) -> float:
        fan_in = int(self.net.weights[layer].shape[1])
        if self.init == "default":
            return 1.0 / math.sqrt(fan_in)
        return math.sqrt(2.0) * math.sqrt(3.0 / fan_in)  # kaiming uniform, ReLU gain

    def utilities(self) -> list[Tensor]:
        """Bias-corrected utilities ``(runs, width)`` per hidden layer (0 where age is 0)."""
        out = []
        for a, u in zip(self.age, self.util, strict=True):
            bc = 1 - torch.pow(self.eta, a)
            out.append(torch.where(a > 0, u / bc.clamp_min(1e-12), torch.zeros_like(u)))
        return out

    @torch.no_grad()
    def step(self, hidden: Sequence[Tensor]) -> int:
        """Update utilities with this step's hidden features (all runs' ``(R, B, width)``), then replace.

        Returns the number of units replaced in this step (over runs and layers).
        """
        sl, eta = self.runs, self.eta
        self.steps += 1
        if self._fused:
            return self._fused_step(hidden)
        total = 0
        for layer in reversed(range(len(self.age))):
            h = hidden[layer][sl]  # (n, B, width)
            age, util, mean_act = self.age[layer], self.util[layer], self.mean_act[layer]
            age += 1
            self.age_host[layer] += 1
            out_mag, in_mag = self._magnitudes(layer)  # of the weights after this step's update
            if self.utility == "contribution":
                new = h.abs().mean(1) * out_mag
            else:
                mean = h.mean(1)
                ma = mean_act * eta + mean * (1 - eta)
                bc = 1 - torch.pow(eta, age)
                dev = (h - (ma / bc).unsqueeze(1)).abs().mean(1)
                mean_act.copy_(ma)
                new = dev * out_mag / in_mag.clamp_min(1e-12)
            util.mul_(eta).add_(new * (1 - eta))
            total += self._replace(layer)
        return total

    def _fused_step(self, hidden: Sequence[Tensor]) -> int:
        """:meth:`step` for equal widths: the utilities of all layers in one set of ops. A layer's utility uses
        the outgoing weights after the deeper layer's replacements of this step (as the per-layer loop does), so
        when a run replaces units of layer ``l``, its layer ``l − 1`` utility of this step is recomputed."""
        a, sl, eta = self._all, self.runs, self.eta.unsqueeze(2)  # eta (n, 1, 1)
        h = torch.stack([x[sl] for x in hidden], 1)  # (n, layers, B, width)
        a["age"] += 1
        self._age_host_all += 1
        if self._out_mag[0] is None or (self.steps - 1) % self.mag_refresh == 0:
            for layer in range(len(self.age)):
                self._refresh(layer)
        if self.utility == "contribution":
            new = h.abs().mean(2) * a["out_mag"]
        else:
            ma = a["mean_act"] * eta + h.mean(2) * (1 - eta)
            bc = 1 - torch.pow(eta, a["age"])
            dev = (h - (ma / bc).unsqueeze(2)).abs().mean(2)
            a["mean_act"].copy_(ma)
            new = dev * a["out_mag"] / a["in_mag"].clamp_min(1e-12)
        decayed = a["util"] * eta
        torch.add(decayed, new * (1 - eta), out=a["util"])
        total = 0
        for layer in reversed(range(len(self.age))):
            total += self._replace(layer)
            if layer == 0:
                continue
            for j in [j for j in range(self.n_runs) if self.last_replaced[j][layer] is not None]:
                below = layer - 1  # its outgoing weights changed: redo this step's utility of that run and layer
                e = self.eta[j]
                if self.utility == "contribution":
                    y = h[j, below].abs().mean(0) * a["out_mag"][j, below]
                else:
                    y = dev[j, below] * a["out_mag"][j, below] / a["in_mag"][j, below].clamp_min(1e-12)
                a["util"][j, below] = decayed[j, below] + y * (1 - e)
        return total

    def _refresh(self, layer: int) -> None:
        """Re-read ``Σ|W_out|`` and ``mean|W_in|`` of one layer into the fused cache."""
        sl, w, a = self.runs, self.net.weights, self._all
        a["out_mag"][:, layer] = torch.abs(w[layer + 1][sl], out=self._buf[layer + 1]).sum(2)
        a["in_mag"][:, layer] = torch.abs(w[layer][sl], out=self._buf[layer]).mean(1)
        self._out_mag[layer], self._in_mag[layer] = a["out_mag"][:, layer], a["in_mag"][:, layer]

    def _replace(self, layer: int) -> int:
        """Host-side counters decide how many units each run replaces; the few runs that replace do it now."""
        eligible = (self.age_host[layer] > self.maturity[:, None]).sum(1)
        self.counter[:, layer] += self.rho * eligible
        k_all = np.minimum(np.floor(self.counter[:, layer] + _EPS).astype(np.int64), eligible)
        for j in range(self.n_runs):
            self.last_replaced[j][layer] = None
        if not k_all.any():
            return 0
        net, sl = self.net, self.runs
        bound = self._bound(layer)
        w_in, b_in, w_out = net.weights[layer], net.biases[layer], net.weights[layer + 1]
        corrected = self.utilities()[layer]
        for j in np.nonzero(k_all)[0]:
            k, r = int(k_all[j]), sl.start + int(j)
            self.counter[j, layer] -= k
            score = torch.nan_to_num(corrected[j], nan=-1.0)  # a NaN utility is replaced first
            score = score.masked_fill(self.age[layer][j] <= float(self.maturity[j]), float("inf"))
            idx = torch.topk(score, k, largest=False).indices
            new = torch.empty((k, w_in.shape[1]), device=w_in.device).uniform_(-bound, bound,
                                                                              generator=self.generators[j])
            w_in[r].index_copy_(1, idx, new.T)  # drawn (units, fan_in) like nn.Linear's rows
            b_in[r, 0].index_fill_(0, idx, 0.0)
            w_out[r].index_fill_(0, idx, 0.0)
            for t in (self.util[layer], self.mean_act[layer], self.age[layer]):
                t[j].index_fill_(0, idx, 0.0)
            self.age_host[layer][j, idx.cpu().numpy()] = 0
            # cached magnitudes: the new units have no outgoing weights; their incoming ones are `new`; the layer
            # below sees new outgoing weights (its Σ|W_out| is re-read for this run)
            if self._out_mag[layer] is not None:
                self._out_mag[layer][j].index_fill_(0, idx, 0.0)
                self._in_mag[layer][j].index_copy_(0, idx, new.abs().mean(1))
            if layer > 0 and self._out_mag[layer - 1] is not None:
                self._out_mag[layer - 1][j] = w_in[r].abs().sum(1)
            self.n_replaced[j, layer] += k
            self.last_replaced[j][layer] = idx
        return int(k_all.sum())

    def state_dict(self) -> dict[str, Any]:
        """Ages, utilities, mean activations, counters and generator states (CPU), for checkpoints."""
        return {"age": [a.cpu().clone() for a in self.age], "util": [u.cpu().clone() for u in self.util],
                "mean_act": [m.cpu().clone() for m in self.mean_act], "counter": self.counter.copy(),
                "n_replaced": self.n_replaced.copy(), "steps": self.steps,
                "generators": [g.get_state() for g in self.generators],
                "mag_cache": [None if t is None else t.cpu().clone() for t in self._out_mag + self._in_mag]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.age[0].device
        for name in ("age", "util", "mean_act"):
            for dst, src in zip(getattr(self, name), state[name], strict=True):
                dst.copy_(src.to(dev))
        for dst, src in zip(self.age_host, state["age"], strict=True):
            dst[...] = src.cpu().numpy().astype(np.int64)  # in place: the fused layout holds views
        self.counter = np.array(state["counter"], dtype=np.float64)
        self.n_replaced = np.array(state["n_replaced"], dtype=np.int64)
        self.steps = int(state["steps"])
        for g, s in zip(self.generators, state["generators"], strict=True):
            g.set_state(s)
        n = len(self.age)
        for i, t in enumerate(state["mag_cache"]):
            layer, kind = i % n, ("_out_mag", "_in_mag")[i // n]
            cache = getattr(self, kind)
            if t is None:
                cache[layer] = None
            elif self._fused:
                self._all[kind[1:]][:, layer] = t.to(dev)
                cache[layer] = self._all[kind[1:]][:, layer]
            else:
                cache[layer] = t.to(dev).clone()
