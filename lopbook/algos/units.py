"""Shared unit machinery for unit-replacing methods (continual backprop, ReDo).

A *unit* is one output feature of a hidden ``nn.Linear`` or one output channel of a hidden ``nn.Conv1d/2d``.
A :class:`UnitGroup` is the chain that makes such units replaceable without changing the network's function::

    incoming layer -> [BatchNorm/LayerNorm] -> activation module -> [pool/dropout/flatten ...] -> outgoing layer

Re-initialising unit ``u`` means: new incoming weights (row ``u``) from an init distribution, incoming bias 0,
the norm layer's channel back to identity, **outgoing weights (column(s) ``u``) 0**, and the optimizer state of
exactly those entries zeroed. Because the only path out of the unit is the zeroed outgoing columns, the network
computes the same function right after the replacement.

Groups are found automatically with ``torch.fx`` (:func:`find_unit_groups`). A unit whose output has more than
one consumer (a residual sum, a skip connection) is *not* a group: zeroing one consumer would not silence it.
Features are captured by hooks (:class:`FeatureHooks`): for continual backprop, what the outgoing layer
consumes (after pooling/flatten), for ReDo the activation's output. They are reduced to per-unit (or per
outgoing column) statistics on the device right away, so no activation tensors are kept.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Softplus,
                    nn.Mish, nn.Hardtanh, nn.ReLU6, nn.CELU, nn.Hardswish, nn.Hardsigmoid, nn.PReLU)
PASS_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
              nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)
_PASS_FUNCS = {F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
               F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_FLATTEN_FUNCS = {torch.flatten}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_FUNCTIONAL_ACTS = {F.relu, torch.relu, F.relu_, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.gelu, F.silu,
                    F.leaky_relu, F.elu, F.selu, F.softplus, F.mish, F.hardtanh, F.relu6}
_METHOD_ACTS = {"relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_"}

_CHUNK = 64  # rows per chunk when summing |W_out| on the CPU

INIT_NAMES = ("default", "kaiming_uniform", "kaiming_normal", "xavier", "lecun")


class UnitDiscoveryError(ValueError):
    """The model cannot be analysed into unit groups; the message says how to fix the model."""


@dataclass
class UnitGroup:
    """One layer of replaceable units.

    Attributes:
        name: the incoming layer's qualified module name.
        in_layer: produces the units (row ``u`` of its weight, entry ``u`` of its bias).
        act: the activation module whose output are the unit features (hooked).
        out_layer: the only consumer; its input columns for unit ``u`` are ``cols_per_unit`` consecutive columns
            (1 unless a conv feature map is flattened into a Linear, then H*W).
        norm: optional BatchNorm/LayerNorm between ``in_layer`` and ``act``.
    """

    name: str
    in_layer: nn.Module
    act: nn.Module
    out_layer: nn.Module
    norm: nn.Module | None = None
    cols_per_unit: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

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

    def out_magnitude(self, rows: torch.Tensor | None = None, per_column: bool = False) -> torch.Tensor:
        """Sum of |outgoing weights| per unit (over output rows, kernel positions and flattened columns).

        ``rows``: only these output rows (e.g. the rows a replacement in the next layer is about to redraw).
        ``per_column``: one sum per outgoing column instead of per unit (length :attr:`n_features`).
        """
        w = self.out_layer.weight.detach()
        dims = [0, *range(2, w.dim())]  # output rows and kernel positions
        if rows is not None:
            s = w.index_select(0, rows).abs_().sum(dims)
        elif w.device.type == "cpu" and w.shape[0] > _CHUNK:
            # cache-sized chunks: one pass over memory instead of writing and re-reading a full |w| (this read
            # is CBP's main cost on a memory-bound CPU step; linalg.vector_norm over dim 0 is far slower)
            buf = torch.empty((_CHUNK, *w.shape[1:]), dtype=w.dtype)
            s = torch.zeros(w.shape[1], dtype=w.dtype)
            for i in range(0, w.shape[0], _CHUNK):
                c = w[i:i + _CHUNK]
                s += torch.abs(c, out=buf[:c.shape[0]]).sum(dims)
        else:
            s = w.abs().sum(dims)
        return s if per_column else self.per_unit(s)

    def in_magnitude(self) -> torch.Tensor:
        """Mean |incoming weight| per unit."""
        w = self.in_layer.weight.detach()
        return w.abs().flatten(1).mean(1)


# --------------------------------------------------------------------------------------------- discovery

def _is_activation(mod: nn.Module) -> bool:
    if isinstance(mod, ACTIVATION_TYPES):
        return True
    # lopbook's 'linear' activation is a distinct nn.Identity subclass: a hidden layer, not a pass-through
    return getattr(type(mod), "__name__", "") == "IdentityActivation" or bool(getattr(mod, "is_activation", False))


def _is_flatten(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _FLATTEN_FUNCS)
            or (node.op == "call_method" and node.target in _FLATTEN_METHODS))


def _is_functional_act(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _FUNCTIONAL_ACTS)
            or (node.op == "call_method" and node.target in _METHOD_ACTS))


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps activation modules (also custom ones) as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_activation(m) or super().is_leaf_module(m, qualname)


def find_unit_groups(model: nn.Module) -> tuple[list[UnitGroup], dict[str, str]]:
    """Find every replaceable unit group of ``model`` by ``torch.fx`` symbolic tracing.

    Returns ``(groups, skipped)`` where ``skipped`` maps each weight layer that is *not* a group to the reason
    (output layer, feeds a residual sum, no activation, ...). Raises :class:`UnitDiscoveryError` with the fix
    when the model cannot be traced, uses functional activations, or reuses one activation module twice.
    """
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
        raise UnitDiscoveryError(
            f"could not trace {type(model).__name__} with torch.fx ({type(e).__name__}: {e}). Make forward() "
            "free of data-dependent control flow, apply the method to a traceable sub-module (e.g. an "
            "nn.Sequential body), or pass groups=[UnitGroup(...)] explicitly.") from e
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    groups: list[UnitGroup] = []
    skipped: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], WEIGHT_TYPES):
            continue
        name = str(node.target)
        in_layer = modules[name]
        if isinstance(in_layer, (nn.Conv1d, nn.Conv2d)) and in_layer.groups != 1:
            skipped[name] = "grouped/depthwise convolution (not supported)"
            continue
        norm = act = None
        act_name = ""
        flattened = False
        cur = node
        reason = None
        consumer = None
        while consumer is None and reason is None:
            users = list(cur.users)
            if len(users) != 1:
                reason = (f"output of '{cur.name}' has {len(users)} consumers (e.g. a residual/skip "
                          "connection): zeroing one consumer would not silence the unit")
                break
            nxt = users[0]
            mod = modules.get(nxt.target) if nxt.op == "call_module" else None
            if mod is not None and isinstance(mod, WEIGHT_TYPES):
                if act is None:
                    reason = f"no activation module between '{name}' and '{nxt.target}'"
                elif (isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups != 1):
                    reason = f"consumer '{nxt.target}' is a grouped convolution"
                else:
                    consumer = (str(nxt.target), mod)
            elif mod is not None and isinstance(mod, NORM_TYPES) and act is None and norm is None:
                norm = mod
            elif mod is not None and _is_activation(mod) and act is None:
                if calls[nxt.target] > 1:
                    raise UnitDiscoveryError(
                        f"activation module '{nxt.target}' is called {calls[nxt.target]} times in forward(); "
                        "give every layer its own activation module (e.g. self.relu1 = nn.ReLU(), "
                        "self.relu2 = nn.ReLU()) so its forward hook sees one layer's features.")
                act, act_name = mod, str(nxt.target)
            elif mod is not None and isinstance(mod, nn.Flatten) and act is not None:
                flattened = True
            elif mod is not None and isinstance(mod, PASS_TYPES):
                pass
            elif _is_flatten(nxt) and act is not None:
                flattened = True
            elif nxt.op == "call_function" and nxt.target in _PASS_FUNCS:
                pass
            elif _is_functional_act(nxt):
                raise UnitDiscoveryError(
                    f"'{name}' is followed by the functional activation '{nxt.name}' ({nxt.target}). "
                    "Activations must be nn.Module instances (nn.ReLU(), nn.Tanh(), ...) so that forward hooks "
                    "can capture unit features; replace the functional call with a module.")
            elif nxt.op == "output":
                reason = "output layer"
            elif nxt.op == "call_function" and nxt.target in (operator.add, operator.iadd, torch.add):
                reason = f"feeds a residual sum ('{nxt.name}')"
            else:
                reason = f"followed by unsupported op '{nxt.name}' ({nxt.op} {nxt.target})"
            cur = nxt
        if reason is not None:
            skipped[name] = reason
            continue
        out_name, out_layer = consumer
        n = int(in_layer.weight.shape[0])
        conv_in = isinstance(in_layer, (nn.Conv1d, nn.Conv2d))
        cols = 1
        if conv_in and isinstance(out_layer, nn.Linear):
            if not flattened or out_layer.in_features % n != 0:
                skipped[name] = f"conv '{name}' feeds Linear '{out_name}' without a channel-major flatten"
                continue
            cols = out_layer.in_features // n
        elif not conv_in and not isinstance(out_layer, nn.Linear):
            skipped[name] = f"Linear '{name}' feeds non-Linear '{out_name}'"
            continue
        elif int(out_layer.weight.shape[1]) != n:
            skipped[name] = f"'{out_name}' does not take the {n} units of '{name}' as its input"
            continue
        if isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) != (n,):
            skipped[name] = f"LayerNorm after '{name}' normalises over {tuple(norm.normalized_shape)}, not units"
            continue
        groups.append(UnitGroup(name=name, in_layer=in_layer, act=act, out_layer=out_layer, norm=norm,
                                cols_per_unit=cols, extra={"act_name": act_name, "out_name": out_name}))
    if not groups:
        raise UnitDiscoveryError(
            f"found no replaceable hidden units in {type(model).__name__}: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
            + ". A unit group is Linear/Conv -> [BatchNorm/LayerNorm] -> activation module -> "
              "[pool/dropout/flatten] -> Linear/Conv with a single consumer (a custom activation module is "
              "recognised if its class has is_activation = True).")
    return groups, skipped


# ---------------------------------------------------------------------------------------- feature hooks

class FeatureHooks:
    """Hooks that capture each group's unit features in the training forward and reduce them at once.

    ``at="consumer"`` (continual backprop) records what the next layer consumes: the input of ``out_layer``,
    i.e. the features after any pooling, dropout and flatten between the activation and that layer.
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
        if self.at == "activation":
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
    max_exp_avg_sq, ...) along ``dim`` at ``index``. Scalar state (Adam's ``step``) is left alone."""
    if optimizer is None:
        return
    state = optimizer.state.get(p)
    if not state:
        return
    for v in state.values():
        if torch.is_tensor(v) and v.shape == p.shape:
            v.index_fill_(dim, index, 0.0)


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
            norm.weight.index_fill_(0, idx, 1.0)
            _zero_state(optimizer, norm.weight, idx, 0)
        if getattr(norm, "bias", None) is not None:
            norm.bias.index_fill_(0, idx, 0.0)
            _zero_state(optimizer, norm.bias, idx, 0)
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
            norm.running_mean.index_fill_(0, idx, 0.0)
            norm.running_var.index_fill_(0, idx, 1.0)
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
