"""Permuted MNIST: seeded bijective permutations, the task stream, the experiment's presets and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lopbook.data.mnist import MNISTNotFoundError
from lopbook.experiments import ConfigError, get, run_experiment
from lopbook.problems.permuted_mnist import PermutedStream, task_permutation


def test_permutation_is_a_seeded_bijection():
    p = task_permutation(3, 7, 784)
    assert p.dtype == torch.int64 and sorted(p.tolist()) == list(range(784))
    assert torch.equal(p, task_permutation(3, 7, 784))  # same (seed, task): same permutation
    assert not torch.equal(p, task_permutation(3, 8, 784))  # next task: another one
    assert not torch.equal(p, task_permutation(4, 7, 784))  # another seed: another one
    with pytest.raises(ValueError):
        task_permutation(0, 0, 0)


def test_stream_permutes_pixels_and_scales_to_unit_interval():
    imgs = torch.arange(2 * 9, dtype=torch.uint8).reshape(2, 3, 3) * 10
    labels = torch.tensor([0, 1])
    s = PermutedStream(imgs, labels, seed=1)
    task = s(2)
    perm = task_permutation(1, 2, 9)
    x = task.apply(task.x_train)
    expected = imgs.reshape(2, 9)[:, perm].float() / 255
    assert torch.allclose(x, expected) and x.dtype == torch.float32
    assert float(x.max()) <= 1.0
    # each task sees the original pixels under its own permutation (not cumulative): rebuildable from t alone
    assert torch.equal(PermutedStream(imgs, labels, seed=1)(2).apply(imgs.reshape(2, 9)), x)
    ident = PermutedStream(imgs, labels, seed=1, permute_first=False)(0)
    assert torch.allclose(ident.apply(ident.x_train), imgs.reshape(2, 9).float() / 255)
    with pytest.raises(TypeError, match="uint8"):
        PermutedStream(imgs.float(), labels, seed=0)


def test_quick_preset_runs_and_records_per_task_curves():
    res = run_experiment("permuted_mnist", "quick", mode="quick", progress=False, overrides={"num_tasks": 3})
    labels = list(res["labels"])
    assert labels == ["bp", "cbp"]
    for key in ("acc", "loss", "dead", "erank", "srank", "wmag", "dormant", "replaced"):
        assert res[key].shape == (2, 2, 3), key
    assert ((res["acc"] > 0.2) & (res["acc"] <= 1)).all()  # 10 classes: well above chance after one pass
    assert (res["erank"] > 0).all() and (res["erank"] <= 1).all()
    assert res.meta["dataset"]["stand_in"] is True
    # same seed, same init and data order: BP and CBP see identical first-task probes (before any training)
    np.testing.assert_allclose(res["wmag"][0, :, 0], res["wmag"][1, :, 0])
    assert (res["replaced"][0] == 0).all() and (res["replaced"][1] > 0).all()  # CBP replaces, BP does not


def test_engine_and_stacked_trainers_give_the_same_bp_run():
    over = {"num_tasks": 2, "methods": {"bp": {"name": "bp"}}, "batch_size": 4}
    eng = run_experiment("permuted_mnist", "quick", mode="quick", progress=False, seeds=[1],
                         overrides={**over, "trainer": "engine"})
    stk = run_experiment("permuted_mnist", "quick", mode="quick", progress=False, seeds=[1], overrides=over)
    np.testing.assert_allclose(stk["acc"], eng["acc"], atol=1e-9)
    for key in ("loss", "erank", "wmag", "dead"):
        np.testing.assert_allclose(stk[key], eng[key], rtol=1e-4, atol=1e-6)


def test_cpu_preset_scales_cbp_to_the_papers_replaced_fraction():
    exp = get("permuted_mnist")
    cfg = exp.preset_config("cpu")
    assert cfg.trainer == "stacked" and cfg.batch_size == 1 and cfg.num_tasks >= 100
    cbp = cfg.methods["cbp"]
    # paper: rho 1e-6 x 60,000 steps per task = 6% of a layer per task; here 5,000 steps per task
    assert cbp["replacement_rate"] * 5000 == pytest.approx(1e-6 * 60_000)
    assert {m["name"] for m in cfg.methods.values()} == {"bp", "l2", "snp", "cbp"}
    with pytest.raises(ConfigError, match="Adam"):
        exp.make_config({"trainer": "stacked", "methods": {"adam": {"name": "bp", "optimizer": "adam"}}})
    with pytest.raises(ConfigError, match="stacked"):
        exp.make_config({"reg_every": 5})


def test_full_preset_without_mnist_fails_with_the_fix(tmp_path):
    exp = get("permuted_mnist")
    cfg = exp.preset_config("full", {"data_dir": str(tmp_path), "num_tasks": 1})
    from lopbook.checkpoint import Checkpoint

    with pytest.raises(MNISTNotFoundError, match="train-images-idx3-ubyte"):
        exp.run(cfg, seeds=[0], device="cpu", checkpoint=Checkpoint(None), progress=False)


def test_config_errors_name_the_problem():
    exp = get("permuted_mnist")
    with pytest.raises(ConfigError, match="data"):
        exp.make_config({"data": "cifar"})
    with pytest.raises(ConfigError, match="name"):
        exp.make_config({"methods": {"x": {"lr": 1}}})
    assert exp.presets["full"].paper_scale and exp.make_config({}).hidden == [2000, 2000, 2000]


def test_window_statistics_by_hand():
    from lopbook.experiments.permuted_mnist import paired_ci, plasticity_summary, window_means

    np.testing.assert_allclose(window_means(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.5, 2.5, 3.5])
    m, lo, hi = paired_ci(np.array([1.0, 2.0, 3.0]))  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert m == 2.0 and hi - m == pytest.approx(4.3027 / np.sqrt(3), rel=1e-4) and lo == pytest.approx(4 - hi)
    # two methods, two seeds, ten tasks: "bp" rises to 0.9 at tasks 3-4 then falls to 0.7; "cbp" stays at 0.9
    bp = np.array([0.5, 0.8, 0.9, 0.9, 0.85, 0.8, 0.8, 0.75, 0.7, 0.7])
    acc = np.stack([np.stack([bp, bp - 0.02]), np.full((2, 10), 0.9)])
    s = plasticity_summary(acc, ["bp", "cbp"], frac=0.2)  # windows of 2 tasks
    assert s["bp"]["window"] == 2 and s["bp"]["best_task"] == 2  # tasks 3-4
    assert s["bp"]["drop"] == pytest.approx(0.2) and s["bp"]["drop_lo"] == pytest.approx(0.2)  # no spread
    assert s["cbp"]["vs_ref"] == pytest.approx(0.21) and s["cbp"]["drop"] == pytest.approx(0.0)
