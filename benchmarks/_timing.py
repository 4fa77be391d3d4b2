"""Side-by-side timing for the benchmarks: interleaved rounds, median per side.

On a shared machine the load changes from second to second; timing one side after the other lets that change
masquerade as a speed difference. Here every round runs each side once, in an order that alternates between
rounds, and each side's median over the rounds is reported (ratios of medians are stable to a few per cent).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(sides: dict[str, Callable[[], float | None]], rounds: int) -> dict[str, list[float]]:
    """Run every side once per round (order reversed on odd rounds); return each side's per-round values.

    A side returns the value to record (e.g. seconds per step it measured itself) or ``None``, in which case
    its wall-clock time is recorded.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    out: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            v = sides[name]()
            out[name].append(time.perf_counter() - t0 if v is None else float(v))
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)
