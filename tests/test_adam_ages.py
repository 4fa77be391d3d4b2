"""Adam after a replacement: re-initialised entries are bias-corrected like fresh Adam entries."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lopbook.algos.adam_ages import entry_ages
from lopbook.algos.cbp import ContinualBackprop
from lopbook.algos.units import find_unit_groups, reinit_units

torch.set_num_threads(1)

BETAS = [(0.9, 0.999), (0.99, 0.99)]


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2))


class PerElementAdam:
    """Reference: Adam/AdamW with one step count per element (what a fresh entry would get)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float], eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, amsgrad: bool = False):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.wd, self.decoupled, self.amsgrad = weight_decay, decoupled, amsgrad
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.vmax = [torch.zeros_like(p) for p in params]
        self.k = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for p, m, v, vmax, k in zip(self.params, self.m, self.v, self.vmax, self.k, strict=True):
            g = p.grad.clone()
            if self.decoupled:
                p.mul_(1 - self.lr * self.wd)
            else:
                g += self.wd * p
            k += 1
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            torch.maximum(vmax, v, out=vmax)
            den = (vmax if self.amsgrad else v).sqrt() / (1 - b2 ** k).sqrt() + self.eps
            p -= self.lr * m / (1 - b1 ** k) / den

    def reset(self, i: int, index: torch.Tensor, dim: int) -> None:
        for buf in (self.m[i], self.v[i], self.vmax[i], self.k[i]):
            buf.index_fill_(dim, index, 0.0)


@pytest.mark.parametrize("betas", BETAS)
@pytest.mark.parametrize("kind", ["adam", "adamw", "amsgrad"])
def test_reset_entries_follow_per_element_adam(betas: tuple[float, float], kind: str) -> None:
    a = net()
    b = copy.deepcopy(a)
    lr, wd = 3e-3, 1e-2 if kind != "amsgrad" else 0.0
    if kind == "adamw":
        opt = torch.optim.AdamW(a.parameters(), lr=lr, betas=betas, weight_decay=wd)
    else:
        opt = torch.optim.Adam(a.parameters(), lr=lr, betas=betas, weight_decay=wd, amsgrad=kind == "amsgrad")
    ref = PerElementAdam(list(b.parameters()), lr, betas, weight_decay=wd, decoupled=kind == "adamw",
                         amsgrad=kind == "amsgrad")
    plain = copy.deepcopy(a)  # torch Adam, moments zeroed but no per-entry step: what lopbook did before
    opt_plain = type(opt)(plain.parameters(), lr=lr, betas=betas, weight_decay=wd, amsgrad=kind == "amsgrad")
    groups = find_unit_groups(a)[0]
    gen = torch.Generator().manual_seed(1)
    index = {a_p: i for i, a_p in enumerate(a.parameters())}
    for t in range(250):
        x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
        for model, o in ((a, opt), (b, ref), (plain, opt_plain)):
            model.zero_grad() if o is ref else o.zero_grad()
            F.mse_loss(model(x), y).backward()
            o.step()
        if t in (40, 100):  # replace units in both layers; the reference resets its per-element steps
            for g, idx in ((groups[0], torch.tensor([2, 5])), (groups[1], torch.tensor([1]))):
                reinit_units(g, idx, "default", opt)
                for p, dim in ((g.in_layer.weight, 0), (g.in_layer.bias, 0), (g.out_layer.weight, 1)):
                    ref.reset(index[p], idx, dim)
            opt_plain.load_state_dict(copy.deepcopy(opt.state_dict()))  # same zeroed moments, shared step
            with torch.no_grad():
                for pb, pp, pa in zip(b.parameters(), plain.parameters(), a.parameters(), strict=True):
                    pb.copy_(pa)
                    pp.copy_(pa)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6)
    diff = max((pa - pp).abs().max().item() for pa, pp in zip(a.parameters(), plain.parameters(), strict=True))
    assert diff > 1e-3  # without per-entry steps the trajectories differ: the test can tell


def _outgoing_moves(opt_cls: type, betas: tuple[float, float], correct: bool, **kw: float) -> torch.Tensor:
    """|Δ W_out[:, u]| / lr per step over the 200 steps after CBP replaced unit u (rows: steps)."""
    m = net(3)
    lr = 1e-3
    opt = opt_cls(m.parameters(), lr=lr, betas=betas, **kw)
    cbp = ContinualBackprop(m, opt, replacement_rate=1 / 6, maturity_threshold=300, decay_rate=0.9)
    gen = torch.Generator().manual_seed(2)
    w_true = torch.randn(3, 2, generator=gen)
    moves, prev, u = [], None, None
    for _ in range(501):
        x = torch.randn(32, 3, generator=gen)
        loss = F.mse_loss(m(x), torch.sin(x @ w_true))
        opt.zero_grad()
        loss.backward()
        opt.step()
        w = m[4].weight.detach()
        if prev is not None:
            moves.append((w[:, u] - prev).abs() / lr)
            prev = w[:, u].clone()
        cbp.step()
        if u is None and cbp.last_replaced[1] is not None:
            u = int(cbp.last_replaced[1][0])
            cbp.replacement_rate = 0.0  # one forced replacement, then watch
            prev = w[:, u].clone()
            if not correct:
                entry_ages(opt).remove()
        if len(moves) == 200:
            break
    assert len(moves) == 200
    return torch.stack(moves)


@pytest.mark.parametrize("betas", BETAS)
@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
def test_replaced_units_outgoing_weights_move_like_fresh_adam_entries(opt_cls: type,
                                                                      betas: tuple[float, float]) -> None:
    moves = _outgoing_moves(opt_cls, betas, correct=True)
    assert moves.max() <= 1.5
    # a fresh entry's first Adam step is lr * g/|g| (up to eps): exactly 1x the learning rate
    assert torch.allclose(moves[0], torch.ones_like(moves[0]), atol=0.02)
    uncorrected = _outgoing_moves(opt_cls, betas, correct=False)
    if betas == (0.9, 0.999):
        assert uncorrected.max() > 2.0  # torch's shared step: 2-3x the learning rate at first
    else:
        assert uncorrected[0].max() < 0.2  # the opposite: a 10x too small first step


def test_bookkeeping_ends_after_the_horizon_and_checkpoints() -> None:
    m = net()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.9))
    groups = find_unit_groups(m)[0]
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(m(x), y).backward()
        opt.step()
    reinit_units(groups[0], torch.tensor([0]), "default", opt)
    ages = entry_ages(opt)
    assert len(ages._tracks) == 3  # weight rows, bias, next layer's columns
    saved = copy.deepcopy(ages.state_dict())
    horizon = math.ceil(math.log(1e-4) / math.log(0.9))
    for _ in range(horizon + 1):
        opt.zero_grad()
        F.mse_loss(m(x), y).backward()
        opt.step()
    assert ages._tracks == {}
    ages.load_state_dict(saved)
    assert len(ages._tracks) == 3 and int(ages._tracks[id(m[0].weight)].rows[0]) == 3
    assert entry_ages(torch.optim.SGD(m.parameters(), lr=0.1)) is None



@pytest.mark.parametrize("betas", BETAS)
def test_redo_resets_get_fresh_adam_steps_too(betas: tuple[float, float]) -> None:
    from lopbook.algos.redo import ReDo

    m = net(4)
    lr = 1e-3
    opt = torch.optim.AdamW(m.parameters(), lr=lr, betas=betas, weight_decay=1e-2)
    redo = ReDo(m, opt, threshold=0.05, reset_period=300)
    gen = torch.Generator().manual_seed(3)
    w_true = torch.randn(3, 2, generator=gen)
    moves, prev = [], None
    for t in range(500):
        if t == 298:  # unit 2 of the first layer goes dormant just before the reset step
            with torch.no_grad():
                m[0].weight[2], m[0].bias[2] = 0.0, 0.0
        x = torch.randn(32, 3, generator=gen)
        opt.zero_grad()
        F.mse_loss(m(x), torch.sin(x @ w_true)).backward()
        opt.step()
        w = m[2].weight.detach()
        if prev is not None:
            moves.append((w[:, 2] - prev).abs() / lr)
        if redo.step():
            assert 2 in torch.nonzero(redo.last_scores[0] <= 0.05).flatten().tolist()
            prev = w[:, 2].clone()
        elif prev is not None:
            prev = w[:, 2].clone()
    moves = torch.stack(moves)
    assert len(moves) == 200 and moves.max() <= 1.5
    assert torch.allclose(moves[0], torch.ones_like(moves[0]), atol=0.03)
