"""Class-incremental CIFAR: quick preset, active-class logits, clean eval-mode testing, early stopping, schedule."""

import numpy as np
import torch

from lopbook.experiments import run_experiment
from lopbook.problems.incremental_cifar import IncrementHooks, IncrementStream, build, load_splits, lr_at


def _setup(method="bp", augment_kw=None, epochs=2):
    data = load_splits("mnist_standin", image_size=16, train_per_class=12, val_per_class=6, test_per_class=6)
    stream = IncrementStream(data, np.random.default_rng(0).permutation(10), 2, "cpu")
    engine, hooks = build(method, seed=0, num_classes=10, width=2, device="cpu", batch_size=8, epochs=epochs,
                          classes_per_increment=2, analysis_size=20, augment_kw=augment_kw)
    return data, stream, engine, hooks


def test_quick_preset_runs():
    r = run_experiment("incremental_cifar", "quick", progress=False)
    assert list(r["methods"]) == ["bp", "cbp", "snp", "head_reset", "retrain"]
    assert r["test_acc"].shape == (5, 1, 2) and list(r["n_classes"]) == [2, 4]
    assert np.isfinite(r["srank_frac"]).all() and ((r["dormant_frac"] >= 0) & (r["dormant_frac"] <= 1)).all()
    assert r["epoch_val_acc"].shape == (5, 1, 2, 2)


def test_logits_restricted_to_active_classes():
    _, stream, engine, hooks = _setup()
    for t in range(2):
        task = stream(t)
        assert int(task.y_train.max()) < 2 * (t + 1) and int(task.y_test.max()) < 2 * (t + 1)
        engine.train_task(task, t, hooks)
        assert hooks.wrapper.n_active == 2 * (t + 1)
        out = engine.model(task.apply(task.x_test[:5]))
        assert out.shape == (5, 2 * (t + 1))


def test_test_and_analysis_inputs_are_clean_and_bn_in_eval_mode():
    marker = 1000.0  # the "augmentation" adds a huge constant, so augmented inputs are easy to spot
    _, stream, engine, hooks = _setup()
    engine.augment = lambda x, g: x + marker
    calls = []
    hooks.wrapper.net.register_forward_pre_hook(lambda m, inp: calls.append((m.training, inp[0].abs().max().item())))
    task = stream(0)
    engine.train_task(task, 0, hooks)
    train_calls = [c for c in calls if c[0]]
    eval_calls = [c for c in calls if not c[0]]
    assert train_calls and all(v > marker / 2 for _, v in train_calls)
    assert eval_calls and all(v < marker / 2 for _, v in eval_calls)  # validation, test and analysis: clean


def test_early_stopping_restores_best_validation_parameters():
    _, stream, engine, hooks = _setup(epochs=3)
    task = stream(0)
    scripted = iter([0.5, 0.9, 0.3])  # validation accuracy per epoch: the 2nd epoch is the best
    real = engine.evaluate

    def evaluate(x, y, transform=None):
        return (next(scripted), 0.0) if x is task.info["x_val"] else real(x, y, transform)

    engine.evaluate = evaluate
    snapshots = []

    class Snap(IncrementHooks):
        def on_epoch_end(self, engine, t, task, epoch):
            super().on_epoch_end(engine, t, task, epoch)
            snapshots.append({k: v.clone() for k, v in engine.model.state_dict().items()})

    hooks.__class__ = Snap
    log = engine.train_task(task, 0, hooks)
    final = engine.model.state_dict()
    assert list(log["epoch_val_acc"]) == [0.5, 0.9, 0.3] and log["best_val_acc"] == 0.9
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)  # the best epoch's parameters and BN stats
    assert not all(torch.equal(final[k], snapshots[2][k]) for k in final)  # not the last epoch's


def test_lr_schedule_matches_upstream():
    assert [lr_at(e, 200, 0.1) for e in (0, 59, 60, 119, 120, 159, 160, 199)] == \
        [0.1, 0.1, 0.1 * 0.2, 0.1 * 0.2, 0.1 * 0.2 ** 2, 0.1 * 0.2 ** 2, 0.1 * 0.2 ** 3, 0.1 * 0.2 ** 3]


def test_head_reset_and_retrain_reinitialise():
    for method in ("head_reset", "retrain"):
        _, stream, engine, hooks = _setup(method, epochs=1)
        engine.train_task(stream(0), 0, hooks)
        net = hooks.wrapper.net
        before = {k: v.clone() for k, v in net.state_dict().items()}
        hooks.on_task_start(engine, 1, stream(1))
        after = net.state_dict()
        assert not torch.equal(before["fc.weight"], after["fc.weight"])
        assert torch.equal(before["conv1.weight"], after["conv1.weight"]) == (method == "head_reset")


def test_scaled_cbp_keeps_the_papers_replacement_per_increment():
    from lopbook.experiments.incremental_cifar import PAPER_STEPS_FIRST_INCREMENT, scaled_cbp

    rho, m = scaled_cbp(PAPER_STEPS_FIRST_INCREMENT)
    assert (rho, m) == (1e-5, 1000)  # the paper's own increment: unchanged
    rho, m = scaled_cbp(600)
    assert abs(rho * 600 - 1e-5 * PAPER_STEPS_FIRST_INCREMENT) < 1e-12  # 5% of units per first increment
    assert m == 120  # a fifth of the increment, as 1,000 of 5,000 steps


def test_derived_source_splits_disjoint_balanced_classes():
    d = load_splits("mnist_derived", image_size=16, train_per_class=10, val_per_class=5, test_per_class=7)
    assert d.num_classes == 40 and d.train_x.shape[1:] == (3, 16, 16)
    for y, n in ((d.train_y, 10), (d.val_y, 5), (d.test_y, 7)):
        assert torch.bincount(y, minlength=40).tolist() == [n] * 40
    seen = {bytes(x.numpy()) for x in d.train_x}
    assert not any(bytes(x.numpy()) in seen for x in d.test_x)  # no test image is a training image


def test_paired_gap_is_a_per_seed_difference_with_a_t_interval():
    from lopbook.experiments.incremental_cifar import mean_ci, paired_gap

    arrays = {"methods": np.array(["bp", "retrain"]),
              "test_acc": np.array([[[0.5, 0.80], [0.5, 0.70], [0.5, 0.90]],
                                    [[0.5, 0.82], [0.5, 0.725], [0.5, 0.915]]])}
    mean, lo, hi = paired_gap(arrays, "test_acc", "retrain", "bp")
    assert abs(mean - 0.02) < 1e-12  # differences 0.02, 0.025, 0.015: the seeds' spread (0.8-0.9) cancels
    half = 4.302652729911275 * 0.005 / np.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert abs((hi - lo) / 2 - half) < 1e-9 and lo > 0
    assert mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    m, lo, hi = mean_ci([0.3])  # one seed: a mean, no interval
    assert m == 0.3 and np.isnan(lo) and np.isnan(hi)


def test_cpu_preset_scales_cbp_and_turns_flips_off():
    from lopbook.experiments import get
    from lopbook.experiments.incremental_cifar import cbp_settings

    cfg = get("incremental_cifar").preset_config("cpu", None)
    assert cfg.flip_p == 0.0 and cfg.cbp_scaled  # a mirrored digit is not the same digit
    spec = cbp_settings(cfg, cfg.train_per_class)
    steps = cfg.epochs * -(-cfg.classes_per_increment * cfg.train_per_class // cfg.batch_size)  # 30 x 4 = 120
    assert abs(spec["replacement_rate"] * steps - 0.05) < 1e-12  # the paper's 1e-5 x 5,000 steps
    assert spec["maturity_threshold"] == round(1000 * steps / 5000)
    plain = cbp_settings(get("incremental_cifar").preset_config("full", None), 450)
    assert (plain["replacement_rate"], plain["maturity_threshold"]) == (1e-5, 1000)  # the paper's, unscaled
