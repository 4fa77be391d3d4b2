"""Cached weight magnitudes for continual backprop: ``Σ|w|`` per input column and per output row of a layer.

The contribution utility needs ``Σ_k |W_out[k, u]|`` per unit (column sums of the outgoing layer) and the
adaptable one also ``mean_j |W_in[u, j]|`` (row sums of the incoming layer). Reading every weight once per step
is CBP's main cost on a memory-bound CPU step (an MLP at batch 1), so :class:`LayerSums` reads each matrix once
for both, and with ``refresh = R > 1`` re-reads only a rotating ``1/R`` slice of its rows per step: every sum is
then at most ``R - 1`` steps old and the cost is spread evenly over the steps. Replacements keep the cache exact:
redrawn rows are re-read at once and zeroed columns set to 0.

Where plain SGD updates a weight matrix on the CPU, :class:`~lopbook.algos.fused_sgd.FusedSGDMagnitudes` computes
its sums inside the update itself and records the weight's autograd version; :meth:`LayerSums.refresh` then reads
nothing unless the weight has changed since.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .units import abs_sums


class LayerSums:
    """``Σ|w|`` of one weight layer, per output row (``rows``) and/or per input column (``cols``).

    Column sums are kept as one partial sum per row slice (``refresh`` slices), so refreshing a slice replaces
    its part exactly.
    """

    def __init__(self, layer: nn.Module, rows: bool, cols: bool, refresh: int = 1):
        self.layer = layer
        self.want_rows, self.want_cols = rows, cols
        n_out = int(layer.weight.shape[0])
        self.n_slices = max(1, min(int(refresh), n_out))
        self.slice_len = math.ceil(n_out / self.n_slices)
        self.row: torch.Tensor | None = None
        self.col_parts: torch.Tensor | None = None  # (n_slices, n_in)
        self.version: int | None = None  # the weight's ``_version`` when a fused update last wrote the sums
        self._scratch: torch.Tensor | None = None  # row sums nobody reads, written by a fused update

    def _bounds(self, s: int) -> tuple[int, int]:
        return s * self.slice_len, min((s + 1) * self.slice_len, int(self.layer.weight.shape[0]))

    def refresh(self, step: int | None = None) -> None:
        """Re-read slice ``step % n_slices`` of the rows (all rows if ``step`` is None or nothing is cached)."""
        if self.version is not None and self.version == self.layer.weight._version:
            return  # written by a fused SGD update, and the weight has not changed since
        self.version = None
        w = self.layer.weight.detach()
        if step is None or self.row is None and self.col_parts is None:
            slices = range(self.n_slices)
            if self.want_rows:
                self.row = torch.empty(w.shape[0], dtype=w.dtype, device=w.device)
            if self.want_cols:
                self.col_parts = torch.zeros(self.n_slices, w.shape[1], dtype=w.dtype, device=w.device)
        else:
            slices = [step % self.n_slices]
        for s in slices:
            a, b = self._bounds(s)
            abs_sums(w[a:b], self.want_rows, self.want_cols,
                     out_rows=self.row[a:b] if self.want_rows else None,
                     out_cols=self.col_parts[s] if self.want_cols else None)

    def buffers(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full-size row sums and column sums to write (column sums None when not cached; row sums then go to
        a reusable scratch tensor, since a fused update computes them anyway)."""
        w = self.layer.weight
        if self.n_slices != 1:
            raise RuntimeError("LayerSums.buffers() needs refresh=1 (one slice)")
        if self.want_rows and self.row is None:
            self.row = torch.empty(w.shape[0], dtype=w.dtype, device=w.device)
        if self.want_cols and self.col_parts is None:
            self.col_parts = torch.zeros(1, w.shape[1], dtype=w.dtype, device=w.device)
        row = self.row if self.want_rows else self._scratch
        if row is None or row.shape[0] != w.shape[0] or row.dtype != w.dtype or row.device != w.device:
            row = self._scratch = torch.empty(w.shape[0], dtype=w.dtype, device=w.device)
        return row, self.col_parts[0] if self.want_cols else None

    @property
    def col(self) -> torch.Tensor:
        """``Σ|w|`` per input column."""
        return self.col_parts[0] if self.n_slices == 1 else self.col_parts.sum(0)

    def _row_parts(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.layer.weight.detach().index_select(0, idx).abs_()
        return w.flatten(1).sum(1), w.sum([*range(2, w.dim())]) if w.dim() > 2 else w

    def rows_redrawn(self, idx: torch.Tensor, before: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Rows ``idx`` were re-initialised; ``before`` is :meth:`snapshot_rows` taken just before."""
        row_new, per_col_new = self._row_parts(idx)
        if self.row is not None:
            self.row[idx] = row_new
        if self.col_parts is not None and before is not None:
            delta = per_col_new - before[1]  # (k, n_in): each redrawn row's change, into its slice's part
            if self.n_slices == 1:  # the same additions in the same order as index_add_, without its slow path
                for d in delta:
                    self.col_parts[0].add_(d)
            else:
                self.col_parts.index_add_(0, torch.div(idx, self.slice_len, rounding_mode="floor"), delta)

    def snapshot_rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The per-column contributions of rows ``idx`` before they are redrawn (for :meth:`rows_redrawn`)."""
        return self._row_parts(idx) if self.col_parts is not None else None

    def cols_zeroed(self, cols: torch.Tensor) -> None:
        if self.col_parts is not None:
            self.col_parts.index_fill_(1, cols, 0.0)

    def to(self, device: torch.device) -> None:
        self.version = None
        self._scratch = None
        self.row = None if self.row is None else self.row.to(device)
        self.col_parts = None if self.col_parts is None else self.col_parts.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"row": None if self.row is None else self.row.cpu().clone(),
                "col_parts": None if self.col_parts is None else self.col_parts.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.layer.weight.device
        self.version = None
        self.row = None if state["row"] is None else state["row"].to(dev).clone()
        self.col_parts = None if state["col_parts"] is None else state["col_parts"].to(dev).clone()
        if self.col_parts is not None and self.col_parts.shape[0] != self.n_slices:
            raise ValueError(f"checkpoint has {self.col_parts.shape[0]} magnitude slices, this CBP "
                             f"{self.n_slices}: resume with the same out_refresh")
