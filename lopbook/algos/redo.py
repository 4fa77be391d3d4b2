"""ReDo (Sokar et al., 2023): periodically recycle τ-dormant units.

Every ``reset_period`` steps, on the features of that step's training forward, each unit gets the score
``s_u = E|h_u| / mean_{v in layer} E|h_v|`` (expectation over the batch and spatial positions; the ReDo code
divides by the layer *mean*, not the sum, as its authors confirmed). Units with ``s_u <= threshold`` are
re-initialised exactly like CBP replacements (:func:`lopbook.algos.units.reinit_units`): new incoming weights,
incoming bias 0, outgoing weights 0 and their optimizer state (Adam moments, SGD momentum) zeroed, as the
ReDo paper does (upstream ``GnTredo`` did not reset optimizer state); with Adam the reset entries also count
their own steps (:mod:`lopbook.algos.adam_ages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .adam_ages import ages_state, load_ages_state
from .units import FeatureHooks, UnitGroup, check_init, find_unit_groups, reinit_units


class ReDo:
    """Recycle dormant units every ``reset_period`` optimizer steps.

    Args:
        model: the network; unit groups are discovered as for :class:`~lopbook.algos.ContinualBackprop`.
        optimizer: its per-element state of reset entries is zeroed (``None`` skips that).
        threshold: τ; a unit with normalised score ``<= τ`` is reset (0.1 in the paper's RL runs).
        reset_period: steps between resets (100 in the paper's RL runs).
        init: distribution of new incoming weights (see :func:`lopbook.algos.units.init_bound`).
        groups: explicit unit groups instead of automatic discovery.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, threshold: float = 0.1,
                 reset_period: int = 100, init: str = "default", groups: Sequence[UnitGroup] | None = None):
        if not threshold >= 0.0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if reset_period < 1 or int(reset_period) != reset_period:
            raise ValueError(f"reset_period must be an integer >= 1 (optimizer steps), got {reset_period}")
        check_init(init)
        self.model, self.optimizer = model, optimizer
        self.threshold, self.reset_period, self.init = float(threshold), int(reset_period), init
        if groups is None:
            groups, skipped = find_unit_groups(model)
        else:
            skipped = {}
        self.groups, self.skipped = list(groups), skipped
        self.steps = 0
        self.n_reset = [0] * len(self.groups)
        self.last_scores: list[torch.Tensor | None] = [None] * len(self.groups)
        # ReDo's dormancy is a property of the activation itself (its paper scores activation outputs)
        self.hooks = FeatureHooks(self.groups, lambda i, h: self.groups[i].mean_abs(h), at="activation")
        self._arm()

    def _arm(self) -> None:
        # Only the forward right before a reset step is reduced: no hook cost on the other steps.
        self.hooks.enabled = (self.steps + 1) % self.reset_period == 0

    @torch.no_grad()
    def step(self) -> int:
        """Count one optimizer step; on every ``reset_period``-th, reset the dormant units. Returns how many."""
        self.steps += 1
        total = 0
        if self.steps % self.reset_period == 0:
            if all(f is None for f in self.hooks.latest):
                raise RuntimeError("ReDo.step() saw no features on a reset step: call it after a training "
                                   "forward (grad enabled), backward and optimizer.step() of its model")
            for i in reversed(range(len(self.groups))):  # deepest first, as in ContinualBackprop.step
                g, f = self.groups[i], self.hooks.latest[i]
                if f is None:
                    continue
                score = f / (f.mean() + 1e-9)
                self.last_scores[i] = score
                idx = torch.nonzero(score <= self.threshold).flatten()
                reinit_units(g, idx, self.init, self.optimizer)
                k = int(idx.numel())
                self.n_reset[i] += k
                total += k
            self.hooks.clear()
        self._arm()
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "n_reset": list(self.n_reset),
                "hparams": {"threshold": self.threshold, "reset_period": self.reset_period, "init": self.init},
                "adam_entry_ages": ages_state(self.optimizer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["n_reset"]) != len(self.groups):
            raise ValueError(f"checkpoint has {len(state['n_reset'])} groups, this model {len(self.groups)}")
        self.steps = int(state["steps"])
        self.n_reset = [int(n) for n in state["n_reset"]]
        load_ages_state(self.optimizer, state.get("adam_entry_ages"))
        self._arm()

    def remove(self) -> None:
        """Remove the forward hooks."""
        self.hooks.remove()
