"""ReDo: which units are reset, when, how (weights and Adam state), and checkpointing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lopbook.algos.redo import ReDo

torch.set_num_threads(1)


def net_with_dormant_units() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        m[0].weight[[2, 5]] = 0.0
        m[0].bias[[2, 5]] = -1.0  # units 2 and 5 of layer 0 never fire
        m[0].bias[[0, 1, 3, 4, 6, 7]] = 1.0  # the others always fire, so their scores are well above 0.1
        m[0].weight[[0, 1, 3, 4, 6, 7]] = 0.1
    return m


def step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = F.mse_loss(m(x), torch.zeros(x.shape[0], 1))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_validation() -> None:
    m = net_with_dormant_units()
    with pytest.raises(ValueError, match="threshold"):
        ReDo(m, None, threshold=-0.1)
    with pytest.raises(ValueError, match="reset_period"):
        ReDo(m, None, reset_period=0)
    with pytest.raises(ValueError, match="init"):
        ReDo(m, None, init="zeros")


def test_resets_exactly_dormant_units_on_period_with_adam_state() -> None:
    m = net_with_dormant_units()
    opt = torch.optim.Adam(m.parameters(), lr=0.0)  # lr 0: only ReDo changes weights
    redo = ReDo(m, opt, threshold=0.1, reset_period=5)
    x = torch.rand(32, 4)
    w_before = m[0].weight.detach().clone()
    for t in range(1, 5):
        step(m, opt, x)
        assert redo.step() == 0, t
        assert redo.hooks.enabled == (t == 4)  # features are reduced only before a reset step
    assert torch.equal(m[0].weight, w_before)
    step(m, opt, x)
    for p in m.parameters():  # make Adam moments non-zero everywhere, to see which slices get zeroed
        opt.state[p]["exp_avg"].fill_(1.0)
    n = redo.step()
    s0 = redo.last_scores[0]
    assert s0[[2, 5]].eq(0).all() and (s0[[0, 1, 3, 4, 6, 7]] > 0.1).all()
    assert n == redo.n_reset[0] + redo.n_reset[1] and redo.n_reset[0] == 2
    # layer 0 units 2, 5: incoming re-drawn within the default bound, bias 0, outgoing columns 0
    assert (m[0].weight[[2, 5]].abs() > 0).any() and (m[0].weight[[2, 5]].abs() <= 0.5).all()
    assert (m[0].bias[[2, 5]] == 0).all() and (m[2].weight[:, [2, 5]] == 0).all()
    keep = [0, 1, 3, 4, 6, 7]
    assert torch.equal(m[0].weight[keep], w_before[keep])
    st_in, st_out = opt.state[m[0].weight]["exp_avg"], opt.state[m[2].weight]["exp_avg"]
    assert (st_in[[2, 5]] == 0).all() and (st_in[keep] == 1).all()
    reset1 = torch.nonzero(redo.last_scores[1] <= 0.1).flatten()  # layer-1 units reset too: their rows of
    expected = torch.ones_like(st_out)                              # m[2].weight are re-drawn and zeroed
    expected[reset1] = 0.0
    expected[:, [2, 5]] = 0.0
    assert len(reset1) == redo.n_reset[1] > 0 and torch.equal(st_out, expected)
    # a reset unit's outgoing weights stay 0 even into the fresh rows of reset units of the next layer
    assert (m[2].weight[reset1].abs().sum(1) > 0).all()


def test_scores_are_normalised_by_layer_mean() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        m[0].weight.zero_()
        m[0].bias.copy_(torch.tensor([0.1, 1.0, 1.9]))  # E|h| = 0.1, 1, 1.9; layer mean 1
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    redo = ReDo(m, opt, threshold=0.1, reset_period=1)
    step(m, opt, torch.randn(4, 2))
    assert redo.step() == 1
    assert torch.allclose(redo.last_scores[0], torch.tensor([0.1, 1.0, 1.9]), atol=1e-6)
    assert m[0].bias[0] == 0 and m[0].bias[1] == 1.0


def test_state_dict_round_trip_keeps_phase() -> None:
    m = net_with_dormant_units()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    redo = ReDo(m, opt, reset_period=3)
    x = torch.rand(8, 4)
    for _ in range(4):
        step(m, opt, x)
        redo.step()
    state = redo.state_dict()
    redo.remove()
    m2 = net_with_dormant_units()
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.0)
    redo2 = ReDo(m2, opt2, reset_period=3)
    redo2.load_state_dict(state)
    assert redo2.steps == 4 and redo2.n_reset == redo.n_reset and not redo2.hooks.enabled
    step(m2, opt2, x)
    assert redo2.step() == 0 and redo2.hooks.enabled  # step 5; step 6 is the next reset
    step(m2, opt2, x)
    assert redo2.step() > 0 and redo2.n_reset[0] == redo.n_reset[0] + 2  # units 2, 5 of the fresh copy
