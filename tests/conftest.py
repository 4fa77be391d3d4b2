from __future__ import annotations

import pytest

from lopbook import experiments


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch):
    """Make the test-only ``toy`` experiment visible to the registry (and CLI, in-process)."""
    real = experiments._discover
    monkeypatch.setattr(experiments, "_discover", lambda: {**real(), "toy": "toy_experiment"})
    return experiments.get("toy")
