"""The checkpoint format: exact round trips of every kind of state the experiments save, refusal of what
it cannot store safely, and the real states of every registered experiment."""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lopbook import experiments
from lopbook.checkpoint import Checkpoint, CheckpointMismatchError, checkpoint_problem


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Equal values of equal types, recursively (NaN equals NaN; arrays and tensors keep dtype and shape)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def sample_state() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    gen = torch.Generator().manual_seed(5)
    return {
        "python_rng": random.Random(1).getstate(),                   # (3, tuple of 625 ints, None)
        "numpy_rng": np.random.RandomState(2).get_state(),            # ('MT19937', uint32 array, int, int, float)
        "pcg64": rng.bit_generator.state,                             # 128-bit ints
        "per_rate": {1e-4: rng.bit_generator.state, 3: "x"},          # non-string keys
        "ordered": OrderedDict([("w", torch.randn(3, 2)), ("b", torch.zeros(2))]),
        "tensors": [torch.arange(4, dtype=torch.int64), gen.get_state(), torch.tensor(True),
                    torch.zeros(0), torch.randn(2, 3).half()],
        "small": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "big": rng.normal(size=(40, 50)),                             # stored as an .npy member
        "labels": np.array(["bp", "cbp", "l2"]),
        "flags": np.array([True, False]),
        "scalars": (np.float32(1.5), np.int64(-7), np.bool_(True), np.float64("nan")),
        "floats": [float("nan"), float("inf"), -0.0, 1e-300, 0.1],
        "ints": [0, -1, 2**70, True, None],
        "blob": b"\x00\xff" * 5000,                                   # > inline size
        "tiny_blob": b"ab",
        "history": {"err": [rng.random(3) for _ in range(3)]},
        "empty": {},
        "nested_tag_like": {"$lopbook": "not a tag"},                 # a user key that looks like ours
    }


def test_every_supported_type_round_trips_exactly(tmp_path: Path):
    state = sample_state()
    ck = Checkpoint(tmp_path / "c.ckpt", key={"cfg": 1})
    assert ck.save(state, force=True)
    back = Checkpoint(tmp_path / "c.ckpt", key={"cfg": 1}).load()
    assert_same(state, back)
    assert checkpoint_problem(tmp_path / "c.ckpt", {"cfg": 1}) is None
    assert "different config" in checkpoint_problem(tmp_path / "c.ckpt", {"cfg": 2})
    with pytest.raises(CheckpointMismatchError):
        Checkpoint(tmp_path / "c.ckpt", key={"cfg": 2}).load()


def test_restored_rng_states_continue_the_same_streams(tmp_path: Path):
    py, nps, gen = random.Random(4), np.random.RandomState(4), np.random.default_rng(4)
    tg = torch.Generator().manual_seed(4)
    ck = Checkpoint(tmp_path / "c.ckpt", key=0)
    ck.save({"py": py.getstate(), "np": nps.get_state(), "gen": gen.bit_generator.state, "tg": tg.get_state()},
            force=True)
    expected = (py.random(), nps.rand(), gen.random(), torch.rand(1, generator=tg).item())
    st = Checkpoint(tmp_path / "c.ckpt", key=0).load()
    py.setstate(st["py"])
    nps.set_state(st["np"])
    gen.bit_generator.state = st["gen"]
    tg.set_state(st["tg"])
    assert (py.random(), nps.rand(), gen.random(), torch.rand(1, generator=tg).item()) == expected


@pytest.mark.parametrize("bad, what", [
    ({"f": lambda: 0}, r"state\['f'\] is a builtins.function"),
    ({"a": [np.array([{}, None], dtype=object)]}, r"state\['a'\]\[0\] is a numpy array of dtype object"),
    ({"s": {1, 2}}, r"state\['s'\] is a builtins.set"),
])
def test_unsafe_objects_are_refused_at_save_time(tmp_path: Path, bad, what):
    ck = Checkpoint(tmp_path / "c.ckpt", key=0)
    with pytest.raises(TypeError, match=what):
        ck.save(bad, force=True)
    assert not ck.path.exists()


class RoundTripCheckpoint(Checkpoint):
    """Writes every state it is given and checks that loading it back gives the identical state."""

    def __init__(self, path: Path):
        super().__init__(path, key="k", every_s=0.0)
        self.checked = 0

    def save(self, state: dict[str, Any], force: bool = False) -> bool:
        written = super().save(state, force=True)
        assert_same(state, Checkpoint(self.path, key="k").load())
        self.checked += 1
        return written


TINY = {
    "scr": {"n_examples": 8_000, "bin_size": 2_000},
    "permuted_mnist": {"num_tasks": 2},
    "continual_imagenet": {"num_tasks": 1},
    "incremental_cifar": {"num_increments": 1, "epochs": 1},
    "slippery_ant": {"total_steps": 1024, "change_every": 500, "num_steps": 256, "num_envs": 2,
                     "bin_steps": 256},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_experiment_state_round_trips(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The real checkpoint states of each experiment (engine, SCR numpy trainer, PPO + MuJoCo physics)."""
    monkeypatch.setenv("LOPBOOK_SCR_WORKERS", "1")
    exp = experiments.get(name)
    cfg = exp.preset_config("quick", TINY[name])
    ck = RoundTripCheckpoint(tmp_path / "c.ckpt")
    exp.run(cfg, seeds=[0], device="cpu", checkpoint=ck, progress=False)
    assert ck.checked >= 1
    assert name in experiments.names()
