"""Automatic discovery of replaceable unit groups by ``torch.fx`` tracing (see :mod:`lopbook.algos.units`)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .units import UnitDiscoveryError, UnitGroup

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


def _is_add(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add))
            or (node.op == "call_method" and node.target in ("add", "add_")))


def _silences_at_zero(act: nn.Module | None) -> bool:
    """Whether ``act(0) == 0``, so a unit whose norm output is 0 outputs 0."""
    if act is None:
        return True
    try:
        with torch.no_grad():
            return bool(act(torch.zeros(1, 1)).abs().max() == 0)
    except Exception:  # noqa: BLE001 - a custom activation that cannot take a (1, 1) input: not provable
        return False


def _dead_at_zero(act: nn.Module | None) -> bool:
    """Whether ``act`` has zero gradient at 0 (ReLU): a unit silenced before it would never learn again."""
    if act is None:
        return False
    try:
        with torch.enable_grad():
            x = torch.zeros(1, 1, requires_grad=True)
            act(x).sum().backward()
    except Exception:  # noqa: BLE001 - cannot tell: assume the worst (treat the unit as the authors do)
        return True
    return x.grad is None or bool(x.grad.abs().max() == 0)


def _stream_consumers(term: fx.Node, modules: dict[str, nn.Module]) -> tuple[list[tuple[str, nn.Module]], str]:
    """Weight layers that read a residual unit's output: through its own residual sum (when the unit's term
    feeds one directly), then activations, pooling and flatten, but not through a later sum (there the stream
    also carries the following block's units). Returns ``(consumers, reason)``; reason is "" if all is well."""
    start = [term]
    users = list(term.users)
    if len(users) == 1 and _is_add(users[0]):
        start = [users[0]]  # the unit's own residual sum
    consumers: list[tuple[str, nn.Module]] = []
    stack, seen = list(start), set()
    while stack:
        node = stack.pop()
        for u in node.users:
            if u in seen:
                continue
            seen.add(u)
            mod = modules.get(u.target) if u.op == "call_module" else None
            if mod is not None and isinstance(mod, WEIGHT_TYPES):
                consumers.append((str(u.target), mod))
            elif _is_add(u) or u.op == "output":
                continue
            elif mod is not None and (_is_activation(mod) or isinstance(mod, (*PASS_TYPES, nn.Flatten))):
                stack.append(u)
            elif _is_flatten(u) or (u.op == "call_function" and u.target in _PASS_FUNCS):
                stack.append(u)
            else:
                return [], f"the residual stream after it reaches unsupported op '{u.name}' ({u.op} {u.target})"
    return consumers, ""


def find_unit_groups(model: nn.Module) -> tuple[list[UnitGroup], dict[str, str]]:
    """Find every replaceable unit group of ``model`` by ``torch.fx`` symbolic tracing.

    Two kinds of group (see :mod:`lopbook.algos.units`):

    * *plain*: ``Linear/Conv -> [norm] -> activation -> [pool/dropout/flatten] -> Linear/Conv`` with a single
      consumer; a replacement zeroes the unit's outgoing columns.
    * *residual*: ``Linear/Conv -> BatchNorm -> [activation with act(0) = 0]`` whose output feeds a residual sum
      or several layers (the stem and every block's last conv of a ResNet). A replacement sets the unit's BN
      scale and shift to 0, which silences it on every path; its consumers (the weight layers that read the
      stream next) are only used for its utility. Where an activation with zero gradient at 0 (ReLU) follows
      the BN (a ResNet stem), a silenced unit could never learn again; there the BN goes back to identity and
      the consumers' input columns are zeroed (``silence_at_norm=False``), and the skip path still carries
      the new unit.

    A weight layer with ``replaceable = False`` set on the module is skipped (e.g. ResNet projection
    shortcuts). Returns ``(groups, skipped)`` where ``skipped`` maps each weight layer that is *not* a group to
    the reason (output layer, no norm before a residual sum, ...). Raises :class:`UnitDiscoveryError` with the
    fix when the model cannot be traced, uses functional activations, or reuses one activation module twice.
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
        if not getattr(in_layer, "replaceable", True):
            skipped[name] = "marked replaceable = False"
            continue
        if isinstance(in_layer, (nn.Conv1d, nn.Conv2d)) and in_layer.groups != 1:
            skipped[name] = "grouped/depthwise convolution (not supported)"
            continue
        n = int(in_layer.weight.shape[0])
        norm = act = None
        act_name = ""
        flattened = False
        cur = node
        reason = None
        consumer = None
        residual: fx.Node | None = None  # the node whose output is a residual unit's term
        while consumer is None and reason is None and residual is None:
            users = list(cur.users)
            if len(users) != 1 or _is_add(users[0]):
                if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.affine and _silences_at_zero(act):
                    residual = cur
                    break
                if len(users) != 1:
                    reason = (f"output of '{cur.name}' has {len(users)} consumers (a skip connection) and no "
                              "BatchNorm before them to silence a unit on every path")
                else:
                    reason = f"feeds a residual sum ('{users[0].name}') with no BatchNorm before it to silence a unit"
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
            else:
                reason = f"followed by unsupported op '{nxt.name}' ({nxt.op} {nxt.target})"
            cur = nxt
        if reason is not None:
            skipped[name] = reason
            continue
        if residual is not None:
            group, why = _residual_group(name, in_layer, norm, act, act_name, residual, modules)
            if group is None:
                skipped[name] = why
            else:
                groups.append(group)
            continue
        out_name, out_layer = consumer
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
              "[pool/dropout/flatten] -> Linear/Conv with a single consumer, or Linear/Conv -> BatchNorm -> "
              "[activation] -> residual sum (a custom activation module is recognised if its class has "
              "is_activation = True).")
    return groups, skipped


def _residual_group(name: str, in_layer: nn.Module, norm: nn.Module, act: nn.Module | None, act_name: str,
                    term: fx.Node, modules: dict[str, nn.Module]) -> tuple[UnitGroup | None, str]:
    n = int(in_layer.weight.shape[0])
    consumers, why = _stream_consumers(term, modules)
    if why:
        return None, why
    if not consumers:
        return None, "its residual stream reaches no weight layer (output layer)"
    for cname, c in consumers:
        if int(c.weight.shape[1]) != n or (isinstance(c, (nn.Conv1d, nn.Conv2d)) and c.groups != 1):
            return None, f"'{cname}' does not take the {n} units of '{name}' as its input channels"
    probe = act if act is not None else norm  # the module whose output is the unit's term
    names = [c for c, _ in consumers]
    return UnitGroup(name=name, in_layer=in_layer, act=probe, out_layer=consumers[0][1], norm=norm,
                     residual=True, consumers=[c for _, c in consumers], silence_at_norm=not _dead_at_zero(act),
                     extra={"act_name": act_name or str(term.target), "out_name": names[0],
                            "consumer_names": names}), ""
