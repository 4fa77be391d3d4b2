"""Networks: shapes, parameter counts, activation layout and initialisation bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lopbook.nets import MLP, ConvNet, PPOActor, PPOCritic, make_activation
from lopbook.nets.mlp import ACTIVATION_NAMES, IdentityActivation, activation_gain


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_make_activation_names_and_error():
    assert isinstance(make_activation("swish"), nn.SiLU)
    assert isinstance(make_activation("ReLU"), nn.ReLU)
    assert isinstance(make_activation("linear"), IdentityActivation)
    assert make_activation("relu") is not make_activation("relu")  # fresh module each time (no sharing)
    with pytest.raises(ValueError, match="valid names: relu, tanh"):
        make_activation("softsign")
    assert set(ACTIVATION_NAMES) >= {"relu", "tanh", "sigmoid", "elu", "leaky_relu", "swish", "selu", "linear"}


def test_mlp_layout_shapes_and_counts():
    m = MLP(20, [5], 1, "tanh")
    assert m(torch.randn(7, 20)).shape == (7, 1)
    assert n_params(m) == 20 * 5 + 5 + 5 + 1
    mix = MLP(4, [3, 3, 2], 2, ["relu", "tanh", "linear"])
    assert [type(a) for a in mix.activations] == [nn.ReLU, nn.Tanh, IdentityActivation]
    assert [type(x) for x in mix.layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.Tanh, nn.Linear, IdentityActivation,
                                             nn.Linear]
    assert mix.head is mix.layers[-1] and mix.head.out_features == 2
    assert mix.hidden_linears == [mix.layers[0], mix.layers[2], mix.layers[4]]
    with pytest.raises(ValueError, match="2 activations for 3 hidden"):
        MLP(4, [3, 3, 2], 2, ["relu", "tanh"])
    with pytest.raises(ValueError, match="unknown init"):
        MLP(4, [3], 2, init="orthogonal")


def test_mlp_pmnist_weight_count():
    # the paper's pMNIST net: 784 -> 2000 x3 -> 10 has 9,588,000 weights (biases excluded)
    m = MLP(784, [2000, 2000, 2000], 10)
    assert sum(lin.weight.numel() for lin in [*m.hidden_linears, m.head]) == 9_588_000


def test_mlp_layer_norm_variant():
    m = MLP(6, [4, 4], 3, "relu", layer_norm=True)
    assert [type(x) for x in m.layers][:3] == [nn.Linear, nn.LayerNorm, nn.ReLU]
    assert len(m.norms) == 2 and len(m.activations) == 2
    x = torch.randn(5, 6)
    pre = m.layers[1](m.layers[0](x))
    torch.testing.assert_close(pre.mean(dim=1), torch.zeros(5), atol=1e-5, rtol=0)
    assert m(x).shape == (5, 3)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "swish", "elu", "leaky_relu", "selu", "linear"])
def test_mlp_kaiming_init_bounds(act):
    torch.manual_seed(0)
    fan_in = 400
    m = MLP(fan_in, [300], 50, act)
    gain = {"relu": math.sqrt(2), "swish": math.sqrt(2), "elu": math.sqrt(2), "tanh": 5 / 3, "sigmoid": 1.0,
            "leaky_relu": math.sqrt(2 / (1 + 0.01**2)), "selu": 0.75, "linear": 1.0}[act]
    assert activation_gain(act) == pytest.approx(gain)
    b_hidden, b_out = gain * math.sqrt(3 / fan_in), math.sqrt(3 / 300)
    w = m.hidden_linears[0].weight
    assert w.abs().max() <= b_hidden
    assert w.abs().max() > 0.99 * b_hidden  # uniform fills the interval
    assert w.std().item() == pytest.approx(b_hidden / math.sqrt(3), rel=0.02)
    assert m.head.weight.abs().max() <= b_out and m.head.weight.abs().max() > 0.98 * b_out
    assert all(lin.bias.abs().sum() == 0 for lin in [*m.hidden_linears, m.head])
    assert m.init_bounds == pytest.approx([b_hidden, b_out])


def test_mlp_reset_parameters_redraws_same_distribution():
    torch.manual_seed(0)
    m = MLP(100, [80], 10, "tanh")
    before = m.hidden_linears[0].weight.clone()
    with torch.no_grad():
        m.head.bias.fill_(3.0)
    m.reset_parameters()
    w = m.hidden_linears[0].weight
    assert not torch.equal(w, before)
    assert w.abs().max() <= 5 / 3 * math.sqrt(3 / 100)
    assert m.head.bias.abs().sum() == 0


def test_convnet_shapes_and_params():
    net = ConvNet()
    assert net.flat_dim == 512
    x = torch.randn(4, 3, 32, 32)
    assert net(x).shape == (4, 2)
    assert net.flatten(net.features(x)).shape == (4, 512)
    expected = (3 * 32 * 25 + 32) + (32 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + (512 * 128 + 128) \
        + (128 * 128 + 128) + (128 * 2 + 2)
    assert n_params(net) == expected == 177_218
    assert isinstance(net.head, nn.Linear) and net.head.in_features == 128
    assert ConvNet(num_classes=10)(x).shape == (4, 10)
    assert len(net.activations) == 5 and len(set(map(id, net.activations))) == 5
    assert [c.padding for c in net.conv_layers] == [(0, 0)] * 3
    with pytest.raises(ValueError, match="32, 32"):
        net(torch.randn(2, 3, 28, 28))


def test_convnet_default_init_and_reset():
    torch.manual_seed(0)
    net = ConvNet()
    c = net.conv_layers[1]
    bound = 1 / math.sqrt(32 * 9)  # torch default: U(±1/sqrt(fan_in))
    assert c.weight.abs().max() <= bound and c.weight.abs().max() > 0.99 * bound
    old = [p.clone() for p in net.parameters()]
    net.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(old, net.parameters(), strict=True))


def test_ppo_nets_lecun_init_and_distribution():
    torch.manual_seed(0)
    actor, critic = PPOActor(111, 8), PPOCritic(111)
    for mlp in (actor.mean_net, critic.value_net):
        assert mlp.hidden == (256, 256) and all(isinstance(a, nn.ReLU) for a in mlp.activations)
        for lin in [*mlp.hidden_linears, mlp.head]:
            b = math.sqrt(3 / lin.in_features)
            assert lin.weight.abs().max() <= b and lin.weight.abs().max() > 0.95 * b
            assert lin.bias.abs().sum() == 0
    assert torch.equal(actor.log_std.detach(), torch.zeros(8)) and actor.log_std.requires_grad
    obs = torch.randn(5, 111)
    d = actor.dist(obs)
    torch.testing.assert_close(d.mean, actor(obs))
    torch.testing.assert_close(d.stddev, torch.ones(5, 8))
    assert d.log_prob(d.sample()).sum(-1).shape == (5,)
    assert critic(obs).shape == (5,)
    assert "log_std" in dict(actor.named_parameters())
    with torch.no_grad():
        actor.log_std.fill_(2.0)
    actor.reset_parameters()
    assert actor.log_std.abs().sum() == 0


def test_nets_are_fx_traceable():
    # the CBP engine discovers units by symbolic tracing; the ConvNet's input check must not break it
    import torch.fx

    for net, x in [(ConvNet(), torch.randn(2, 3, 32, 32)), (MLP(4, [3], 2, layer_norm=True), torch.randn(2, 4)),
                   (PPOActor(5, 2), torch.randn(2, 5)), (PPOCritic(5), torch.randn(2, 5))]:
        gm = torch.fx.symbolic_trace(net)
        torch.testing.assert_close(gm(x), net(x))
    with pytest.raises(ValueError, match="32, 32"):
        torch.fx.symbolic_trace(ConvNet())(torch.randn(1, 3, 16, 16))
