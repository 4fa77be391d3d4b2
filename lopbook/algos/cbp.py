"""Continual backpropagation (CBP): backprop plus generate-and-test on hidden units (paper Algorithm 1).

One model-agnostic engine: unit groups are found with ``torch.fx`` (:func:`lopbook.algos.units.find_unit_groups`),
features are what each group's next layer consumes in the *training* forward pass (a forward pre-hook on that
layer, so after any pooling or flatten; no extra forward; they are reduced to per-unit statistics in ``step()``),
and the replacement runs in :meth:`ContinualBackprop.step`, which you call right after ``optimizer.step()``::

    cbp = ContinualBackprop(model, optimizer, replacement_rate=1e-4, maturity_threshold=100, decay_rate=0.99)
    for x, y in stream:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        cbp.step()

Per group (layer) and step:

1. ``age += 1``; ``util ← η·util + (1−η)·y`` with ``y_u = mean|h_u| · Σ|W_out[:, u]|`` (``contribution``) or
   ``y_u = mean|h_u − ĥ_u| · Σ|W_out[:, u]| / mean|W_in[u, :]|`` (``adaptable_contribution``), where the means run
   over the batch (and spatial positions) and ``ĥ`` is the bias-corrected running mean activation. For a conv
   channel flattened into a Linear, each position has its own outgoing columns: ``y_u`` is the sum over positions
   of that position's ``mean|h|`` times its columns' ``Σ|W_out|`` (per-position products).
2. bias correction (Adam-style): ``û = util / (1 − η^age)``. Without it a just-matured unit reads at
   ``1 − η^(m+1)`` of its real utility (0.63 at η = 0.99, m = 100) and is replaced first.
3. eligible units: ``age > maturity_threshold``; a host-side counter ``c += ρ · n_eligible``; replace
   ``k = ⌊c⌋`` units and keep the remainder (exact, deterministic counts).
4. the ``k`` eligible units with the lowest ``û`` are re-initialised (:func:`~lopbook.algos.units.reinit_units`):
   incoming weights from ``init``, incoming bias 0, norm channel to identity, outgoing weights 0 (for a unit
   that feeds a residual sum: its BatchNorm scale and shift 0 instead), optimizer state of those entries 0;
   their age, utility and mean activation restart at 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import fused_sgd
from .adam_ages import ages_state, load_ages_state
from .magnitudes import LayerSums
from .units import FeatureHooks, UnitGroup, check_init, find_unit_groups, reinit_units

UTILITIES = ("contribution", "adaptable_contribution")


def _validate(replacement_rate: float, maturity_threshold: int, decay_rate: float, utility: str, init: str) -> None:
    if not 0.0 <= replacement_rate < 1.0:
        raise ValueError(f"replacement_rate must be in [0, 1) (a fraction of eligible units per step), "
                         f"got {replacement_rate}")
    if maturity_threshold < 0 or int(maturity_threshold) != maturity_threshold:
        raise ValueError(f"maturity_threshold must be an integer >= 0 (steps), got {maturity_threshold}")
    if not 0.0 <= decay_rate < 1.0:
        raise ValueError(f"decay_rate must be in [0, 1) (0 = instantaneous utility), got {decay_rate}")
    if utility not in UTILITIES:
        raise ValueError(f"unknown utility {utility!r}; choose one of {UTILITIES}")
    check_init(init)


class _GroupState:
    """Running statistics of one unit group (device tensors plus host-side ages and counter)."""

    def __init__(self, n: int, n_features: int, device: torch.device):
        self.age = torch.zeros(n, device=device)  # float, for η**age on device
        self.util = torch.zeros(n, device=device)
        self.mean_act = torch.zeros(n_features, device=device)  # per outgoing column (see UnitGroup.n_features)
        self.age_host = np.zeros(n, dtype=np.int64)  # the same ages on the host: eligibility without syncs
        self.counter = 0.0
        self.n_replaced = 0

    def to(self, device: torch.device) -> None:
        self.age, self.util, self.mean_act = (t.to(device) for t in (self.age, self.util, self.mean_act))


class ContinualBackprop:
    """Generate-and-test for any model made of Linear/Conv layers with activation modules.

    Args:
        model: the network. Its replaceable groups are found automatically (see :mod:`lopbook.algos.units`);
            a unit that feeds a residual sum is replaceable when a BatchNorm precedes the sum (it is then
            silenced there); other weight layers are left alone (listed in :attr:`skipped` with the reason).
        optimizer: its per-element state (SGD momentum, Adam moments) is zeroed for replaced entries; with
            ``torch.optim.Adam``/``AdamW`` those entries also get their own step count, so their first updates
            are bias-corrected like fresh entries' (:mod:`lopbook.algos.adam_ages`). ``None`` skips that.
        replacement_rate: ρ, the fraction of *eligible* units replaced per step (in [0, 1)).
        maturity_threshold: m, a unit is eligible once ``age > m`` steps.
        decay_rate: η, the utility EMA decay (0 = instantaneous utility).
        utility: ``"contribution"`` (the Nature paper) or ``"adaptable_contribution"`` (2021 CBP paper).
        init: distribution of new incoming weights: ``"default"`` (torch's own layer init,
            U(±1/√fan_in)), ``"kaiming_uniform"``, ``"kaiming_normal"``, ``"xavier"`` or ``"lecun"``.
        bias_correction: divide the utility EMA by ``1 − η^age`` (default; see module docstring).
        bias_transfer: before zeroing a replaced unit's outgoing weights, add its mean contribution
            ``W_out[:, u]·ĥ_u`` to the next layer's bias (what upstream GnT intended but never did: its
            statistic was zeroed first, so it added 0). Off by default, like every upstream run.
        out_refresh: recompute ``Σ|W_out[:, u]|`` (and, for the adaptable utility, mean ``|W_in[u, :]|``) every
            this many steps (1, the default, is exactly Algorithm 1). Larger values reuse the last values in
            between (kept exact for replaced units): the weights change little per step, and on a memory-bound
            CPU step (batch 1) reading every weight matrix once per step is the main cost of CBP unless
            ``fuse_sgd`` applies, which makes that read free and needs ``out_refresh=1``.
        fuse_sgd: where ``optimizer`` is plain ``torch.optim.SGD`` (no momentum or weight decay) on the CPU and
            ``out_refresh`` is 1, do its update of the weight matrices CBP reads in the same pass that sums their
            ``|w|`` (:mod:`lopbook.algos.fused_sgd`; needs numba, else ignored): the same weights and exact
            sums, without a second read of every weight per step. :attr:`fused_layers` lists those layers.
        groups: explicit unit groups instead of automatic discovery.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, replacement_rate: float = 1e-4,
                 maturity_threshold: int = 100, decay_rate: float = 0.99, utility: str = "contribution",
                 init: str = "default", bias_correction: bool = True, bias_transfer: bool = False,
                 out_refresh: int = 1, fuse_sgd: bool = True, groups: Sequence[UnitGroup] | None = None):
        _validate(replacement_rate, maturity_threshold, decay_rate, utility, init)
        if out_refresh < 1 or int(out_refresh) != out_refresh:
            raise ValueError(f"out_refresh must be an integer >= 1 (steps), got {out_refresh}")
        self.out_refresh = int(out_refresh)
        self.model = model
        self.optimizer = optimizer
        self.replacement_rate = float(replacement_rate)
        self.maturity_threshold = int(maturity_threshold)
        self.decay_rate = float(decay_rate)
        self.utility = utility
        self.init = init
        self.bias_correction = bool(bias_correction)
        self.bias_transfer = bool(bias_transfer)
        if groups is None:
            groups, skipped = find_unit_groups(model)
        else:
            skipped = {}
        self.groups: list[UnitGroup] = list(groups)
        self.skipped: dict[str, str] = skipped
        if bias_transfer:
            for g in self.groups:
                if g.residual:
                    raise ValueError(f"bias_transfer=True is not defined for '{g.name}', whose units feed a "
                                     "residual sum (they are silenced at their BatchNorm); use bias_transfer=False")
                if g.out_layer.bias is None:
                    raise ValueError(f"bias_transfer=True needs a bias on the layer after '{g.name}'; "
                                     "use bias_transfer=False or give that layer a bias")
        self._need_mean = utility == "adaptable_contribution" or bias_transfer
        self.states = [_GroupState(g.n_units, g.n_features, g.in_layer.weight.device) for g in self.groups]
        # Σ|w| of every layer a utility reads, each matrix once (outgoing of one group, incoming of the next)
        self._sums: dict[int, LayerSums] = {}
        adaptable = utility == "adaptable_contribution"
        for g in self.groups:
            for o in g.outgoing:
                self._layer_sums(o).want_cols = True
            if adaptable:
                self._layer_sums(g.in_layer).want_rows = True
        self._fused = None
        if fuse_sgd and optimizer is not None and fused_sgd.eligible(optimizer, self._sums.values()):
            if fused_sgd.AVAILABLE:
                self._fused = fused_sgd.FusedSGDMagnitudes(optimizer, self._sums.values())
            else:
                warnings.warn("ContinualBackprop: numba is not installed, so CBP reads every weight matrix once "
                              "more per step to sum |w| (about 1.4x a BP step at batch 1); pip install numba to do "
                              "it inside the SGD update, or pass fuse_sgd=False to silence this", stacklevel=2)
        self.steps = 0
        self.last_replaced: list[torch.Tensor | None] = [None] * len(self.groups)
        # The hooks only keep the features (autograd holds them until backward anyway); step() reduces them.
        # Reducing inside the forward cost more: there the small statistics tensors are evicted from the cache
        # by the weights streaming past.
        self.hooks = FeatureHooks(self.groups, lambda i, h: (h, h._version))

    # -------------------------------------------------------------------------------------------- hooks
    def _features(self) -> list[dict[str, torch.Tensor] | None]:
        """Each group's statistics from the latest training forward (None: the group was not used)."""
        feats = []
        for i, kept in enumerate(self.hooks.latest):
            if kept is None:
                feats.append(None)
                continue
            h, version = kept
            if h._version != version:
                raise RuntimeError(f"the features of '{self.groups[i].name}' were modified in place after the "
                                   "forward pass; call ContinualBackprop.step() before changing them (or avoid "
                                   "in-place operations on what the next layer consumed)")
            feats.append(self._reduce(i, h))
        return feats

    def _reduce(self, i: int, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-feature statistics of one forward's features (what the next layer consumes), on the device."""
        g, s = self.groups[i], self.states[i]
        dims = g.feature_dims(h)
        out = {"abs": g.mean_abs(h)}
        if self._need_mean:  # mean h = mean |h| for non-negative features
            out["mean"] = out["abs"] if g.nonnegative else h.mean(dims, dtype=torch.float32)
        if self.utility == "adaptable_contribution":
            eta = self.decay_rate
            ma = torch.lerp(s.mean_act, out["mean"], 1 - eta)  # η·mean_act + (1 − η)·mean
            if self.bias_correction:
                ma.div_(self._per_column(g, 1 - eta ** (s.age + 1)))
            shape = [1] * h.dim()
            shape[g.feature_axis(h)] = -1
            out["dev"] = (h - ma.to(h.dtype).view(shape)).abs().mean(dims, dtype=torch.float32)
        return out

    @staticmethod
    def _per_column(g: UnitGroup, x: torch.Tensor) -> torch.Tensor:
        """A per-unit tensor repeated for each of the unit's outgoing columns."""
        return x if g.cols_per_unit == 1 else x.repeat_interleave(g.cols_per_unit)

    # ------------------------------------------------------------------------------------------- public
    @property
    def fused_layers(self) -> list[nn.Module]:
        """Layers whose plain-SGD weight update CBP does itself, fused with its magnitude sums (``fuse_sgd``)."""
        return [] if self._fused is None else self._fused.layers

    @property
    def n_replaced(self) -> list[int]:
        """Units replaced so far, per group."""
        return [s.n_replaced for s in self.states]

    def utilities(self) -> list[torch.Tensor]:
        """The current (bias-corrected if enabled) utility of every unit, per group."""
        return [self._corrected(s.util, s) for s in self.states]

    def _corrected(self, x: torch.Tensor, s: _GroupState, g: UnitGroup | None = None) -> torch.Tensor:
        """``x / (1 - η^age)``; ``g`` given: ``x`` is per outgoing column of ``g`` (the running mean)."""
        if not self.bias_correction or self.decay_rate == 0.0:
            return x.clone()
        age = s.age if g is None else self._per_column(g, s.age)
        bc = 1 - self.decay_rate ** age
        return torch.where(age > 0, x / bc.clamp_min(1e-12), torch.zeros_like(x))

    @torch.no_grad()
    def step(self) -> int:
        """Update utilities with this step's features and replace low-utility mature units.

        Call right after ``optimizer.step()``. Returns the number of units replaced in this step.
        """
        if all(f is None for f in self.hooks.latest):
            raise RuntimeError("ContinualBackprop.step() saw no features: call it after a training forward "
                               "(with grad enabled), backward and optimizer.step() of the model it was built on")
        for g, s in zip(self.groups, self.states, strict=True):
            if s.util.device != g.in_layer.weight.device:  # the model was moved after construction
                s.to(g.in_layer.weight.device)
                for ls in self._sums.values():
                    ls.to(ls.layer.weight.device)
        feats = self._features()
        self.steps += 1
        eta, total = self.decay_rate, 0
        for ls in self._sums.values():
            ls.refresh(self.steps - 1)
        # Deepest group first: if units of consecutive layers are replaced together, the shallower layer's
        # zeroed outgoing columns are written last, so they stay 0 in the deeper layer's fresh rows too.
        for i in reversed(range(len(self.groups))):
            g, s, f = self.groups[i], self.states[i], feats[i]
            self.last_replaced[i] = None
            if f is None:  # this layer was not used in the forward pass
                continue
            s.age += 1
            s.age_host += 1
            if self._need_mean:
                s.mean_act.mul_(eta).add_(f["mean"], alpha=1 - eta)
            out_mag = self.out_magnitude(i)
            # Σ over the unit's outgoing connections of |feature|·|weight|: per column, then per unit (a conv
            # channel flattened into a Linear has one column per position, each with its own weights)
            if self.utility == "contribution":
                new = g.per_unit(f["abs"] * out_mag)
            else:
                new = g.per_unit(f["dev"] * out_mag) / self.in_magnitude(i).clamp_min(1e-12)
            s.util.mul_(eta).add_(new, alpha=1 - eta)

            n_eligible = int(np.count_nonzero(s.age_host > self.maturity_threshold))
            if n_eligible == 0 or self.replacement_rate == 0.0:
                continue
            s.counter += self.replacement_rate * n_eligible
            k = min(int(math.floor(s.counter + 1e-9)), n_eligible)  # eps: 0.1+...+0.1 must give 1, not 0.999
            if k == 0:
                continue
            s.counter -= k
            score = torch.nan_to_num(self._corrected(s.util, s), nan=-1.0)  # NaN utility: replace it first
            score = score.masked_fill(s.age <= self.maturity_threshold, float("inf"))
            idx = torch.topk(score, k, largest=False).indices
            cols = g.out_columns(idx)
            shift = None
            if self.bias_transfer:
                shift = self._corrected(s.mean_act, s, g)[cols]
            # keep the cached magnitudes exact: re-read the k redrawn rows, zero the zeroed columns
            in_sums = self._sums.get(id(g.in_layer))
            before = None if in_sums is None else in_sums.snapshot_rows(idx)
            reinit_units(g, idx, self.init, self.optimizer, bias_shift=shift)
            if in_sums is not None:
                in_sums.rows_redrawn(idx, before)
            if not g.residual:
                self._sums[id(g.out_layer)].cols_zeroed(cols)
            elif not g.silence_at_norm:
                for o in g.outgoing:
                    self._sums[id(o)].cols_zeroed(cols)
            s.util.index_fill_(0, idx, 0.0)
            s.mean_act.index_fill_(0, cols, 0.0)
            s.age.index_fill_(0, idx, 0.0)
            s.age_host[idx.cpu().numpy()] = 0  # the only host sync, on replacement steps
            s.n_replaced += k
            self.last_replaced[i] = idx
            total += k
        self.hooks.clear()
        return total

    def _layer_sums(self, layer: nn.Module) -> LayerSums:
        if id(layer) not in self._sums:
            self._sums[id(layer)] = LayerSums(layer, rows=False, cols=False, refresh=self.out_refresh)
        return self._sums[id(layer)]

    def out_magnitude(self, i: int) -> torch.Tensor:
        """Cached ``Σ|W_out|`` per outgoing column of group ``i`` (over all its outgoing layers)."""
        return sum(self._sums[id(o)].col for o in self.groups[i].outgoing)

    def in_magnitude(self, i: int) -> torch.Tensor:
        """Cached mean ``|W_in|`` per unit of group ``i`` (adaptable utility only)."""
        w = self.groups[i].in_layer.weight
        return self._sums[id(self.groups[i].in_layer)].row / (w.numel() // w.shape[0])

    # ---------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: per-group ages, utilities, mean activations, counters."""
        return {
            "steps": self.steps,
            "hparams": {"replacement_rate": self.replacement_rate, "maturity_threshold": self.maturity_threshold,
                        "decay_rate": self.decay_rate, "utility": self.utility, "init": self.init,
                        "bias_correction": self.bias_correction, "bias_transfer": self.bias_transfer,
                        "out_refresh": self.out_refresh},
            "magnitudes": [ls.state_dict() for ls in self._sums.values()],
            "groups": [{"name": g.name, "age": s.age.cpu().clone(), "util": s.util.cpu().clone(),
                        "mean_act": s.mean_act.cpu().clone(), "counter": s.counter, "n_replaced": s.n_replaced}
                       for g, s in zip(self.groups, self.states, strict=True)],
            "adam_entry_ages": ages_state(self.optimizer),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the model and optimizer are restored separately; load the
        optimizer's state first)."""
        names = [g["name"] for g in state["groups"]]
        if names != [g.name for g in self.groups]:
            raise ValueError(f"checkpoint has groups {names}, this model has {[g.name for g in self.groups]}")
        self.steps = int(state["steps"])
        if "magnitudes" in state:
            for ls, d in zip(self._sums.values(), state["magnitudes"], strict=True):
                ls.load_state_dict(d)
        for g, s, d in zip(self.groups, self.states, state["groups"], strict=True):
            dev = g.in_layer.weight.device
            s.age, s.util, s.mean_act = (d[k].to(dev).clone() for k in ("age", "util", "mean_act"))
            s.age_host = d["age"].cpu().numpy().astype(np.int64)
            s.counter = float(d["counter"])
            s.n_replaced = int(d["n_replaced"])
        load_ages_state(self.optimizer, state.get("adam_entry_ages"))

    def remove(self) -> None:
        """Remove the forward hooks and optimiser hooks (the object is unusable afterwards)."""
        self.hooks.remove()
        if self._fused is not None:
            self._fused.remove()

    def __repr__(self) -> str:
        return (f"ContinualBackprop(groups={[g.name for g in self.groups]}, rho={self.replacement_rate}, "
                f"m={self.maturity_threshold}, eta={self.decay_rate}, utility={self.utility!r}, init={self.init!r})")


# ----------------------------------------------------------------------------------- book illustration

def utility_trace(steps: int = 400, width: int = 12, seed: int = 0, replacement_rate: float = 0.004,
                  maturity_threshold: int = 60, decay_rate: float = 0.95) -> dict[str, np.ndarray]:
    """Utilities of the hidden units of a tiny net learning a slowly drifting regression target.

    For the algorithms appendix: a 6-``width``-1 ReLU MLP trained online with SGD + CBP. Returns ``steps``
    (T,), ``utility`` (T, width) bias-corrected, ``raw_utility`` (T, width) without correction, ``age`` (T, width),
    ``events`` (E, 2) as (step, unit), ``loss`` (T,). Deterministic for a given seed; about a second on a CPU.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 1))
    target = torch.randn(6, 1, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    cbp = ContinualBackprop(model, opt, replacement_rate=replacement_rate, maturity_threshold=maturity_threshold,
                            decay_rate=decay_rate)
    utils, raw, ages, losses, events = [], [], [], [], []
    for t in range(steps):
        if t % 100 == 99:  # the target drifts: one input's weight flips sign
            target[t // 100 % 6] *= -1
        x = torch.randn(16, 6, generator=g)
        y = torch.relu(x @ target) - 0.5 * (x @ target)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        cbp.step()
        s = cbp.states[0]
        utils.append(cbp.utilities()[0].numpy().copy())
        raw.append(s.util.numpy().copy())
        ages.append(s.age_host.copy())
        losses.append(loss.item())
        if cbp.last_replaced[0] is not None:
            events.extend((t, int(u)) for u in cbp.last_replaced[0])
    cbp.remove()
    return {"steps": np.arange(steps), "utility": np.array(utils), "raw_utility": np.array(raw),
            "age": np.array(ages), "events": np.array(events, dtype=np.int64).reshape(-1, 2),
            "loss": np.array(losses)}
