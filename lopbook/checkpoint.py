"""Resumable runs: periodic, atomic checkpoints that a restarted run picks up.

An experiment calls :meth:`Checkpoint.load` once at the start and :meth:`Checkpoint.save` inside its loop
(as often as it likes: writes are throttled to one per ``every_s`` seconds unless ``force=True``).
A checkpoint remembers a fingerprint of the config and seeds, so a run never resumes from a
checkpoint made for different settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import torch

from lopbook.results import atomic_write_bytes


class CheckpointMismatchError(RuntimeError):
    """The checkpoint on disk belongs to another config or seed list."""


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able object (config + seeds)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoint:
    """A single checkpoint file for one run; ``path=None`` disables checkpointing (quick runs)."""

    def __init__(self, path: str | Path | None, key: Any = None, every_s: float = 60.0):
        self.path = Path(path) if path is not None else None
        self.key = fingerprint(key)
        self.every_s = every_s
        self._last = self._start = time.monotonic()
        self.prior_elapsed_s = 0.0  # wall time spent by earlier, interrupted segments of this run
        self.resumed = False
        self.commits: list[str | None] = []  # code version of each segment of the run, oldest first

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is nothing to resume."""
        if self.path is None or not self.path.exists():
            return None
        blob = torch.load(self.path, map_location="cpu", weights_only=False)
        if blob.get("key") != self.key:
            raise CheckpointMismatchError(
                f"checkpoint {self.path} was written for a different config or seeds; "
                f"delete it (or pass --fresh) to start over")
        self.prior_elapsed_s = float(blob.get("elapsed_s", 0.0))
        self.commits = list(blob.get("commits", [])) + self.commits[-1:]
        self.resumed = True
        return blob["state"]

    def elapsed_s(self) -> float:
        """Wall time of the whole run so far, earlier interrupted segments included."""
        return self.prior_elapsed_s + time.monotonic() - self._start

    def save(self, state: dict[str, Any], force: bool = False) -> bool:
        """Write ``state`` if ``every_s`` seconds passed since the last write (or ``force``)."""
        if self.path is None or (not force and time.monotonic() - self._last < self.every_s):
            return False
        buf = io.BytesIO()
        torch.save({"key": self.key, "state": state, "elapsed_s": self.elapsed_s(),
                    "commits": self.commits}, buf)
        atomic_write_bytes(self.path, buf.getvalue())
        self._last = time.monotonic()
        return True

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
