"""The slowly-changing regression (SCR) problem of Dohare et al. (upstream "bit-flipping").

Inputs are 20 bits. The first 15 are *slow*: they stay fixed for ``T = 10,000`` examples and then change;
the last 5 are fresh Bernoulli(1/2) draws for every example. The target is a fixed random network of linear
threshold units (LTUs), 20 -> 100 LTUs -> 1, with all weights and biases uniform in {-1, +1}.

Two variants of the slow-bit switch:

- ``"redraw"`` (upstream's default ``prob.json``, used for the authors' committed figure): every segment of
  ``T`` examples gets an entirely new random draw of all 15 slow bits;
- ``"flip_one"`` (what the papers describe): each segment copies the previous one and flips one uniformly
  chosen slow bit.

Everything is seeded by one integer: the target net, the slow-bit schedule and the fast bits each come from
their own ``numpy`` stream derived from ``seed``, and the stream is generated in chunks whose sizes do not
change the data (``chunk(3) + chunk(5) == chunk(8)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

VARIANTS = ("redraw", "flip_one")

# Sub-stream tags: one independent numpy stream per purpose, all derived from the seed.
_TAG_TARGET, _TAG_SLOW, _TAG_FAST, _TAG_PROBE = 11, 12, 13, 14


@dataclass
class LTUTarget:
    """The target network: ``y = v . [W x + b > tau] + c`` with ``W, b, v, c`` in {-1, +1}.

    The thresholds follow upstream's ``FixLTUNet``: ``tau_i = beta (m + 1) - S_i`` with
    ``S_i = (m - sum_j W_ij + b_i) / 2`` (for +-1 weights: the number of negative input weights plus b_i/2).
    """

    W: np.ndarray  # (n_hidden, m)
    b: np.ndarray  # (n_hidden,)
    v: np.ndarray  # (n_hidden,)
    c: float
    tau: np.ndarray  # (n_hidden,)

    @classmethod
    def random(cls, rng: np.random.Generator, m: int = 20, n_hidden: int = 100, beta: float = 0.7) -> LTUTarget:
        """Draw a target net; ``beta`` sets how selective the LTUs are (upstream SCR uses 0.7)."""
        W = rng.choice([-1.0, 1.0], size=(n_hidden, m))
        b = rng.choice([-1.0, 1.0], size=n_hidden)
        v = rng.choice([-1.0, 1.0], size=n_hidden)
        c = float(rng.choice([-1.0, 1.0]))
        S = (m - W.sum(1) + b) / 2.0
        tau = beta * (m + 1) - S
        return cls(W=W, b=b, v=v, c=c, tau=tau)

    def features(self, x: np.ndarray) -> np.ndarray:
        """LTU outputs (0/1) for inputs ``x`` of shape (..., m)."""
        return (x @ self.W.T + self.b > self.tau).astype(x.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Targets for inputs of shape (..., m); returns shape (...)."""
        return self.features(x) @ self.v + self.c


class SCRStream:
    """A seeded, chunked stream of ``(x, y)`` examples of slowly-changing regression.

    Args:
        seed: the problem's seed; equal seeds give equal streams.
        variant: ``"redraw"`` or ``"flip_one"`` (see the module docstring).
        period: ``T``, examples between changes of the slow bits.
        n_inputs / n_slow: ``m = 20`` bits, of which the first ``f = 15`` are slow.
        n_hidden / beta: the target net's width and LTU threshold parameter.
    """

    def __init__(self, seed: int, variant: str = "redraw", period: int = 10_000, n_inputs: int = 20,
                 n_slow: int = 15, n_hidden: int = 100, beta: float = 0.7):
        if variant not in VARIANTS:
            raise ValueError(f"unknown SCR variant {variant!r}; choose one of {VARIANTS}")
        if not 0 < n_slow <= n_inputs:
            raise ValueError(f"n_slow must be in 1..n_inputs={n_inputs}, got {n_slow}")
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.seed, self.variant, self.period = int(seed), variant, int(period)
        self.n_inputs, self.n_slow = n_inputs, n_slow
        self.target = LTUTarget.random(np.random.default_rng([self.seed, _TAG_TARGET]), n_inputs, n_hidden, beta)
        self._slow_rng = np.random.default_rng([self.seed, _TAG_SLOW])
        self._fast_rng = np.random.default_rng([self.seed, _TAG_FAST])
        self.t = 0  # examples produced so far
        self.slow = self._slow_rng.random(n_slow) < 0.5  # bits of the current segment

    def _next_segment(self) -> None:
        if self.variant == "redraw":
            self.slow = self._slow_rng.random(self.n_slow) < 0.5
        else:
            i = int(self._slow_rng.integers(self.n_slow))
            self.slow = self.slow.copy()
            self.slow[i] = ~self.slow[i]

    def next_chunk(self, n: int, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` examples: ``x`` of shape (n, 20) in {0, 1} and ``y`` of shape (n,)."""
        x = np.empty((n, self.n_inputs), dtype=dtype)
        # one double per fast bit, drawn in order, so chunk boundaries never change the data
        x[:, self.n_slow:] = self._fast_rng.random((n, self.n_inputs - self.n_slow)) < 0.5
        i = 0
        while i < n:
            if self.t > 0 and self.t % self.period == 0:
                self._next_segment()
            run = min(n - i, self.period - self.t % self.period)
            x[i:i + run, :self.n_slow] = self.slow
            i += run
            self.t += run
        return x, self.target(x).astype(dtype)

    def probe_inputs(self, n: int = 1000, dtype: Any = np.float64) -> np.ndarray:
        """A fixed batch of ``n`` uniformly random inputs (all 20 bits fresh) for representation metrics."""
        rng = np.random.default_rng([self.seed, _TAG_PROBE])
        return (rng.random((n, self.n_inputs)) < 0.5).astype(dtype)

    def state(self) -> dict[str, Any]:
        """Everything needed to resume the stream exactly (for checkpoints)."""
        return {"t": self.t, "slow": self.slow.copy(), "slow_rng": self._slow_rng.bit_generator.state,
                "fast_rng": self._fast_rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        self.slow = np.asarray(state["slow"], dtype=bool).copy()
        self._slow_rng.bit_generator.state = state["slow_rng"]
        self._fast_rng.bit_generator.state = state["fast_rng"]
