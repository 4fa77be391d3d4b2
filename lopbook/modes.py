"""The one run-mode switch that every chapter shares.

``cached`` (default, used by the book build) loads results from ``data/`` and trains nothing;
``quick`` runs the real code path at a tiny scale (seconds on a CPU, used by the tests);
``full`` runs the paper's scale (meant for a CUDA machine).
The mode comes from the environment variable ``LOPBOOK_MODE`` so that a notebook executed by
Jupyter Book, pytest or a reader picks it up without editing the chapter.
"""

from __future__ import annotations

import os
from typing import Literal

Mode = Literal["cached", "quick", "full"]
MODES: tuple[Mode, ...] = ("cached", "quick", "full")
ENV_VAR = "LOPBOOK_MODE"


def check_mode(mode: str) -> Mode:
    """Return ``mode`` if it is one of :data:`MODES`, else raise a ``ValueError`` naming the choices."""
    if mode not in MODES:
        raise ValueError(f"unknown run mode {mode!r}; choose one of {', '.join(MODES)} "
                         f"(set it with {ENV_VAR}=<mode>)")
    return mode  # type: ignore[return-value]


def get_mode(default: Mode = "cached") -> Mode:
    """The current run mode, read from ``$LOPBOOK_MODE`` (``cached`` when unset)."""
    return check_mode(os.environ.get(ENV_VAR, default).strip().lower() or default)


def default_device(mode: Mode) -> str:
    """``cuda`` for full runs when a GPU is present, else ``cpu``."""
    if mode == "full":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"
