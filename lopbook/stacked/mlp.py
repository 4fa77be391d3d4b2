"""Many independent ReLU MLPs as one set of stacked tensors.

Run ``r`` of a :class:`StackedMLP` is the network ``x -> relu(x W_0[r] + b_0[r]) -> ... -> x W_L[r] + b_L[r]``.
Weights are stored ``(R, fan_in, fan_out)`` (the transpose of ``nn.Linear.weight``, so a forward pass is one
``torch.baddbmm`` per layer) and biases ``(R, 1, fan_out)``. Inputs are ``(R, B, fan_in)``: every run gets its
own minibatch (runs of the same seed get the same one).

The backward pass is written out by hand (:meth:`StackedMLP.sgd_step`): for cross-entropy on ReLU layers the
gradient is three lines per layer, and fusing it with the SGD update (``W.baddbmm_(h^T, δ, alpha=-1)``) reads
and writes each weight tensor once per step. ``benchmarks/bench_stacked.py`` measures it against the same step
through ``torch.autograd`` (the hand-written step is faster on a CPU at batch size 1, where per-op overhead and
memory traffic dominate).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["StackedMLP"]


class StackedMLP:
    """``R`` ReLU MLPs of the same shape, trained side by side.

    Args:
        weights: per layer (hidden layers, then the output layer), ``(R, fan_in, fan_out)`` float tensors.
        biases: per layer, ``(R, 1, fan_out)``.

    Build one from ordinary :class:`lopbook.nets.MLP` modules with :meth:`from_modules` (so each run starts from
    exactly the weights a seeded ``MLP`` gets), and write a run back with :meth:`copy_to_module`.
    """

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> None:
        if len(weights) < 2 or len(weights) != len(biases):
            raise ValueError(f"need >= 2 layers with one bias each, got {len(weights)} weights, {len(biases)} biases")
        runs = weights[0].shape[0]
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            if w.dim() != 3 or w.shape[0] != runs or b.shape != (runs, 1, w.shape[2]):
                raise ValueError(f"layer {i}: weight {tuple(w.shape)} / bias {tuple(b.shape)} is not "
                                 f"(R, fan_in, fan_out) / (R, 1, fan_out) with R = {runs}")
            if i and w.shape[1] != weights[i - 1].shape[2]:
                raise ValueError(f"layer {i} takes {w.shape[1]} inputs but layer {i - 1} has {weights[i - 1].shape[2]}")
        self.weights = [w.contiguous() for w in weights]
        self.biases = [b.contiguous() for b in biases]

    @classmethod
    def from_modules(cls, models: Sequence[nn.Module]) -> StackedMLP:
        """Stack the Linear layers of ``models`` (each a ReLU MLP such as :class:`lopbook.nets.MLP`)."""
        per_model = [[m for m in model.modules() if isinstance(m, nn.Linear)] for model in models]
        if not per_model or any(len(p) != len(per_model[0]) for p in per_model):
            raise ValueError("models must be non-empty and all have the same number of Linear layers")
        for model in models:
            acts = [m for m in model.modules() if not isinstance(m, (nn.Linear, nn.Sequential)) and m is not model]
            if any(not isinstance(a, nn.ReLU) for a in acts):
                raise ValueError(f"StackedMLP supports Linear + ReLU networks only; {type(model).__name__} has "
                                 f"{sorted({type(a).__name__ for a in acts})}; use lopbook.engine for others")
        with torch.no_grad():
            weights = [torch.stack([p[i].weight.detach().T for p in per_model]) for i in range(len(per_model[0]))]
            biases = [torch.stack([p[i].bias.detach() for p in per_model]).unsqueeze(1)
                      for i in range(len(per_model[0]))]
        return cls(weights, biases)

    @torch.no_grad()
    def copy_to_module(self, r: int, model: nn.Module) -> None:
        """Write run ``r``'s parameters into ``model`` (an MLP of the same shape)."""
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if len(linears) != len(self.weights):
            raise ValueError(f"model has {len(linears)} Linear layers, the stack {len(self.weights)}")
        for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
            lin.weight.copy_(w[r].T)
            lin.bias.copy_(b[r, 0])

    @property
    def runs(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def widths(self) -> list[int]:
        """Hidden-layer widths."""
        return [int(w.shape[2]) for w in self.weights[:-1]]

    def to(self, device: str | torch.device) -> StackedMLP:
        self.weights = [w.to(device) for w in self.weights]
        self.biases = [b.to(device) for b in self.biases]
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits ``(R, B, classes)`` and the post-ReLU features of every hidden layer (each ``(R, B, width)``)."""
        hidden: list[Tensor] = []
        h = x
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = torch.baddbmm(b, h, w).clamp_min_(0.0)
            hidden.append(h)
        return torch.baddbmm(self.biases[-1], h, self.weights[-1]), hidden

    @torch.no_grad()
    def sgd_step(self, x: Tensor, hidden: Sequence[Tensor], g_out: Tensor,
                 decay: tuple[slice, Tensor] | None = None) -> None:
        """Backpropagate ``g_out`` (∂loss/∂logits already multiplied by each run's step size) and apply
        ``θ ← θ − g`` to every layer, top layer first.

        ``decay=(runs, factor)``: coupled L2 for the runs in the slice, ``θ ← factor·θ − g`` with
        ``factor = 1 − lr·λ`` of shape ``(n, 1, 1)`` (``torch.optim.SGD``'s ``weight_decay``).
        Each layer's input gradient is computed from its weights *before* they are updated, so this is exactly
        one SGD step on the loss (up to float rounding).
        """
        g = g_out
        inputs = [x, *hidden]
        for i in range(len(self.weights) - 1, -1, -1):
            w, b, h_in = self.weights[i], self.biases[i], inputs[i]
            g_below = torch.bmm(g, w.transpose(1, 2)).mul_(h_in > 0) if i > 0 else None
            if decay is not None:
                w[decay[0]].mul_(decay[1])
                b[decay[0]].mul_(decay[1])
            w.baddbmm_(h_in.transpose(1, 2), g, alpha=-1.0)
            b.sub_(g.sum(1, keepdim=True))
            g = g_below

    def parameters(self) -> list[Tensor]:
        """Weights then biases, layer by layer (the order of :meth:`state_dict`)."""
        return [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]

    def state_dict(self) -> dict[str, list[Tensor]]:
        return {"weights": [w.cpu().clone() for w in self.weights], "biases": [b.cpu().clone() for b in self.biases]}

    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        dev = self.weights[0].device
        for dst, src in zip(self.weights + self.biases, state["weights"] + state["biases"], strict=True):
            if dst.shape != src.shape:
                raise ValueError(f"checkpoint tensor {tuple(src.shape)} does not match {tuple(dst.shape)}")
            dst.copy_(src.to(dev))
