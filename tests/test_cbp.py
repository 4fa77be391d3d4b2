"""Continual backprop: counts, selection, invariance, optimizer state, bias correction, determinism, resume."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lopbook.algos.cbp import ContinualBackprop, utility_trace
from lopbook.algos.units import UnitDiscoveryError, abs_sums, find_unit_groups, init_bound

torch.set_num_threads(1)


def mlp(width: int = 50, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 3))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    loss = F.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def data(n: int, seed: int = 1, shape: tuple[int, ...] = (4,), out: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *shape, generator=g), torch.randn(8, out, generator=g)) for _ in range(n)]


# ------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("kwargs, msg", [
    ({"replacement_rate": 1.0}, "replacement_rate"), ({"replacement_rate": -0.1}, "replacement_rate"),
    ({"maturity_threshold": -1}, "maturity_threshold"), ({"decay_rate": 1.0}, "decay_rate"),
    ({"decay_rate": -0.5}, "decay_rate"), ({"utility": "weight_magnitude"}, "utility"),
    ({"init": "orthogonal"}, "init"),
])
def test_hyperparameter_validation(kwargs: dict, msg: str) -> None:
    m = mlp()
    with pytest.raises(ValueError, match=msg):
        ContinualBackprop(m, None, **kwargs)


def test_discovery_groups_and_errors() -> None:
    groups, skipped = find_unit_groups(convnet())
    assert [g.name for g in groups] == ["0", "4", "8"]
    assert [g.cols_per_unit for g in groups] == [1, 4, 1]  # conv -> pool -> flatten -> linear: 2x2 per channel
    assert isinstance(groups[0].norm, nn.BatchNorm2d) and groups[1].norm is None
    assert skipped == {"10": "output layer"}

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(self.a(x)))

    with pytest.raises(UnitDiscoveryError, match="nn.Module"):
        ContinualBackprop(Functional(), None)

    class Shared(Functional):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.act = nn.Linear(5, 5), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.act(self.c(self.act(self.a(x)))))

    with pytest.raises(UnitDiscoveryError, match="its own activation module"):
        ContinualBackprop(Shared(), None)
    with pytest.raises(UnitDiscoveryError, match="no replaceable hidden units"):
        ContinualBackprop(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)), None)


def test_discovery_on_library_nets_and_custom_activations() -> None:
    from lopbook.nets import MLP, ConvNet

    cbp = ContinualBackprop(ConvNet(2), None)
    assert [(g.name, g.cols_per_unit) for g in cbp.groups] == [
        ("features.0", 1), ("features.3", 1), ("features.6", 4), ("fc.0", 1), ("fc.2", 1)]
    assert len(ContinualBackprop(MLP(5, [8, 8], 2, activation="linear"), None).groups) == 2
    assert all(isinstance(g.norm, nn.LayerNorm)
               for g in ContinualBackprop(MLP(5, [8, 8], 2, layer_norm=True), None).groups)

    class Cube(nn.Module):
        is_activation = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x ** 3

    m = nn.Sequential(nn.Linear(3, 4), Cube(), nn.Linear(4, 1))
    assert [g.name for g in ContinualBackprop(m, None).groups] == ["0"]


class _Skip(nn.Module):
    """x -> a -> [bn] -> relu -> (+ x) -> relu -> out: a unit of `a` also reaches `out` through the skip."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(4, 4), nn.Linear(4, 1)
        self.bn = nn.BatchNorm1d(4) if bn else nn.Identity()
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.r2(self.r1(self.bn(self.a(x))) + x))


def test_discovery_of_units_that_feed_a_residual_sum() -> None:
    groups, skipped = find_unit_groups(_Skip(bn=True))
    assert [(g.name, g.residual, g.extra["consumer_names"]) for g in groups] == [("a", True, ["out"])]
    with pytest.raises(UnitDiscoveryError, match="no BatchNorm"):
        find_unit_groups(_Skip(bn=False))  # nothing can silence `a`'s units on the skip path
    with pytest.raises(ValueError, match="residual"):
        ContinualBackprop(_Skip(bn=True), None, bias_transfer=True)


def test_deepcopied_model_does_not_feed_the_original_hooks() -> None:
    m = mlp(8)
    cbp = ContinualBackprop(m, None)
    twin = copy.deepcopy(m)  # carries the forward hooks along
    twin(torch.randn(3, 4)).sum().backward()
    assert all(f is None for f in cbp.hooks.latest)
    m(torch.randn(3, 4)).sum().backward()
    assert all(f is not None for f in cbp.hooks.latest)


def test_step_without_forward_raises() -> None:
    m = mlp()
    cbp = ContinualBackprop(m, None)
    with pytest.raises(RuntimeError, match="saw no features"):
        cbp.step()
    with torch.no_grad():  # evaluation forwards are not training features
        m(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="saw no features"):
        cbp.step()


def test_without_numba_a_fusable_sgd_run_warns_and_reads_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from lopbook.algos import fused_sgd
    monkeypatch.setattr(fused_sgd, "AVAILABLE", False)
    m = mlp()
    with pytest.warns(UserWarning, match="pip install numba"):
        cbp = ContinualBackprop(m, torch.optim.SGD(m.parameters(), lr=0.1), utility="adaptable_contribution")
    assert cbp.fused_layers == []
    x, y = data(1)[0]
    train_step(m, cbp.optimizer, x, y)
    cbp.step()
    assert torch.allclose(cbp.out_magnitude(0), m[2].weight.detach().abs().sum(0))
    cbp.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # opted out, or nothing to fuse (momentum): no warning
        ContinualBackprop(m, torch.optim.SGD(m.parameters(), lr=0.1), fuse_sgd=False)
        ContinualBackprop(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))


def test_features_changed_in_place_before_step_raise() -> None:
    m = mlp()
    cbp = ContinualBackprop(m, None)
    kept = []
    m[1].register_forward_hook(lambda mod, inp, out: kept.append(out))  # the ReLU output: group 0's features
    m(torch.randn(2, 4)).sum().backward()
    cbp.step()  # the statistics are taken here, from the features the forward kept
    m(torch.randn(2, 4)).sum().backward()
    kept[-1].mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        cbp.step()


# ----------------------------------------------------------------------------------------------- counts

def test_exact_replacement_count_all_eligible() -> None:
    # rho=0.01, 50 eligible units, T=200: 0.5 per step -> exactly floor(0.5*200) = 100 per layer.
    m = mlp(50)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.01, maturity_threshold=0, decay_rate=0.9)
    per_step = []
    for x, y in data(200):
        train_step(m, opt, x, y)
        per_step.append(cbp.step())
    assert cbp.n_replaced == [100, 100]
    assert per_step[:4] == [0, 2, 0, 2]  # one unit per layer every second step


def test_fractional_carry_has_no_float_drift() -> None:
    # 0.03 * 10 = 0.3 per step; naive float accumulation reaches 2.9999999 after 10 steps.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.03, maturity_threshold=0, decay_rate=0.0)
    for x, y in data(100):
        train_step(m, opt, x, y)
        cbp.step()
    assert cbp.n_replaced == [30]


def test_count_matches_reference_algorithm_with_maturity() -> None:
    """Replay paper Algorithm 1's counting rule in plain Python and compare step by step."""
    m = mlp(20)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    rho, mat = 0.07, 7
    cbp = ContinualBackprop(m, opt, replacement_rate=rho, maturity_threshold=mat, decay_rate=0.9)
    for t, (x, y) in enumerate(data(120)):
        ages_before = [s.age_host.copy() + 1 for s in cbp.states]
        counters_before = [s.counter for s in cbp.states]
        train_step(m, opt, x, y)
        cbp.step()
        for i, s in enumerate(cbp.states):
            n_elig = int((ages_before[i] > mat).sum())
            c = counters_before[i] + rho * n_elig if n_elig else counters_before[i]
            k = int(math.floor(c + 1e-9))
            idx = cbp.last_replaced[i]
            got = 0 if idx is None else idx.numel()
            assert got == k, (t, i)
            assert s.counter == pytest.approx(c - k)
            if idx is not None:  # only mature units, and they restart at age 0
                assert (ages_before[i][idx.numpy()] > mat).all()
                assert (s.age_host[idx.numpy()] == 0).all()
        if t < mat:
            assert all(s.n_replaced == 0 for s in cbp.states)
    assert sum(cbp.n_replaced) > 10


def test_lowest_utility_units_are_chosen() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
    with torch.no_grad():
        m[2].weight[:, [3, 7]] = 0.0  # contribution 0
        m[2].weight[:, 5] *= 1e-3
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.2, maturity_threshold=0, decay_rate=0.5)
    train_step(m, opt, torch.randn(16, 4), torch.randn(16, 2))
    assert cbp.step() == 2
    assert sorted(cbp.last_replaced[0].tolist()) == [3, 7]


def test_young_units_are_protected() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.1, maturity_threshold=3, decay_rate=0.5)
    cbp.states[0].age_host[:5] = 100  # units 0-4 are old, 5-9 are young and have zero contribution
    cbp.states[0].age[:5] = 100
    with torch.no_grad():
        m[2].weight[:, 5:] = 0.0
    replaced = []
    for x, y in data(6, out=2):
        train_step(m, opt, x, y)
        cbp.step()
        idx = cbp.last_replaced[0]
        replaced.append([] if idx is None else sorted(idx.tolist()))
    # steps 1-3: 5 eligible (old) units, counter 0.5, 1.0 -> one old unit replaced at step 2 although the
    # young units have zero utility; step 4: the young ones mature (age 4 > 3) and go first
    assert replaced[0] == [] and len(replaced[1]) == 1 and replaced[1][0] < 5 and replaced[2] == []
    assert len(replaced[3]) == 1 and replaced[3][0] >= 5


# ------------------------------------------------------------------------------------ utility numbers

def test_bias_corrected_utility_by_hand() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.eye(2))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.tensor([[2.0, -3.0]]))
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.0, decay_rate=0.5)
    raw = ContinualBackprop(m, opt, replacement_rate=0.0, decay_rate=0.5, bias_correction=False)
    # h1 = relu([1, 2]) = [1, 2]; y1 = |h|*sum|w_out| = [2, 6]; util = 0.5*y1 = [1, 3]; /(1-0.5) = [2, 6]
    train_step(m, opt, torch.tensor([[1.0, 2.0]]), torch.zeros(1, 1))
    cbp.step()
    raw.step()
    assert torch.allclose(cbp.utilities()[0], torch.tensor([2.0, 6.0]))
    assert torch.allclose(raw.utilities()[0], torch.tensor([1.0, 3.0]))
    # h2 = relu([3, -1]) = [3, 0]; y2 = [6, 0]; util = [0.5+3, 1.5+0] = [3.5, 1.5]; /(1-0.25) = [14/3, 2]
    train_step(m, opt, torch.tensor([[3.0, -1.0]]), torch.zeros(1, 1))
    cbp.step()
    raw.step()
    assert torch.allclose(cbp.utilities()[0], torch.tensor([14 / 3, 2.0]))
    assert torch.allclose(raw.utilities()[0], torch.tensor([3.5, 1.5]))


def test_adaptable_contribution_prefers_constant_units() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    with torch.no_grad():
        m[0].weight[2] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # unit 2 reads only the constant input 0
        m[0].bias[2] = 1.0
    chosen = {}
    for utility in ("adaptable_contribution", "contribution"):
        net = copy.deepcopy(m)
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        cbp = ContinualBackprop(net, opt, replacement_rate=0.2, maturity_threshold=2, decay_rate=0.9,
                                utility=utility)
        for x, y in data(3):
            x[:, 0] = 1.0
            train_step(net, opt, x, y)
            cbp.step()
        chosen[utility] = cbp.last_replaced[0].tolist()
    # unit 2 is active (h = 1.5) but constant: |h - mean h| = 0, so only the mean-corrected utility drops it
    assert chosen["adaptable_contribution"] == [2]
    assert chosen["contribution"] != [2]


@pytest.mark.parametrize("utility", ["contribution", "adaptable_contribution"])
def test_conv_utility_is_measured_on_what_the_next_layer_consumes(utility: str) -> None:
    """Conv units are scored on their pooled maps (the next layer's input), conv -> linear per position."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 1))
    x = torch.randn(6, 2, 14, 14)
    cbp = ContinualBackprop(m, None, replacement_rate=0.0, decay_rate=0.0, utility=utility)
    m(x).sum().backward()
    cbp.step()
    with torch.no_grad():
        a1 = torch.relu(m[0](x))                      # (6, 3, 12, 12) before pooling
        p1 = F.max_pool2d(a1, 2)                      # (6, 3, 6, 6): what conv 3 reads
        p2 = F.max_pool2d(torch.relu(m[3](p1)), 2)    # (6, 4, 2, 2): flattened into the Linear
        w3, w7 = m[3].weight, m[7].weight             # (4, 3, 3, 3), (5, 16)
        if utility == "contribution":
            stat1 = p1.abs().mean((0, 2, 3))                       # per channel
            stat2 = p2.abs().mean(0).reshape(4, 4)                 # per channel and position
        else:  # decay 0: the running mean is this batch's mean, per channel / per flattened position
            stat1 = (p1 - p1.mean((0, 2, 3), keepdim=True)).abs().mean((0, 2, 3))
            stat2 = (p2 - p2.mean(0, keepdim=True)).abs().mean(0).reshape(4, 4)
        u1 = stat1 * w3.abs().sum((0, 2, 3))
        u2 = (stat2 * w7.abs().sum(0).reshape(4, 4)).sum(1)   # per-position products, summed over positions
        if utility == "adaptable_contribution":
            u1 = u1 / m[0].weight.abs().flatten(1).mean(1)
            u2 = u2 / m[3].weight.abs().flatten(1).mean(1)
        unpooled = a1.abs().mean((0, 2, 3)) * w3.abs().sum((0, 2, 3))
    assert torch.allclose(cbp.utilities()[0], u1, rtol=1e-5)
    assert torch.allclose(cbp.utilities()[1], u2, rtol=1e-5)
    if utility == "contribution":  # the pre-pooling measure is a different number
        assert not torch.allclose(unpooled, u1, rtol=0.05)


def test_outgoing_magnitude_matches_reference() -> None:
    torch.manual_seed(0)  # wide consumers take the chunked CPU path
    m = nn.Sequential(nn.Conv2d(3, 10, 3), nn.ReLU(), nn.Conv2d(10, 150, 3), nn.ReLU(), nn.Flatten(),
                      nn.Linear(150 * 4, 200), nn.ReLU(), nn.Linear(200, 3))
    g0, g1, g2 = find_unit_groups(m)[0]
    assert torch.allclose(g0.out_magnitude(), m[2].weight.abs().sum((0, 2, 3)))
    assert torch.allclose(g1.out_magnitude(), m[5].weight.abs().sum(0).view(150, 4).sum(1))
    assert torch.allclose(g2.out_magnitude(), m[7].weight.abs().sum(0))
    rows = torch.tensor([3, 70, 149])
    assert torch.allclose(g1.out_magnitude(rows), m[5].weight[rows].abs().sum(0).view(150, 4).sum(1))
    for w in (m[2].weight, m[5].weight):  # one chunked pass for both row and column sums
        r, c = abs_sums(w)
        assert torch.allclose(r, w.abs().flatten(1).sum(1)) and torch.allclose(c, w.abs().sum([0, *range(2, w.dim())]))


def test_out_refresh_reuses_outgoing_magnitude() -> None:
    with pytest.raises(ValueError, match="out_refresh"):
        ContinualBackprop(mlp(), None, out_refresh=0)
    utils = {}
    for lr in (0.0, 0.1):
        for refresh in (1, 4):
            m = mlp(8)
            opt = torch.optim.SGD(m.parameters(), lr=lr)
            cbp = ContinualBackprop(m, opt, replacement_rate=0.0, decay_rate=0.9, out_refresh=refresh)
            for x, y in data(6):
                train_step(m, opt, x, y)
                cbp.step()
            utils[lr, refresh] = cbp.utilities()[0]
    assert torch.allclose(utils[0.0, 1], utils[0.0, 4], rtol=1e-6)  # constant weights: caching changes nothing
    assert not torch.allclose(utils[0.1, 1], utils[0.1, 4], rtol=1e-6, atol=0)
    assert torch.allclose(utils[0.1, 1], utils[0.1, 4], rtol=0.2)  # but only slightly
    # replacements keep the cache exact (lr 0: only CBP changes weights), without re-reading the matrices
    m = convnet()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.3, maturity_threshold=0, decay_rate=0.9, out_refresh=1000)
    for x, y in data(5, shape=(3, 14, 14), out=3):
        train_step(m, opt, x, y)
        cbp.step()
    assert min(cbp.n_replaced) >= 5
    for i, g in enumerate(cbp.groups):
        assert torch.allclose(cbp.out_magnitude(i), g.out_magnitude(per_column=True), atol=1e-5)


def test_out_refresh_rereads_a_rotating_slice_of_rows() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 1))
    cbp = ContinualBackprop(m, None, replacement_rate=0.0, utility="adaptable_contribution", out_refresh=2)
    x = torch.randn(5, 4)

    def step() -> None:
        m(x).sum().backward()
        cbp.step()

    step()  # first step: everything read
    w = m[2].weight  # group 0's outgoing layer (slices: rows 0-4, 5-9) and group 1's incoming layer
    old_cols, old_rows = w.detach().abs().sum(0), w.detach().abs().sum(1)
    with torch.no_grad():
        w.add_(torch.sign(w))  # every |w| grows by exactly 1
    step()  # step 2 re-reads slice 1 (rows 5-9) only
    assert torch.allclose(cbp.out_magnitude(0), old_cols + 5)
    expected_rows = old_rows.clone()
    expected_rows[5:] += 6
    assert torch.allclose(cbp.in_magnitude(1) * 6, expected_rows)
    step()  # step 3: slice 0 -> exact again
    assert torch.allclose(cbp.out_magnitude(0), w.detach().abs().sum(0))
    assert torch.allclose(cbp.in_magnitude(1), w.detach().abs().mean(1))


# -------------------------------------------------------------------------------- function invariance

def _ablated_output(model: nn.Module, cbp: ContinualBackprop, replaced: list, x: torch.Tensor) -> torch.Tensor:
    """Output of a copy of the pre-replacement model whose replaced units' outgoing weights are zero."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for g, idx in zip(cbp.groups, replaced, strict=True):
            if idx is not None:
                mods[g.extra["out_name"]].weight.index_fill_(1, g.out_columns(idx), 0.0)
        return ref(x)


def _check_invariance(model: nn.Module, cbp: ContinualBackprop, opt: torch.optim.Optimizer,
                      batches: list, eval_x: torch.Tensor) -> int:
    checked = 0
    for x, y in batches:
        model.train()
        train_step(model, opt, x, y)
        snapshot = copy.deepcopy(model).eval()
        n = cbp.step()
        if n == 0:
            continue
        model.eval()
        with torch.no_grad():
            after = model(eval_x)
        expected = _ablated_output(snapshot, cbp, cbp.last_replaced, eval_x)
        assert torch.allclose(after, expected, atol=1e-5, rtol=1e-5)
        checked += 1
    return checked


def test_output_unchanged_mlp() -> None:
    m = mlp(20)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.1, maturity_threshold=2, decay_rate=0.9,
                            init="kaiming_uniform")
    assert _check_invariance(m, cbp, opt, data(8), torch.randn(5, 4)) >= 4


def test_output_unchanged_conv_flatten_linear() -> None:
    m = convnet()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.2, maturity_threshold=1, decay_rate=0.9)
    batches = data(6, shape=(3, 14, 14), out=3)
    assert _check_invariance(m, cbp, opt, batches, torch.randn(4, 3, 14, 14)) >= 4


def test_layernorm_makes_a_replacement_change_the_other_units() -> None:
    """The documented exception: the new unit's pre-activation enters the LayerNorm statistics of its layer."""
    from lopbook.nets import MLP

    torch.manual_seed(0)
    m = MLP(4, [16, 16], 1, layer_norm=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    cbp = ContinualBackprop(m, opt, replacement_rate=1 / 16, maturity_threshold=0, decay_rate=0.9)
    x = torch.randn(32, 4)
    train_step(m, opt, x, torch.zeros(32, 1))
    before = copy.deepcopy(m)
    assert cbp.step() == 2
    with torch.no_grad():
        diff = (m(x) - _ablated_output(before, cbp, cbp.last_replaced, x)).abs().max().item()
    assert diff > 1e-3


def test_dead_unit_replacement_leaves_output_exactly_unchanged() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        m[0].weight[1] = 0.0
        m[0].bias[1] = -1.0  # unit 1 is dead: it never fires
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    cbp = ContinualBackprop(m, opt, replacement_rate=1 / 8, maturity_threshold=0, decay_rate=0.9)
    x = torch.randn(16, 4)
    train_step(m, opt, x, torch.zeros(16, 2))
    before = m(x).detach()
    assert cbp.step() == 1 and cbp.last_replaced[0].tolist() == [1]
    assert torch.equal(m(x).detach(), before)
    assert m[0].weight[1].abs().sum() > 0 and m[0].bias[1] == 0 and (m[2].weight[:, 1] == 0).all()


def test_bias_transfer_keeps_constant_unit_contribution() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        m[0].weight[4] = 0.0
        m[0].bias[4] = 0.5  # constant activation 0.5
        m[2].weight[:, 4] = torch.tensor([0.01, -0.02])  # small outgoing weights: lowest utility
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    x = torch.randn(16, 4)
    plain = copy.deepcopy(m)
    out = m(x).detach()
    for model, transfer in ((m, True), (plain, False)):
        cbp = ContinualBackprop(model, opt if transfer else None, replacement_rate=1 / 6, maturity_threshold=0,
                                decay_rate=0.9, bias_transfer=transfer)
        model(x).sum().backward()
        assert cbp.step() == 1 and cbp.last_replaced[0].tolist() == [4]
    assert torch.allclose(m(x), out, atol=1e-6)  # the mean contribution moved into the bias
    assert (plain(x) - out).abs().max() > 1e-3


# --------------------------------------------------------------------------------------- optimizer state

@pytest.mark.parametrize("opt_name", ["sgd", "adam", "amsgrad"])
def test_optimizer_state_zeroed_for_exactly_replaced_entries(opt_name: str) -> None:
    m = convnet()
    params = list(m.parameters())
    if opt_name == "sgd":
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.Adam(params, lr=1e-3, amsgrad=opt_name == "amsgrad")
    cbp = ContinualBackprop(m, opt, replacement_rate=0.25, maturity_threshold=3, decay_rate=0.9)
    batches = data(8, shape=(3, 14, 14), out=3)
    for x, y in batches[:3]:
        train_step(m, opt, x, y)
        assert cbp.step() == 0
    train_step(m, opt, *batches[3])
    before = {id(p): {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in params}
    assert cbp.step() > 0
    expected_zero: dict[int, torch.Tensor] = {id(p): torch.zeros_like(p, dtype=torch.bool) for p in params}
    for g, idx in zip(cbp.groups, cbp.last_replaced, strict=True):
        if idx is None:
            continue
        for p in (g.in_layer.weight, g.in_layer.bias):
            expected_zero[id(p)][idx] = True
        if g.norm is not None:
            expected_zero[id(g.norm.weight)][idx] = True
            expected_zero[id(g.norm.bias)][idx] = True
        expected_zero[id(g.out_layer.weight)][:, g.out_columns(idx)] = True
    keys = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"],
            "amsgrad": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]}[opt_name]
    n_zeroed = 0
    for p in params:
        mask = expected_zero[id(p)]
        for k in keys:
            now, old = opt.state[p][k], before[id(p)][k]
            assert (now[mask] == 0).all()
            assert torch.equal(now[~mask], old[~mask])  # untouched elsewhere
            n_zeroed += int(mask.sum())
        if "step" in opt.state[p]:
            assert torch.equal(opt.state[p]["step"], before[id(p)]["step"])  # scalar step is shared
    assert n_zeroed > 0


# -------------------------------------------------------------------------------------- init & equality

@pytest.mark.parametrize("init", ["default", "kaiming_uniform", "xavier", "lecun", "kaiming_normal"])
def test_new_incoming_weights_follow_init(init: str) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(400, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.5, maturity_threshold=0, decay_rate=0.0, init=init)
    train_step(m, opt, torch.randn(4, 400), torch.zeros(4, 1))
    assert cbp.step() == 32
    idx = cbp.last_replaced[0]
    w = m[0].weight[idx].detach()
    kind, scale = init_bound(cbp.groups[0], init)
    expected = {"default": ("uniform", 1 / 20), "kaiming_uniform": ("uniform", math.sqrt(2) * math.sqrt(3 / 400)),
                "xavier": ("uniform", math.sqrt(2) * math.sqrt(6 / 464)), "lecun": ("uniform", math.sqrt(3 / 400)),
                "kaiming_normal": ("normal", math.sqrt(2) / 20)}[init]
    assert kind == expected[0] and scale == pytest.approx(expected[1])
    if kind == "uniform":
        assert w.abs().max() <= scale and w.abs().max() > 0.95 * scale
        assert w.std().item() == pytest.approx(scale / math.sqrt(3), rel=0.05)
    else:
        assert w.std().item() == pytest.approx(scale, rel=0.05)
    assert (m[0].bias[idx] == 0).all() and (m[2].weight[:, idx] == 0).all()


def test_rate_zero_is_bitwise_plain_backprop() -> None:
    a, b = mlp(30, seed=3), mlp(30, seed=3)
    oa = torch.optim.Adam(a.parameters(), lr=1e-2)
    ob = torch.optim.Adam(b.parameters(), lr=1e-2)
    cbp = ContinualBackprop(b, ob, replacement_rate=0.0, maturity_threshold=0, decay_rate=0.99)
    for x, y in data(150):
        train_step(a, oa, x, y)
        train_step(b, ob, x, y)
        cbp.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert cbp.n_replaced == [0, 0]


def _run(seed: int, opt_name: str = "sgd") -> tuple:
    torch.manual_seed(seed)
    m = mlp(16, seed=seed)
    if opt_name == "sgd":
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    else:  # Adam: the replaced entries' own step counts must survive the checkpoint too
        opt = torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.99, 0.99))
    cbp = ContinualBackprop(m, opt, replacement_rate=0.05, maturity_threshold=5, decay_rate=0.9, out_refresh=7)
    return m, opt, cbp


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_seeded_runs_repeat_exactly_and_resume_identically(opt_name: str) -> None:
    batches = data(60)

    def go(m: nn.Module, opt: torch.optim.Optimizer, cbp: ContinualBackprop, bs: list) -> None:
        for x, y in bs:
            train_step(m, opt, x, y)
            cbp.step()

    runs = []
    for _ in range(2):
        m, opt, cbp = _run(0, opt_name)
        go(m, opt, cbp, batches)
        runs.append((m, cbp))
    assert runs[0][1].n_replaced == runs[1][1].n_replaced and sum(runs[0][1].n_replaced) > 5
    for pa, pb in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        assert torch.equal(pa, pb)

    # interrupted run: 30 steps, checkpoint, rebuild everything, load, 30 more
    m, opt, cbp = _run(0, opt_name)
    go(m, opt, cbp, batches[:30])
    assert (cbp.state_dict()["adam_entry_ages"] is not None) == (opt_name == "adam")
    ckpt = copy.deepcopy({"model": m.state_dict(), "opt": opt.state_dict(), "cbp": cbp.state_dict(),
                          "rng": torch.get_rng_state()})
    m2, opt2, cbp2 = _run(99, opt_name)
    m2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    cbp2.load_state_dict(ckpt["cbp"])
    torch.set_rng_state(ckpt["rng"])
    go(m2, opt2, cbp2, batches[30:])
    assert cbp2.n_replaced == runs[0][1].n_replaced and cbp2.steps == 60
    for pa, pb in zip(runs[0][0].parameters(), m2.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for sa, sb in zip(runs[0][1].states, cbp2.states, strict=True):
        assert torch.equal(sa.util, sb.util) and np.array_equal(sa.age_host, sb.age_host)
    with pytest.raises(ValueError, match="groups"):
        ContinualBackprop(convnet(), None).load_state_dict(ckpt["cbp"])


def test_utility_trace_is_deterministic() -> None:
    a = utility_trace(steps=150)
    b = utility_trace(steps=150)
    assert np.array_equal(a["utility"], b["utility"]) and np.array_equal(a["events"], b["events"])
    assert len(a["events"]) > 0
    # bias correction: at age 1 the corrected utility is the first instantaneous value, the raw one (1-η) of it
    assert np.allclose(a["raw_utility"][0], (1 - 0.95) * a["utility"][0], rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_counts_and_invariance() -> None:
    m = convnet().cuda()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.2, maturity_threshold=1, decay_rate=0.9)
    batches = [(x.cuda(), y.cuda()) for x, y in data(6, shape=(3, 14, 14), out=3)]
    assert _check_invariance(m, cbp, opt, batches, torch.randn(4, 3, 14, 14, device="cuda")) >= 4
    assert all(s.util.is_cuda for s in cbp.states)
    # built on the CPU, moved afterwards: the statistics follow the model
    m2 = convnet()
    cbp2 = ContinualBackprop(m2, None, replacement_rate=0.2, maturity_threshold=0, decay_rate=0.9, out_refresh=3)
    m2.cuda()
    for x, y in batches[:3]:
        F.mse_loss(m2(x), y).backward()
        cbp2.step()
    assert all(s.util.is_cuda for s in cbp2.states) and sum(cbp2.n_replaced) > 0
