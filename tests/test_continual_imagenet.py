"""Continual ImageNet: quick preset end to end, zeroed head at every task start, fresh pairs, linear reference."""

import numpy as np
import pytest

from lopbook.experiments import run_experiment
from lopbook.problems.continual_imagenet import PairStream, ZeroHead, build_engine, make_source, run_one


def test_quick_preset_runs_and_has_all_methods():
    r = run_experiment("continual_imagenet", "quick", progress=False)
    methods = list(r["methods"])
    assert methods == ["bp_0.01", "cbp", "linear"]
    assert r["test_acc"].shape == (3, 2, 2) and ((r["test_acc"] >= 0) & (r["test_acc"] <= 1)).all()
    assert np.isnan(r["dormant_frac"][2]).all() and np.isfinite(r["dormant_frac"][:2]).all()
    assert r.meta["dataset"]["stand_in"] is True
    groups = r["pairs"]  # (seeds, tasks, 2 classes, 5 digits): the two classes share no digit
    assert groups.shape == (2, 2, 2, 5)
    assert all(not set(g[0]) & set(g[1]) for g in groups.reshape(-1, 2, 5))


def test_cpu_preset_rescales_cbp_rate_and_uses_one_init():
    from lopbook.experiments import get
    from lopbook.problems.continual_imagenet import SmallConvNet

    cfg = get("continual_imagenet").preset_config("cpu")
    assert cfg.steps_per_task() == 10 * 100 // 10
    assert cfg.replacement_rate() * cfg.steps_per_task() == pytest.approx(3e-4 * 3000)
    engine = build_engine("cbp", seed=0, device="cpu", batch_size=10, epochs=1, input_shape=(1, 16, 16),
                          replacement_rate=cfg.replacement_rate(), init=cfg.init)
    assert isinstance(engine.model, SmallConvNet)
    cbp = engine.methods[0]
    assert cbp.replacement_rate == pytest.approx(cfg.replacement_rate()) and cbp.init == "kaiming_normal"
    w = engine.model.features[0].weight  # kaiming-normal: std sqrt(2 / fan_in), zero biases
    assert float(w.detach().std()) == pytest.approx((2 / 9) ** 0.5, rel=0.25)
    assert float(engine.model.fc[0].bias.detach().abs().sum()) == 0.0
    with pytest.raises(ValueError, match="default init"):
        get("continual_imagenet").make_config({"data": "mnist_standin", "init": "kaiming_normal"})


def test_head_is_zeroed_with_its_momentum_at_every_task_start():
    src = make_source("mnist_standin", train_per_class=20, test_per_class=10)
    stream = PairStream(src, seed=0)
    seen = []

    class Record(ZeroHead):
        def on_task_start(self, engine, t, task):
            before = engine.model.head.weight.abs().sum().item()
            super().on_task_start(engine, t, task)
            head = engine.model.head
            seen.append((before, head.weight.abs().sum().item(), head.bias.abs().sum().item(),
                         head.weight in engine.optimizer.state))

    engine = build_engine("bp_0.01", seed=0, device="cpu", batch_size=10, epochs=1, probe_size=0)
    for t in range(2):
        engine.train_task(stream(t), t, Record())
    assert seen[1][0] > 0  # training moved the head away from zero ...
    assert all(s[1] == 0 and s[2] == 0 and not s[3] for s in seen)  # ... and each task starts from a zero head


def test_linear_reference_really_learns_the_stand_in():
    src = make_source("mnist_standin", train_per_class=50, test_per_class=50)
    out = run_one("linear", PairStream(src, seed=1), 2, seed=1, device="cpu", batch_size=10, epochs=3)
    assert (out["test_acc"] > 0.8).all()
    assert np.isnan(out["dormant_frac"]).all()


def test_same_seed_same_results():
    src = make_source("mnist_standin", train_per_class=10, test_per_class=10)
    a = run_one("bp_0.01", PairStream(src, seed=3), 1, seed=3, device="cpu", batch_size=10, epochs=1, probe_size=10)
    b = run_one("bp_0.01", PairStream(src, seed=3), 1, seed=3, device="cpu", batch_size=10, epochs=1, probe_size=10)
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)



def test_finished_runs_are_taken_from_the_checkpoint(tmp_path, monkeypatch):
    from lopbook.checkpoint import Checkpoint
    from lopbook.experiments import continual_imagenet as exp

    cfg = exp.EXPERIMENT.make_config({"data": "mnist_standin", "num_tasks": 1, "epochs": 1, "batch_size": 10,
                                      "train_per_class": 10, "test_per_class": 10, "methods": ["linear"]})
    ckpt = Checkpoint(tmp_path / "c.ckpt", key="k")
    first = exp.run(cfg, seeds=[0], device="cpu", checkpoint=ckpt, progress=False)

    def boom(*a, **k):
        raise AssertionError("a finished (method, seed) run was trained again")

    monkeypatch.setattr(exp, "run_one", boom)
    again = exp.run(cfg, seeds=[0], device="cpu", checkpoint=Checkpoint(tmp_path / "c.ckpt", key="k"),
                    progress=False)
    assert np.array_equal(first.arrays["test_acc"], again.arrays["test_acc"])


def test_full_preset_without_imagenet32_says_where_to_get_it(tmp_path, monkeypatch):
    from lopbook.data.imagenet32 import ImageNet32Missing

    monkeypatch.setenv("LOPBOOK_DATA", str(tmp_path))
    with pytest.raises(ImageNet32Missing, match="Imagenet32_train_npz"):
        run_experiment("continual_imagenet", "full", seeds=1, device="cpu", progress=False)
