"""Fully connected networks with activations as modules (so forward hooks see every hidden feature).

Initialisation follows the authors' code (the paper's Methods; the differences appendix of the book lists where lopbook departs):

- ``init="kaiming"`` (SCR, permuted MNIST): hidden weights ``U(-b, b)`` with ``b = gain * sqrt(3 / fan_in)``
  where ``gain = torch.nn.init.calculate_gain(activation)``; swish/silu, elu and gelu use ReLU's gain (torch has
  no gain for them). The output layer uses gain 1 ('linear'). All biases 0.
- ``init="lecun"`` (PPO): every layer, output included, ``U(-b, b)`` with ``b = sqrt(3 / fan_in)``; biases 0.
- ``init="xavier"``: ``U(-b, b)`` with ``b = gain * sqrt(6 / (fan_in + fan_out))``; biases 0.
- ``init="default"``: PyTorch's own ``nn.Linear`` initialisation (weights and biases ``U(±1/sqrt(fan_in))``).

Every Linear layer's weight bound is recorded in :attr:`MLP.init_bounds`, so a unit-reinitialising method
(CBP, ReDo) can draw new input weights from the same distribution the network started from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

INITS = ("kaiming", "lecun", "xavier", "default")


class IdentityActivation(nn.Identity):
    """The 'linear' activation. A distinct type, so feature collectors can tell a hidden 'linear' activation
    apart from an ``nn.Identity`` used as a placeholder elsewhere."""


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01, the value torch's leaky_relu gain assumes
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "linear": IdentityActivation,
    "identity": IdentityActivation,
}
ACTIVATION_NAMES: tuple[str, ...] = tuple(_ACTIVATIONS)

# name -> the nonlinearity string handed to torch.nn.init.calculate_gain (upstream: swish and elu use relu's)
_GAIN_NAME = {
    "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "elu": "relu", "leaky_relu": "leaky_relu",
    "swish": "relu", "silu": "relu", "selu": "selu", "gelu": "relu", "linear": "linear", "identity": "linear",
}


def _check_activation(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATION_NAMES)}")
    return name.lower()


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATION_NAMES`, case-insensitive)."""
    return _ACTIVATIONS[_check_activation(name)]()


def activation_gain(name: str) -> float:
    """The kaiming gain the authors used for activation ``name`` (swish/silu, elu, gelu: ReLU's sqrt(2))."""
    return nn.init.calculate_gain(_GAIN_NAME[_check_activation(name)])


def init_bound(fan_in: int, fan_out: int, init: str, gain: float) -> float:
    """Half-width ``b`` of the uniform distribution ``U(-b, b)`` that ``init`` draws weights from."""
    if init == "kaiming":
        return gain * math.sqrt(3.0 / fan_in)
    if init == "lecun":
        return math.sqrt(3.0 / fan_in)
    if init == "xavier":
        return gain * math.sqrt(6.0 / (fan_in + fan_out))
    if init == "default":  # nn.Linear.reset_parameters: kaiming_uniform(a=sqrt(5)) -> 1/sqrt(fan_in)
        return 1.0 / math.sqrt(fan_in)
    raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")


class MLP(nn.Module):
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim`` with an activation after every hidden layer.

    Args:
        in_dim, out_dim: input and output sizes.
        hidden: widths of the hidden layers (may be empty: a linear model).
        activation: one name for every hidden layer, or one name per hidden layer (e.g. ``["relu", "tanh"]``).
        layer_norm: insert ``nn.LayerNorm(width)`` between each hidden Linear and its activation (the
            "layer-norm variant"; not in the authors' code).
        init: ``"kaiming"`` (default), ``"lecun"``, ``"xavier"`` or ``"default"`` (see the module docstring).

    Structure: ``self.layers`` is an ``nn.Sequential`` of ``[Linear, (LayerNorm), act, Linear, (LayerNorm), act,
    ..., Linear]``. Convenience views: :attr:`hidden_linears`, :attr:`norms` (empty without layer norm),
    :attr:`activations` (one module per hidden layer, never shared) and :attr:`head` (the output Linear).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int,
                 activation: str | Sequence[str] = "relu", layer_norm: bool = False, init: str = "kaiming") -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"layer sizes must be positive, got in_dim={in_dim}, hidden={hidden}, out_dim={out_dim}")
        if isinstance(activation, str):
            acts = [_check_activation(activation)] * len(hidden)
        else:
            acts = [_check_activation(a) for a in activation]
            if len(acts) != len(hidden):
                raise ValueError(f"got {len(acts)} activations for {len(hidden)} hidden layers; pass one name, "
                                 f"or exactly one per hidden layer")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        self.in_dim, self.out_dim, self.hidden = int(in_dim), int(out_dim), tuple(hidden)
        self.activation_names: tuple[str, ...] = tuple(acts)
        self.layer_norm, self.init = bool(layer_norm), init

        modules: list[nn.Module] = []
        self.hidden_linears: list[nn.Linear] = []
        self.norms: list[nn.LayerNorm] = []
        self.activations: list[nn.Module] = []
        width = self.in_dim
        for h, act in zip(hidden, acts, strict=True):
            lin = nn.Linear(width, h)
            modules.append(lin)
            self.hidden_linears.append(lin)
            if layer_norm:
                norm = nn.LayerNorm(h)
                modules.append(norm)
                self.norms.append(norm)
            a = make_activation(act)
            modules.append(a)
            self.activations.append(a)
            width = h
        modules.append(nn.Linear(width, self.out_dim))
        # The plain lists above are views (not registered), so each module has exactly one name, "layers.<i>".
        self.layers = nn.Sequential(*modules)
        self.init_bounds: list[float] = []
        self.reset_parameters()

    @property
    def head(self) -> nn.Linear:
        """The output layer (``self.layers[-1]``)."""
        return self.layers[-1]  # type: ignore[return-value]

    def gains(self) -> list[float]:
        """Per Linear layer (hidden ones, then the head): the gain its init uses."""
        return [activation_gain(a) for a in self.activation_names] + [1.0]

    def reset_parameters(self) -> None:
        """(Re-)initialise every layer exactly as at construction (see the module docstring)."""
        linears = [*self.hidden_linears, self.head]
        self.init_bounds = []
        for lin, gain in zip(linears, self.gains(), strict=True):
            if self.init == "default":
                lin.reset_parameters()
            else:
                b = init_bound(lin.in_features, lin.out_features, self.init, gain)
                with torch.no_grad():
                    lin.weight.uniform_(-b, b)
                    lin.bias.zero_()
            self.init_bounds.append(init_bound(lin.in_features, lin.out_features, self.init, gain))
        for norm in self.norms:
            norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def extra_repr(self) -> str:
        return f"init={self.init!r}, activations={list(self.activation_names)}"
