"""Plasticity metrics against hand-computed values on small matrices."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lopbook import metrics as M
from lopbook.nets import MLP, ConvNet


def diag(*v: float) -> torch.Tensor:
    return torch.diag(torch.tensor(v, dtype=torch.float64))


def test_effective_rank_hand_computed():
    p = (0.75, 0.25)
    assert M.effective_rank(diag(3, 1)) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-12)
    assert M.effective_rank(torch.eye(6)) == pytest.approx(6.0)
    # rank-1 matrix: one non-zero singular value, 0 ln 0 = 0 -> exactly 1
    assert M.effective_rank(torch.ones(5, 3)) == pytest.approx(1.0)
    assert M.effective_rank(torch.zeros(4, 3)) == 0.0


def test_stable_rank_99_hand_computed():
    for n in (1, 5, 37, 99):
        assert M.stable_rank_99(torch.eye(n)) == n
    # 100 equal singular values: 99/100 reaches 0.99 exactly, so k = 99 (the boundary is inclusive)
    assert M.stable_rank_99(torch.eye(100)) == 99
    assert M.stable_rank_99(torch.outer(torch.arange(1.0, 6.0), torch.ones(4))) == 1
    # σ = (98, 1, 1): 98/100 < 0.99, 99/100 >= 0.99 -> 2; on σ² the first holds 9604/9606 -> 1
    assert M.stable_rank_99(diag(98, 1, 1)) == 2
    assert M.approximate_rank_99(diag(98, 1, 1)) == 1
    assert M.stable_rank_99(torch.zeros(3, 3)) == 0


def test_approximate_rank_99_vs_stable_rank():
    # σ = (10, 1): unsquared share of the first is 10/11 < 0.99 -> 2; squared 100/101 = 0.990099 -> 1
    assert M.stable_rank_99(diag(10, 1)) == 2
    assert M.approximate_rank_99(diag(10, 1)) == 1
    assert M.approximate_rank_99(torch.eye(7)) == 7


def test_classical_stable_rank_and_rank():
    assert M.classical_stable_rank(diag(2, 1)) == pytest.approx(5 / 4)
    assert M.classical_stable_rank(torch.eye(9)) == pytest.approx(9.0)
    assert M.matrix_rank(diag(2, 1, 0)) == 2
    assert M.matrix_rank(torch.ones(6, 4)) == 1
    assert M.matrix_rank(torch.zeros(3, 2)) == 0


def test_feature_rank():
    phi = torch.zeros(4, 3, dtype=torch.float64)
    phi[0, 0], phi[1, 1], phi[2, 2] = 1.0, 0.1, 0.01  # σ/√4 = 0.5, 0.05, 0.005
    assert M.feature_rank(phi, eps=0.01) == 2
    assert M.feature_rank(phi, eps=0.001) == 3


def test_rank_metrics_invariant_to_row_permutation_and_consistent():
    g = torch.Generator().manual_seed(0)
    phi = torch.relu(torch.randn(50, 12, generator=g) @ torch.randn(12, 12, generator=g))
    perm = torch.randperm(50, generator=g)
    a, b = M.rank_metrics(phi), M.rank_metrics(phi[perm])
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-10)
    assert a["width"] == 12
    assert 1 <= a["effective_rank"] <= a["matrix_rank"] <= 12
    assert a["approximate_rank_99"] <= a["stable_rank_99"] <= a["matrix_rank"]
    assert a["effective_rank"] == M.effective_rank(phi)
    # unit-wise metrics too
    assert M.dormant_fraction(phi) == M.dormant_fraction(phi[perm])
    assert M.redo_dormant_fraction(phi, 0.5) == M.redo_dormant_fraction(phi[perm], 0.5)


def test_dormant_and_dead_on_crafted_activations():
    n = 200
    h = torch.ones(n, 5)
    h[:, 0] = 0.0  # dead: zero everywhere -> dormant and dead
    h[:, 1] = 0.0
    h[0, 1] = 3.0  # active on 1/200 = 0.5 % < 1 %: dormant, not dead
    h[:, 2] = 0.0
    h[:2, 2] = 1.0  # active on exactly 1 %: not dormant (strict <), dormant with inclusive (RL's <=)
    h[:, 3] = -1.0  # negative everywhere (e.g. leaky relu): inactive -> dormant, but not "dead" (not == 0)
    assert M.dormant_fraction(h) == pytest.approx(3 / 5)
    assert M.dormant_fraction(h, inclusive=True) == pytest.approx(4 / 5)
    assert M.dead_fraction(h) == pytest.approx(1 / 5)
    torch.testing.assert_close(M.active_fraction(h), torch.tensor([0, 0.005, 0.01, 0, 1], dtype=torch.float64))
    # pooled over layers by unit count: 3 dormant of 5, plus 1 of 3
    other = torch.ones(10, 3)
    other[:, 2] = 0
    assert M.dormant_fraction({"a": h, "b": other}) == pytest.approx(4 / 8)
    assert M.dead_fraction({"a": h, "b": other}) == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="empty"):
        M.dormant_fraction({})


def test_conv_features_reduce_over_batch_and_spatial():
    f = torch.zeros(4, 3, 5, 5)
    f[:, 0] = 1.0  # channel 0 always active
    f[0, 1, 0, 0] = 1.0  # channel 1: 1 of 4*25 = 100 positions -> 1 % active -> not dormant
    # channel 2: never active -> dead and dormant
    assert M.dormant_fraction(f) == pytest.approx(1 / 3)
    assert M.dead_fraction(f) == pytest.approx(1 / 3)
    torch.testing.assert_close(M.active_fraction(f), torch.tensor([1.0, 0.01, 0.0], dtype=torch.float64))
    # rank metrics use spatially averaged (N, C) features
    torch.testing.assert_close(M.feature_matrix(f), f.mean(dim=(2, 3)))
    assert M.matrix_rank(f) == 2


def test_redo_scores_and_fraction():
    h = torch.tensor([[1.0, 2.0, 0.0, -3.0], [1.0, 2.0, 0.0, 3.0]])
    # E|h| = (1, 2, 0, 3), layer mean 1.5 -> s = (2/3, 4/3, 0, 2)
    torch.testing.assert_close(M.redo_scores(h), torch.tensor([2 / 3, 4 / 3, 0.0, 2.0], dtype=torch.float64))
    assert M.redo_dormant_fraction(h, 0.0) == pytest.approx(1 / 4)
    assert M.redo_dormant_fraction(h, 0.7) == pytest.approx(2 / 4)
    assert M.redo_dormant_fraction(torch.zeros(3, 2), 0.0) == 1.0
    # scale invariant
    assert M.redo_dormant_fraction(7 * h, 0.7) == M.redo_dormant_fraction(h, 0.7)


def test_saturated_fraction():
    h = torch.tensor([[0.95, -0.91, 0.5, 0.0], [0.9, -0.99, 0.1, 1.0]])
    assert M.saturated_fraction(h, "tanh") == pytest.approx(4 / 8)  # 0.9 itself is not > 0.9
    s = torch.tensor([[0.96, 0.04, 0.5, 0.95]])  # |2s-1| = 0.92, 0.92, 0, 0.9
    assert M.saturated_fraction(s, "sigmoid") == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="tanh"):
        M.saturated_fraction(h, "relu")


def test_weight_magnitude_variants():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[0].bias.fill_(100.0)
        net[2].weight.fill_(-1.0)
        net[2].bias.fill_(0.0)
    # weights only: (6*2 + 3*1) / 9
    assert M.mean_abs_weight(net) == pytest.approx(15 / 9)
    assert M.mean_abs_weight(net, per_layer=True) == {"0": pytest.approx(2.0), "2": pytest.approx(1.0)}
    # all params: (12 + 300 + 3 + 0) / 13
    assert M.mean_abs_param(net) == pytest.approx(315 / 13)


def test_grad_norm():
    net = nn.Linear(3, 1)
    assert M.grad_norm(net) == 0.0
    net.weight.grad = torch.tensor([[3.0, 0.0, 0.0]])
    net.bias.grad = torch.tensor([4.0])
    assert M.grad_norm(net) == pytest.approx(5.0)


def test_collect_features_eval_mode_no_grad_and_restore():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    net.train()
    net[5].eval()  # a mixed-mode network must come back exactly as it was
    x = torch.randn(9, 4)
    feats = M.collect_features(net, x)
    assert list(feats) == ["1", "4"]
    assert feats["1"].shape == (9, 6) and not feats["1"].requires_grad
    # eval mode: dropout off, so the captured features equal the deterministic forward
    torch.testing.assert_close(feats["4"], torch.tanh(net[3](torch.relu(net[0](x)))).detach())
    assert net.training and net[2].training and not net[5].training  # restored per module
    assert all(not m._forward_hooks for m in net.modules())


def test_collect_features_shared_module_and_convnet():
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    feats = M.collect_features(net, torch.randn(2, 3))
    assert list(feats) == ["1", "1#1"]
    conv = ConvNet()
    f = M.collect_features(conv, torch.randn(3, 3, 32, 32))
    assert [tuple(v.shape[1:]) for v in f.values()] == [(32, 28, 28), (64, 12, 12), (128, 4, 4), (128,), (128,)]


def test_plasticity_report():
    torch.manual_seed(1)
    net = MLP(5, [8, 6], 2, ["relu", "tanh"])
    with torch.no_grad():
        net.layers[0].weight[:4] = 0.0
        net.layers[0].bias[:4] = -1.0  # 4 of 8 first-layer units are dead
    net.train()
    x = torch.randn(64, 5)
    r = M.plasticity_report(net, x)
    assert net.training
    assert r["width"] == 6
    assert r["dead_fraction"] == pytest.approx(4 / 14)
    feats = M.collect_features(net, x)
    assert r["effective_rank"] == pytest.approx(M.effective_rank(feats["layers.3"]))
    assert r["stable_rank_99"] == M.stable_rank_99(feats["layers.3"])
    assert r["mean_abs_weight"] == pytest.approx(M.mean_abs_weight(net))
    assert "saturated_fraction_tanh" in r and "saturated_fraction_sigmoid" not in r
    r1 = M.plasticity_report(net, x, feature_layer="layers.1")
    assert r1["width"] == 8 and r1["stable_rank_99"] <= 4
    with pytest.raises(ValueError, match="feature_layer"):
        M.plasticity_report(net, x, feature_layer="nope")
    with pytest.raises(ValueError, match="activation modules"):
        M.plasticity_report(nn.Linear(5, 2), x)
