"""Non-CBP baselines: optimiser factory, Shrink & Perturb, L2 Init, resets and the method factory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lopbook.algos import L2Init, ShrinkAndPerturb, build_method, make_optimizer, reset_head, reset_parameters
from lopbook.algos.factory import optimizer_kwargs_for
from lopbook.nets import MLP, ConvNet


def train_steps(model, opt, methods, steps, seed):
    """A few SGD steps on random regression data drawn *inside* the loop (so any stray RNG use would show)."""
    torch.manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, model.in_dim), torch.randn(8, model.out_dim)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        for m in methods:
            m.step()


# ---------------------------------------------------------------- make_optimizer

def test_make_optimizer_types_and_settings():
    p = [nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(p, "sgd", 0.1, momentum=0.9, weight_decay=1e-4)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["weight_decay"] == 1e-4
    adam = make_optimizer(p, "Adam", 1e-3, betas=(0.99, 0.99))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.99, 0.99)
    assert make_optimizer(p, "adam", 1e-3).param_groups[0]["betas"] == (0.9, 0.999)
    assert type(make_optimizer(p, "adamw", 1e-3, weight_decay=0.01)) is torch.optim.AdamW


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "rmsprop"}, "unknown optimizer"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"momentum": 1.0}, "momentum must be in"),
    ({"name": "adam", "momentum": 0.9}, "sgd only"),
    ({"name": "sgd", "betas": (0.9, 0.99)}, "betas apply to adam"),
    ({"name": "adam", "betas": (0.9, 1.0)}, "betas must be"),
])
def test_make_optimizer_validation(kwargs, match):
    kwargs = {"name": "sgd", "lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_optimizer([nn.Parameter(torch.zeros(2))], **kwargs)


def test_make_optimizer_empty_params():
    m = nn.Linear(2, 2)
    gen = m.parameters()
    list(gen)
    with pytest.raises(ValueError, match="no parameters"):
        make_optimizer(gen, "sgd", 0.1)


# ---------------------------------------------------------------- Shrink & Perturb

def test_snp_zero_noise_equals_backprop_bit_for_bit():
    torch.manual_seed(0)
    a = MLP(10, [32, 32], 2)
    b = MLP(10, [32, 32], 2)
    b.load_state_dict(a.state_dict())
    opt_a = make_optimizer(a.parameters(), "sgd", 0.05, momentum=0.9)
    opt_b = make_optimizer(b.parameters(), "sgd", 0.05, momentum=0.9)
    train_steps(a, opt_a, [], 20, seed=3)
    train_steps(b, opt_b, [ShrinkAndPerturb(b, noise_std=0.0)], 20, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_snp_noise_has_the_right_std_on_weights_and_biases():
    torch.manual_seed(0)
    model = MLP(200, [300], 100, layer_norm=True)
    before = {n: p.clone() for n, p in model.named_parameters()}
    snp = ShrinkAndPerturb(model, noise_std=0.01)
    snp.step()
    diffs = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    w = torch.cat([diffs["layers.0.weight"].flatten(), diffs["layers.3.weight"].flatten()])
    assert w.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(w.mean().item()) < 3 * 0.01 / math.sqrt(w.numel())
    assert diffs["layers.0.bias"].abs().min() > 0 and diffs["layers.3.bias"].std().item() == pytest.approx(0.01, rel=0.3)
    # default targets are Linear/Conv layers only: LayerNorm untouched (CIFAR's "all" would include it)
    assert torch.equal(diffs["layers.1.weight"], torch.zeros(300))
    ShrinkAndPerturb(model, noise_std=0.01, targets="all").step()
    assert not torch.equal(model.layers[1].weight.detach(), before["layers.1.weight"])


def test_snp_generator_reproducible_and_checkpointable():
    x1, x2 = MLP(5, [4], 1), MLP(5, [4], 1)
    x2.load_state_dict(x1.state_dict())
    start = {k: v.clone() for k, v in x1.state_dict().items()}
    ShrinkAndPerturb(x1, 0.1, generator=torch.Generator().manual_seed(5)).step()
    ShrinkAndPerturb(x2, 0.1, generator=torch.Generator().manual_seed(5)).step()
    assert all(torch.equal(a, b) for a, b in zip(x1.parameters(), x2.parameters(), strict=True))
    # resume from a checkpoint: restoring the generator state reproduces the next perturbation exactly
    x1.load_state_dict(start)
    s1 = ShrinkAndPerturb(x1, 0.1, generator=torch.Generator().manual_seed(7))
    ckpt = s1.state_dict()
    s1.step()
    x2.load_state_dict(start)
    s2 = ShrinkAndPerturb(x2, 0.1, generator=torch.Generator().manual_seed(123))
    s2.load_state_dict(ckpt)
    s2.step()
    assert all(torch.equal(a, b) for a, b in zip(x1.parameters(), x2.parameters(), strict=True))
    assert not torch.equal(x1.head.weight, start["layers.2.weight"])


def test_snp_multiplicative_shrink_and_its_equivalence_to_coupled_l2():
    torch.manual_seed(0)
    model = MLP(6, [5], 3)
    before = [p.clone() for p in model.parameters()]
    ShrinkAndPerturb(model, noise_std=0.0, shrink=0.5).step()
    assert all(torch.equal(p, 0.5 * b) for p, b in zip(model.parameters(), before, strict=True))
    # with zero gradients, plain SGD's coupled L2 (lr α, decay λ) is the multiplicative shrink 1 - αλ
    a, b = MLP(6, [5], 3), MLP(6, [5], 3)
    b.load_state_dict(a.state_dict())
    opt = make_optimizer(a.parameters(), "sgd", 0.1, weight_decay=0.2)
    for p in a.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    ShrinkAndPerturb(b, 0.0, shrink=1 - 0.1 * 0.2).step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_snp_validation():
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="noise_std"):
        ShrinkAndPerturb(m, -1.0)
    with pytest.raises(ValueError, match="shrink"):
        ShrinkAndPerturb(m, 0.1, shrink=1.5)
    with pytest.raises(ValueError, match="targets"):
        ShrinkAndPerturb(m, 0.1, targets="weights")


# ---------------------------------------------------------------- L2 Init

def test_l2init_distance_shrinks_by_exact_factor_with_zero_gradients():
    torch.manual_seed(0)
    model = MLP(8, [6], 2)
    reg = L2Init(model, strength=0.5, lr=0.1)
    theta0 = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    d0 = reg.distance()
    for k in range(1, 4):
        reg.step()
        assert reg.distance() == pytest.approx(d0 * (1 - 0.05) ** k, rel=1e-6)
    # coordinate-wise: θ - θ₀ is scaled by exactly (1 - lr·λ) per step
    prev = [p.detach() - p0 for p, p0 in zip(model.parameters(), theta0, strict=True)]
    reg.step()
    for p, p0, d in zip(model.parameters(), theta0, prev, strict=True):
        torch.testing.assert_close(p.detach() - p0, 0.95 * d)


def test_l2init_keeps_training_closer_to_init_than_bp():
    torch.manual_seed(1)
    a = MLP(10, [16], 2)
    b = MLP(10, [16], 2)
    b.load_state_dict(a.state_dict())
    ra = L2Init(a, strength=0.0, lr=0.1)  # strength 0: a pure distance probe, no pull
    rb = L2Init(b, strength=1.0, lr=0.1)
    train_steps(a, make_optimizer(a.parameters(), "sgd", 0.1), [ra], 50, seed=2)
    train_steps(b, make_optimizer(b.parameters(), "sgd", 0.1), [rb], 50, seed=2)
    assert rb.distance() < 0.8 * ra.distance()


def test_l2init_penalty_gradient_and_state_dict():
    model = nn.Linear(3, 2)
    reg = L2Init(model, strength=0.3, lr=0.1)
    with torch.no_grad():
        model.weight.add_(1.0)
    reg.penalty().backward()
    torch.testing.assert_close(model.weight.grad, torch.full((2, 3), 0.3))
    torch.testing.assert_close(model.bias.grad, torch.zeros(2))
    other = L2Init(nn.Linear(3, 2), strength=1.0, lr=1.0)
    other.load_state_dict(reg.state_dict())
    assert other.strength == 0.3 and torch.equal(other.init_params[0], reg.init_params[0])
    with pytest.raises(ValueError, match="does not match"):
        L2Init(nn.Linear(4, 2), 0.1, 0.1).load_state_dict(reg.state_dict())
    with pytest.raises(ValueError, match="overshoot"):
        L2Init(model, strength=20.0, lr=0.1)


# ---------------------------------------------------------------- resets

def _sgd_with_state(model):
    opt = make_optimizer(model.parameters(), "sgd", 0.01, momentum=0.9)
    x = torch.randn(4, 3, 32, 32) if isinstance(model, ConvNet) else torch.randn(4, model.in_dim)
    model(x).sum().backward()
    opt.step()
    return opt


def test_reset_head_zero_clears_only_head_state():
    torch.manual_seed(0)
    net = ConvNet()
    opt = _sgd_with_state(net)
    head = reset_head(net.head, opt, mode="zero")
    assert head is net.head
    assert net.head.weight.abs().sum() == 0 and net.head.bias.abs().sum() == 0
    head_ids = {id(p) for p in net.head.parameters()}
    for p in net.parameters():
        assert (p in opt.state) == (id(p) not in head_ids)
    # after a reset the next SGD step starts a fresh momentum buffer for the head: buf == grad
    opt.zero_grad()
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    g = net.head.weight.grad.clone()
    opt.step()
    torch.testing.assert_close(opt.state[net.head.weight]["momentum_buffer"], g)


def test_reset_head_reinit_kaiming_normal_linear():
    torch.manual_seed(0)
    model = MLP(4, [512], 400)
    with torch.no_grad():
        model.head.bias.fill_(1.0)
    reset_head(model, mode="reinit")  # a model with a .head is accepted too
    assert model.head.weight.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.02)
    assert model.head.bias.abs().sum() == 0
    from lopbook.nets import ResNet18

    resnet = ResNet18(num_classes=5, widths=(4, 4, 4, 4))
    assert reset_head(resnet, mode="zero") is resnet.fc and resnet.fc.weight.abs().sum() == 0
    with pytest.raises(ValueError, match="mode"):
        reset_head(model.head, mode="random")
    with pytest.raises(ValueError, match="output layer"):
        reset_head(nn.ReLU())


def test_reset_parameters_reinitialises_with_own_init_and_clears_state():
    torch.manual_seed(0)
    model = MLP(50, [40], 5, "tanh")
    opt = _sgd_with_state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(10.0)
    reset_parameters(model, opt)
    assert len(opt.state) == 0
    w = model.hidden_linears[0].weight
    assert w.abs().max() <= 5 / 3 * math.sqrt(3 / 50)  # the MLP's kaiming-tanh bound, not torch's default
    assert all(lin.bias.abs().sum() == 0 for lin in [*model.hidden_linears, model.head])
    # Adam restarts its step counter
    adam = make_optimizer(model.parameters(), "adam", 1e-3)
    model(torch.randn(2, 50)).sum().backward()
    adam.step()
    reset_parameters(model, adam)
    assert len(adam.state) == 0


def test_reset_parameters_fallback_warns_for_plain_modules():
    seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        seq[0].weight.fill_(5.0)
    with pytest.warns(UserWarning, match="default init"):
        reset_parameters(seq)
    assert seq[0].weight.abs().max() <= 1 / math.sqrt(3)


# ---------------------------------------------------------------- build_method

def _opt(model, spec):
    return make_optimizer(model.parameters(), "sgd", 0.01, **optimizer_kwargs_for(spec))


def test_build_method_baselines():
    model = MLP(4, [8], 2)
    assert build_method({"name": "bp"}, model, _opt(model, {"name": "bp"})) == []
    spec = {"name": "l2", "weight_decay": 1e-4}
    opt = _opt(model, spec)
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    assert build_method(spec, model, opt) == []
    spec = {"name": "snp", "noise_std": 1e-5, "weight_decay": 1e-4}
    (snp,) = build_method(spec, model, _opt(model, spec))
    assert isinstance(snp, ShrinkAndPerturb) and snp.noise_std == 1e-5 and snp.shrink is None
    spec = {"name": "l2init", "strength": 0.01}
    (reg,) = build_method(spec, model, _opt(model, spec))
    assert isinstance(reg, L2Init) and reg.lr == 0.01 and reg.strength == 0.01


def test_build_method_cbp_and_redo_pass_through():
    from lopbook.algos import ContinualBackprop, ReDo

    model = MLP(4, [8, 8], 2)
    spec = {"name": "cbp", "replacement_rate": 1e-4, "maturity_threshold": 100, "decay_rate": 0.99,
            "weight_decay": 1e-4}
    (cbp,) = build_method(spec, model, _opt(model, spec))
    assert isinstance(cbp, ContinualBackprop)
    spec = {"name": "redo", "threshold": 0.1}
    (redo,) = build_method(spec, model, _opt(model, spec))
    assert isinstance(redo, ReDo)
    with pytest.raises(ValueError, match="unknown keys \\['replacment_rate'\\]"):
        build_method({"name": "cbp", "replacment_rate": 1e-4}, model, _opt(model, {"name": "cbp"}))


@pytest.mark.parametrize("spec, match", [
    ({"name": "ewc"}, "unknown method"),
    ({"noise_std": 1.0}, "'name' key"),
    ({"name": "snp"}, "needs \\['noise_std'\\]"),
    ({"name": "snp", "noise_std": 1e-5, "perturb_scale": 1e-5}, "unknown keys \\['perturb_scale'\\]"),
    ({"name": "l2"}, "weight_decay > 0"),
    ({"name": "bp", "weight_decay": 1e-3}, "L2 baseline"),
    ({"name": "l2init"}, "needs \\['strength'\\]"),
])
def test_build_method_errors(spec, match):
    model = MLP(4, [8], 2)
    with pytest.raises(ValueError, match=match):
        build_method(spec, model, make_optimizer(model.parameters(), "sgd", 0.01))


def test_build_method_checks_optimizer_weight_decay():
    model = MLP(4, [8], 2)
    with pytest.raises(ValueError, match="optimizer has \\[0.0\\]"):
        build_method({"name": "l2", "weight_decay": 1e-4}, model, make_optimizer(model.parameters(), "sgd", 0.1))
