"""Shared unit machinery for unit-replacing methods (continual backprop, ReDo).

A *unit* is one output feature of a hidden ``nn.Linear`` or one output channel of a hidden ``nn.Conv1d/2d``.
A :class:`UnitGroup` is one layer of such units, in one of two shapes::

    plain:     incoming layer -> [BatchNorm/LayerNorm] -> activation module -> [pool/dropout/flatten] -> outgoing layer
    residual:  incoming layer -> BatchNorm -> [activation] -> residual sum / several consumers (ResNet stem, block ends)

Re-initialising unit ``u`` of a plain group means: new incoming weights (row ``u``) from an init distribution,
incoming bias 0, the norm layer's channel back to identity, **outgoing weights (column(s) ``u``) 0**, and the
optimizer state of exactly those entries zeroed. A residual unit's output reaches the rest of the network through
a skip connection as well, so zeroing one consumer's columns would not silence it; instead its **BatchNorm scale
and shift are set to 0** (its term in the residual sum is 0 on every path; the scale then plays the part of the
outgoing weight) and the consumers are left alone.

What the network computes right after a replacement: what it computed before *without the replaced units*
(their outgoing weights, or BN scale and shift, set to 0), in train and eval mode -- unchanged when a unit was
silent (a dead ReLU). Two exceptions: with a LayerNorm between the layer and its activation, the new unit's
pre-activation enters the layer's mean and variance, so every unit of the layer changes; and a residual unit
with a ReLU after its BatchNorm (a ResNet stem) cannot be silenced there (ReLU'(0) = 0: it would never learn
again), so it is treated as the authors did (BN to identity, consumers' input columns 0) and the new unit
reaches the next block through the skip connection.

Groups are found automatically with ``torch.fx`` (:func:`lopbook.algos.discovery.find_unit_groups`).
Features are captured by hooks (:class:`FeatureHooks`): for continual backprop, what the outgoing layer
consumes (after pooling/flatten; a residual unit's own term in the sum), for ReDo the activation's output. They
are reduced to per-unit (or per outgoing column) statistics on the device right away, so no activation tensors
are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adam_ages import entry_ages

_CHUNK = 128  # rows per chunk when summing |w| on the CPU (a 2000-wide chunk is 1 MB: cache-sized)

INIT_NAMES = ("default", "kaiming_uniform", "kaiming_normal", "xavier", "lecun")


class UnitDiscoveryError(ValueError):
    """The model cannot be analysed into unit groups; the message says how to fix the model."""


@dataclass
class UnitGroup:
    """One layer of replaceable units.

    Attributes:
        name: the incoming layer's qualified module name.
        in_layer: produces the units (row ``u`` of its weight, entry ``u`` of its bias).
        act: the activation module (ReDo's features; for a residual group without an activation, its BatchNorm:
            the module whose output is the unit's term in the residual sum).
        out_layer: the (first) consumer; its input columns for unit ``u`` are ``cols_per_unit`` consecutive
            columns (1 unless a conv feature map is flattened into a Linear, then H*W).
        norm: optional BatchNorm/LayerNorm between ``in_layer`` and ``act`` (required for a residual group).
        residual: the units feed a residual sum (or several layers); a replacement silences them at ``norm``.
        consumers: a residual group's weight layers that read the stream right after it (its utility's
            outgoing weights); empty for a plain group (then ``out_layer`` is the one consumer).
        silence_at_norm: for a residual group, a replacement sets the BN scale and shift to 0 (True) or, where a
            ReLU after the BN would then never pass a gradient again (the ResNet stem), resets the BN to
            identity and zeroes every consumer's input columns (False: the skip path still carries the unit).
    """

    name: str
    in_layer: nn.Module
    act: nn.Module
    out_layer: nn.Module
    norm: nn.Module | None = None
    cols_per_unit: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    residual: bool = False
    consumers: list[nn.Module] = field(default_factory=list)
    silence_at_norm: bool = True

    @property
    def outgoing(self) -> list[nn.Module]:
        """The weight layers whose input columns count as the units' outgoing weights."""
        return self.consumers or [self.out_layer]

    @property
    def feature_module(self) -> nn.Module:
        """Where continual backprop reads the features: the outgoing layer's input (plain groups) or the
        residual unit's term (``act``)."""
        return self.act if self.residual else self.out_layer

    @property
    def n_units(self) -> int:
        w = self.in_layer.weight
        return int(w.shape[0])

    @property
    def n_features(self) -> int:
        """Length of the per-feature statistics: one per outgoing column (``n_units * cols_per_unit``)."""
        return self.n_units * self.cols_per_unit

    @property
    def nonnegative(self) -> bool:
        """Whether the features are >= 0 (then mean|h| = mean h, which saves a pass over h).

        True for non-negative activations: the pass-through ops after them (pooling, dropout, flatten) keep
        the sign."""
        return isinstance(self.act, (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid))

    def feature_axis(self, h: torch.Tensor) -> int:
        """The unit axis of a feature tensor ``h``: 1 for an unflattened conv map (N, C, ...), else the last."""
        conv = isinstance(self.in_layer, (nn.Conv1d, nn.Conv2d))
        return 1 if conv and h.dim() >= 3 else h.dim() - 1

    def feature_dims(self, h: torch.Tensor) -> list[int]:
        """All dimensions of ``h`` except the unit axis (batch, time, spatial positions)."""
        ax = self.feature_axis(h)
        return [d for d in range(h.dim()) if d != ax]

    def mean_abs(self, h: torch.Tensor) -> torch.Tensor:
        """Mean |h| per feature column over batch (and spatial) dims, in float32.

        For a conv map feeding a conv: one value per channel. For a conv map flattened into a Linear: one value
        per flattened column (``n_units * cols_per_unit``, channel-major)."""
        return (h if self.nonnegative else h.abs()).mean(self.feature_dims(h), dtype=torch.float32)

    def per_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Sum a per-column statistic (length :attr:`n_features`) over each unit's columns."""
        return x if self.cols_per_unit == 1 else x.view(-1, self.cols_per_unit).sum(1)

    def out_columns(self, idx: torch.Tensor) -> torch.Tensor:
        """Input-column indices of ``out_layer`` fed by units ``idx``."""
        if self.cols_per_unit == 1:
            return idx
        k = self.cols_per_unit
        return (idx[:, None] * k + torch.arange(k, device=idx.device)).reshape(-1)

    def out_magnitude(self, rows: torch.Tensor | None = None, per_column: bool = False,
                      layer: nn.Module | None = None) -> torch.Tensor:
        """Sum of |outgoing weights| per unit (over output rows, kernel positions, flattened columns and, for a
        residual group, every consumer).

        ``rows``: only these output rows (e.g. the rows a replacement in the next layer is about to redraw).
        ``per_column``: one sum per outgoing column instead of per unit (length :attr:`n_features`).
        ``layer``: only this one of :attr:`outgoing`.
        """
        s = sum(column_abs_sum(o.weight.detach(), rows) for o in ([layer] if layer is not None else self.outgoing))
        return s if per_column else self.per_unit(s)

    def in_magnitude(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Mean |incoming weight| per unit (only units ``rows`` if given)."""
        w = self.in_layer.weight.detach()
        if rows is not None:
            return w.index_select(0, rows).abs_().flatten(1).mean(1)
        return abs_sums(w, rows=True, cols=False)[0] / w[0].numel()


def column_abs_sum(w: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ|w|`` per input column of a weight (summed over output rows and kernel positions)."""
    if rows is not None:
        return w.index_select(0, rows).abs_().sum([0, *range(2, w.dim())])
    return abs_sums(w, rows=False, cols=True)[1]


_WORKSPACE: dict[tuple, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}


def _workspace(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """A reusable |chunk| buffer and ones vectors for weights shaped like ``w`` (CPU): no allocation per call."""
    key = (tuple(w.shape[1:]), w.dtype)
    if key not in _WORKSPACE:
        _WORKSPACE[key] = (torch.empty((_CHUNK, *w.shape[1:]), dtype=w.dtype),
                           torch.ones(w.shape[1], dtype=w.dtype) if w.dim() == 2 else None,
                           torch.ones(_CHUNK, dtype=w.dtype))
    return _WORKSPACE[key]


def abs_sums(w: torch.Tensor, rows: bool = True, cols: bool = True, out_rows: torch.Tensor | None = None,
             out_cols: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``Σ|w|`` per output row and/or per input column of a weight, in one pass over it.

    Rows sum over inputs and kernel positions, columns over outputs and kernel positions; ``out_rows`` and
    ``out_cols`` receive them if given. On the CPU the weight is read in cache-sized chunks through one small
    reused buffer: no |w|-sized temporary (allocating one costs page faults on every call, and on a
    memory-bound batch-1 step this read is continual backprop's main cost).
    """
    w = w.detach()
    col_dims = [0, *range(2, w.dim())]
    if w.device.type != "cpu" or w.shape[0] <= _CHUNK:
        a = w.abs()
        r = c = None
        if rows:
            r = torch.sum(a.flatten(1), 1, out=out_rows) if out_rows is not None else a.flatten(1).sum(1)
        if cols:
            c = torch.sum(a, col_dims, out=out_cols) if out_cols is not None else a.sum(col_dims)
        return r, c
    buf, ones_in, ones_chunk = _workspace(w)
    r = (out_rows if out_rows is not None else torch.empty(w.shape[0], dtype=w.dtype)) if rows else None
    c = None
    if cols:
        c = out_cols.zero_() if out_cols is not None else torch.zeros(w.shape[1], dtype=w.dtype)
    for i in range(0, w.shape[0], _CHUNK):
        chunk = w[i:i + _CHUNK]
        k = chunk.shape[0]
        a = torch.abs(chunk, out=buf[:k])
        if ones_in is not None:  # a matrix: both sums as matrix-vector products on the cached chunk (faster)
            if r is not None:
                torch.mv(a, ones_in, out=r[i:i + k])
            if c is not None:
                c.addmv_(a.t(), ones_chunk[:k])
            continue
        if r is not None:
            torch.sum(a.flatten(1), 1, out=r[i:i + k])
        if c is not None:
            c += a.sum(col_dims)
    return r, c


def find_unit_groups(model: nn.Module) -> tuple[list[UnitGroup], dict[str, str]]:
    """See :func:`lopbook.algos.discovery.find_unit_groups` (kept here so ``units`` is the one import)."""
    from .discovery import find_unit_groups as find

    return find(model)


# ---------------------------------------------------------------------------------------- feature hooks

class FeatureHooks:
    """Hooks that capture each group's unit features in the training forward and reduce them at once.

    ``at="consumer"`` (continual backprop) records what the next layer consumes: the input of ``out_layer``,
    i.e. the features after any pooling, dropout and flatten between the activation and that layer (for a
    residual group, the output of its ``act``: the unit's own term in the residual sum).
    ``at="activation"`` (ReDo) records the activation module's output.

    ``reducer(i, h)`` receives group ``i``'s detached features and returns what is stored in ``latest[i]``
    (e.g. mean |h| over batch and spatial dims). Only forwards with grad enabled are recorded (the training
    forward; evaluation under ``torch.no_grad()`` is ignored); the latest one wins. Set ``enabled=False`` to
    skip the reduction entirely on steps that do not need it.
    """

    def __init__(self, groups: Sequence[UnitGroup], reducer: Callable[[int, torch.Tensor], Any],
                 at: str = "consumer"):
        if at not in ("consumer", "activation"):
            raise ValueError(f"at must be 'consumer' or 'activation', got {at!r}")
        self.groups = list(groups)
        self.reducer = reducer
        self.at = at
        self.latest: list[Any] = [None] * len(self.groups)
        self.enabled = True
        self._handles = [self._register(i, g) for i, g in enumerate(self.groups)]

    def _register(self, i: int, g: UnitGroup) -> Any:
        if self.at == "activation" or g.residual:
            return g.act.register_forward_hook(self._make_hook(i, g.act, output=True))
        return g.out_layer.register_forward_pre_hook(self._make_hook(i, g.out_layer, output=False))

    def _make_hook(self, i: int, target: nn.Module, output: bool) -> Callable:
        def hook(module: nn.Module, inputs: Any, out: Any = None) -> None:
            # `module is target`: a deepcopy of the model carries this hook along; its forwards must not count
            if self.enabled and torch.is_grad_enabled() and module is target:
                self.latest[i] = self.reducer(i, (out if output else inputs[0]).detach())
        return hook

    def clear(self) -> None:
        self.latest = [None] * len(self.groups)

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []


# ------------------------------------------------------------------------------------------ re-init

_GAINS = {nn.ReLU: math.sqrt(2.0), nn.ELU: math.sqrt(2.0), nn.SiLU: math.sqrt(2.0), nn.GELU: math.sqrt(2.0),
          nn.Mish: math.sqrt(2.0), nn.ReLU6: math.sqrt(2.0), nn.CELU: math.sqrt(2.0), nn.Tanh: 5.0 / 3.0,
          nn.Sigmoid: 1.0, nn.SELU: 0.75, nn.Softplus: math.sqrt(2.0)}


def activation_gain(act: nn.Module) -> float:
    """``nn.init.calculate_gain`` for an activation module (ReLU-like activations get √2, as upstream)."""
    if isinstance(act, nn.LeakyReLU):
        return nn.init.calculate_gain("leaky_relu", act.negative_slope)
    for cls, g in _GAINS.items():
        if isinstance(act, cls):
            return g
    return 1.0


def init_bound(group: UnitGroup, init: str) -> tuple[str, float]:
    """``("uniform", b)`` for U(-b, b) or ``("normal", std)`` for N(0, std²) of the group's incoming weights."""
    w = group.in_layer.weight
    receptive = int(w[0, 0].numel())
    fan_in = int(w.shape[1]) * receptive
    fan_out = int(w.shape[0]) * receptive
    gain = activation_gain(group.act)
    if init == "default":  # torch's own Linear/Conv init: kaiming_uniform(a=√5) -> U(±1/√fan_in)
        return "uniform", 1.0 / math.sqrt(fan_in)
    if init == "kaiming_uniform":
        return "uniform", gain * math.sqrt(3.0 / fan_in)
    if init == "kaiming_normal":
        return "normal", gain / math.sqrt(fan_in)
    if init == "xavier":
        return "uniform", gain * math.sqrt(6.0 / (fan_in + fan_out))
    if init == "lecun":
        return "uniform", math.sqrt(3.0 / fan_in)
    raise ValueError(f"unknown init {init!r}; choose one of {INIT_NAMES}")


def check_init(init: str) -> None:
    if init not in INIT_NAMES:
        raise ValueError(f"unknown init {init!r}; choose one of {INIT_NAMES}")


def _zero_state(optimizer: torch.optim.Optimizer | None, p: torch.Tensor, index: torch.Tensor, dim: int) -> None:
    """Zero every per-element optimizer state tensor of ``p`` (momentum_buffer, exp_avg, exp_avg_sq,
    max_exp_avg_sq, ...) along ``dim`` at ``index``. Adam's scalar ``step`` is left alone; instead the entries
    get their own step count (:mod:`lopbook.algos.adam_ages`), so they are bias-corrected like fresh ones."""
    if optimizer is None:
        return
    state = optimizer.state.get(p)
    if not state:
        return
    for v in state.values():
        if torch.is_tensor(v) and v.shape == p.shape:
            v.index_fill_(dim, index, 0.0)
    ages = entry_ages(optimizer)  # Adam: these entries now count their own steps (bias correction)
    if ages is not None:
        ages.mark(p, index, dim)


@torch.no_grad()
def reinit_units(group: UnitGroup, idx: torch.Tensor, init: str = "default",
                 optimizer: torch.optim.Optimizer | None = None, bias_shift: torch.Tensor | None = None) -> None:
    """Re-initialise units ``idx`` of ``group`` in place (see the module docstring for what that means).

    ``bias_shift`` (optional) is the replaced units' mean feature, one value per unit or per outgoing column
    (``out_columns(idx)``): before zeroing, the mean contribution ``W_out[:, cols]·shift`` is added to the
    outgoing layer's bias, so the expected output is kept.
    """
    if idx.numel() == 0:
        return
    w_in = group.in_layer.weight
    idx = idx.to(w_in.device)
    kind, scale = init_bound(group, init)
    new = torch.empty((idx.numel(), *w_in.shape[1:]), device=w_in.device, dtype=w_in.dtype)
    if kind == "uniform":
        new.uniform_(-scale, scale)
    else:
        new.normal_(0.0, scale)
    w_in.index_copy_(0, idx, new)
    _zero_state(optimizer, w_in, idx, 0)
    if group.in_layer.bias is not None:
        group.in_layer.bias.index_fill_(0, idx, 0.0)
        _zero_state(optimizer, group.in_layer.bias, idx, 0)
    norm = group.norm
    if norm is not None:
        if getattr(norm, "weight", None) is not None:
            # a residual unit is silenced here (scale 0): its term in the residual sum is 0 on every path
            norm.weight.index_fill_(0, idx, 0.0 if group.residual and group.silence_at_norm else 1.0)
            _zero_state(optimizer, norm.weight, idx, 0)
        if getattr(norm, "bias", None) is not None:
            norm.bias.index_fill_(0, idx, 0.0)
            _zero_state(optimizer, norm.bias, idx, 0)
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
            norm.running_mean.index_fill_(0, idx, 0.0)
            norm.running_var.index_fill_(0, idx, 1.0)
    if group.residual:
        if bias_shift is not None:
            raise ValueError(f"bias transfer is not defined for the residual units of '{group.name}'")
        if not group.silence_at_norm:  # as the authors' ResGnT: zero what reads the unit through weights
            for layer in group.outgoing:
                layer.weight.index_fill_(1, idx, 0.0)
                _zero_state(optimizer, layer.weight, idx, 1)
        return
    w_out = group.out_layer.weight
    cols = group.out_columns(idx)
    if bias_shift is not None:
        if group.out_layer.bias is None:
            raise ValueError(f"bias transfer needs a bias on '{group.extra.get('out_name')}'")
        shift = bias_shift.to(w_out.dtype)
        if shift.numel() != cols.numel():
            shift = shift.repeat_interleave(group.cols_per_unit)
        sel = w_out.index_select(1, cols)
        if sel.dim() > 2:  # conv consumer: every kernel tap sees the mean activation (edges ignored)
            sel = sel.flatten(2).sum(2)
        group.out_layer.bias.add_(sel @ shift)
    w_out.index_fill_(1, cols, 0.0)
    _zero_state(optimizer, w_out, cols, 1)
