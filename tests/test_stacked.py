"""The stacked trainer against the per-run engine: BP equal to ~1e-5, CBP making the same decisions, resume exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lopbook.algos import ContinualBackprop
from lopbook.engine import Engine, EngineConfig, default_probe
from lopbook.nets import MLP
from lopbook.problems.permuted_mnist import PermutedStream
from lopbook.stacked import RunSpec, StackedCBP, StackedMLP, StackedTrainer, probe_metrics


def _digits(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    from lopbook.data.standins import sklearn_digits

    d = sklearn_digits()
    return d.images[:n], d.labels[:n]


def test_forward_and_sgd_step_match_autograd():
    torch.manual_seed(0)
    models = [MLP(6, [5, 4], 3) for _ in range(3)]
    net = StackedMLP.from_modules(models)
    x, y = torch.randn(3, 2, 6), torch.randint(0, 3, (3, 2))
    logits, _ = net.forward(x)
    for r, m in enumerate(models):
        torch.testing.assert_close(logits[r], m(x[r]))
    lr = torch.tensor([0.1, 0.2, 0.3])
    _, hidden = net.forward(x)
    logp = torch.log_softmax(logits, 2)
    g = (logp.exp() - torch.nn.functional.one_hot(y, 3)) / 2 * lr.view(3, 1, 1)
    net.sgd_step(x, hidden, g)
    for r, m in enumerate(models):  # the same step through autograd and torch.optim.SGD
        opt = torch.optim.SGD(m.parameters(), lr=float(lr[r]))
        torch.nn.functional.cross_entropy(m(x[r]), y[r]).backward()
        opt.step()
        probe = MLP(6, [5, 4], 3)
        net.copy_to_module(r, probe)
        for a, b in zip(probe.parameters(), m.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _engine_run(images, labels, seed, spec_cbp=None, hidden=(16, 16, 16), lr=0.05, tasks=2):
    """One engine run as lopbook.experiments.permuted_mnist does it; returns the engine and its logs."""
    torch.manual_seed(seed)
    model = MLP(64, list(hidden), 10, activation="relu")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    methods = [] if spec_cbp is None else [ContinualBackprop(model, opt, **spec_cbp)]
    eng = Engine(model, opt, methods=methods, config=EngineConfig(batch_size=1, probe_size=100), seed=seed,
                 probe=default_probe)
    stream = PermutedStream(images, labels, seed=seed)
    return eng, stream


def test_bp_stacked_equals_engine_runs():
    images, labels = _digits(200)
    seeds = [0, 1]
    runs = [RunSpec("bp", s, "bp", lr=0.05) for s in seeds]
    streams = {s: PermutedStream(images, labels, seed=s) for s in seeds}
    tr = StackedTrainer(runs, streams, 64, [16, 16, 16], 10, probe_size=100)
    tr.train(2)
    res = tr.results()
    for i, s in enumerate(seeds):
        eng, stream = _engine_run(images, labels, s)
        logs = [eng.train_task(stream(t), t) for t in range(2)]
        np.testing.assert_allclose(res["online_acc"][i], [lg["online_acc"] for lg in logs], atol=1e-9)
        np.testing.assert_allclose(res["online_loss"][i], [lg["online_loss"] for lg in logs], rtol=1e-5)
        for key in ("dead_frac", "erank_frac", "srank_frac", "weight_mag", "dormant_frac"):
            np.testing.assert_allclose(res[f"probe/{key}"][i], [lg[f"probe/{key}"] for lg in logs], atol=1e-5)
        probe = MLP(64, [16, 16, 16], 10)
        tr.net.copy_to_module(i, probe)
        for a, b in zip(probe.parameters(), eng.model.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hidden", [(16, 16, 16), (16, 12)])  # equal widths (fused path) and unequal
@pytest.mark.parametrize("utility", ["adaptable_contribution", "contribution"])
def test_cbp_makes_the_engines_replacement_decisions(hidden, utility):
    images, labels = _digits(300)
    seed, steps = 3, 400
    spec = dict(replacement_rate=0.01, maturity_threshold=20, decay_rate=0.9, utility=utility,
                init="kaiming_uniform")
    eng, stream = _engine_run(images, labels, seed, spec, hidden=hidden)
    cbp = eng.methods[0]
    task = stream(0)
    net = StackedMLP.from_modules([eng.model])
    scbp = StackedCBP(net, slice(0, 1), **{k: v for k, v in spec.items()})
    scbp.generators[0].set_state(torch.get_rng_state())  # the engine draws new weights from the global stream
    order = torch.randperm(len(task.x_train), generator=torch.Generator().manual_seed(11))
    n_replacing_steps = 0
    for step in range(steps):
        i = order[step % len(order)]
        x = task.apply(task.x_train[i:i + 1])
        y = task.y_train[i:i + 1]
        # engine step
        loss = torch.nn.functional.cross_entropy(eng.model(x), y)
        eng.optimizer.zero_grad()
        loss.backward()
        eng.optimizer.step()
        k_engine = cbp.step()
        # stacked step
        logits, hidden_f = net.forward(x.unsqueeze(0))
        g = (torch.softmax(logits, 2) - torch.nn.functional.one_hot(y, 10).unsqueeze(0)) * 0.05
        net.sgd_step(x.unsqueeze(0), hidden_f, g)
        k_stacked = scbp.step(hidden_f)
        assert k_engine == k_stacked, step
        n_replacing_steps += k_engine > 0
        for layer in range(len(hidden)):
            a, b = cbp.last_replaced[layer], scbp.last_replaced[0][layer]
            assert (a is None) == (b is None), (step, layer)
            if a is not None:
                assert sorted(a.tolist()) == sorted(b.tolist()), (step, layer)
    assert n_replacing_steps >= 10  # the test exercised replacement
    for layer in range(len(hidden)):
        torch.testing.assert_close(scbp.age[layer][0], cbp.states[layer].age)
        torch.testing.assert_close(scbp.util[layer][0], cbp.states[layer].util, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(scbp.utilities()[layer][0], cbp.utilities()[layer], rtol=1e-4, atol=1e-6)
    assert scbp.n_replaced[0].tolist() == cbp.n_replaced
    probe = MLP(64, list(hidden), 10)
    net.copy_to_module(0, probe)
    for a, b in zip(probe.parameters(), eng.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cbp_replaces_the_scaled_fraction_per_run_and_only_its_runs():
    images, labels = _digits(300)
    runs = [RunSpec("bp", 0, "bp", lr=0.05)] + [
        RunSpec(f"cbp{i}", 0, "cbp", lr=0.05, replacement_rate=rho, maturity_threshold=10)
        for i, rho in enumerate([0.002, 0.004])]
    tr = StackedTrainer(runs, {0: PermutedStream(images, labels, seed=0)}, 64, [20, 20], 10, probe_size=50)
    tr.train(2)
    frac = tr.results()["replaced_frac"]
    assert (frac[0] == 0).all()
    # per layer: rho * eligible units * steps, eligible = all 20 after the first 10 steps
    expected = [rho * 20 * 300 / 20 for rho in (0.002, 0.004)]
    np.testing.assert_allclose(frac[1:, 1], expected, rtol=0.1)  # new units are immature for 10 steps


def test_l2_and_snp_shrink_and_perturb():
    images, labels = _digits(100)
    stream = {0: PermutedStream(images, labels, seed=0)}
    runs = [RunSpec("bp", 0, "bp", lr=0.05), RunSpec("l2", 0, "l2", lr=0.05, weight_decay=0.5),
            RunSpec("snp", 0, "snp", lr=0.05, weight_decay=0.5, noise_std=0.01)]
    tr = StackedTrainer(runs, stream, 64, [16], 10, probe_size=50)
    tr.train(1)
    wmag = [float(w.abs().mean()) for w in (tr.net.weights[0][0], tr.net.weights[0][1], tr.net.weights[0][2])]
    assert wmag[1] < 0.8 * wmag[0]  # decay 1 - 0.025 per step for 100 steps
    assert wmag[2] != pytest.approx(wmag[1], rel=1e-6)
    # aggregated regularisation (every k steps) decays by the same factor
    tr2 = StackedTrainer(runs[:2], stream, 64, [16], 10, probe_size=50, reg_every=10)
    tr2.train(1)
    assert float(tr2.net.weights[0][1].abs().mean()) == pytest.approx(wmag[1], rel=0.05)


def test_probe_metrics_match_default_probe():
    torch.manual_seed(0)
    models = [MLP(10, [8, 8], 3) for _ in range(2)]
    with torch.no_grad():
        models[1].hidden_linears[0].bias[:3] = -100.0  # three dead units
    net = StackedMLP.from_modules(models)
    x = torch.rand(2, 50, 10)
    got = probe_metrics(net, x)
    for r, m in enumerate(models):
        ref = default_probe(m, x[r])
        for k in ref:
            assert got[k][r] == pytest.approx(ref[k], abs=1e-9), k
    assert got["dead_frac"][1] >= 3 / 16 > got["dead_frac"][0]


def test_resume_from_checkpoint_is_bit_exact():
    images, labels = _digits(120)
    seeds = [0, 1]
    runs = [RunSpec(m, s, m, lr=0.05, **kw) for m, kw in
            [("bp", {}), ("snp", {"weight_decay": 1e-3, "noise_std": 1e-3}),
             ("cbp", {"replacement_rate": 0.01, "maturity_threshold": 5})] for s in seeds]

    def make(**kw):
        return StackedTrainer(runs, {s: PermutedStream(images, labels, seed=s) for s in seeds}, 64, [12, 12], 10,
                              probe_size=40, cbp_mag_refresh=3, reg_every=2, **kw)

    full = make()
    full.train(3)
    first = make()
    first.train(1)
    blob = first.state_dict()
    resumed = make()
    resumed.load_state_dict(blob)
    resumed.train(3)
    for a, b in zip(full.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    ra, rb = full.results(), resumed.results()
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k])
    with pytest.raises(ValueError, match="other runs"):
        StackedTrainer(runs[:2], {s: PermutedStream(images, labels, seed=s) for s in seeds}, 64, [12, 12], 10,
                       probe_size=40).load_state_dict(blob)


def test_bad_runs_fail_with_the_fix():
    images, labels = _digits(50)
    streams = {0: PermutedStream(images, labels, seed=0)}
    with pytest.raises(ValueError, match="engine"):
        StackedTrainer([RunSpec("redo", 0, "redo")], streams, 64, [8], 10)
    with pytest.raises(ValueError, match="distinct label"):
        StackedTrainer([RunSpec("bp", 0), RunSpec("bp", 0)], streams, 64, [8], 10)
    with pytest.raises(ValueError, match="no task stream"):
        StackedTrainer([RunSpec("bp", 5)], streams, 64, [8], 10)
    with pytest.raises(ValueError, match="ReLU"):
        StackedMLP.from_modules([MLP(4, [3], 2, activation="tanh")])
