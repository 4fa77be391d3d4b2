"""The paper's CIFAR ResNet-18, and continual backprop on it."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from lopbook.algos.cbp import ContinualBackprop
from lopbook.nets.resnet import BasicBlock, ResNet18

torch.set_num_threads(1)


def test_architecture_matches_paper_variant() -> None:
    torch.manual_seed(0)
    net = ResNet18(num_classes=100)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3 and all(c.bias is not None for c in convs)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert [b.conv1.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [b.downsample is not None for b in blocks] == [False, False, True, False, True, False, True, False]
    # init: zero biases, identity BN, kaiming-normal fan_in (std sqrt(2/fan_in) convs, sqrt(1/512) head)
    assert all((c.bias == 0).all() for c in convs) and (net.fc.bias == 0).all()
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    w = net.layer3[0].conv2.weight
    assert abs(w.std().item() / math.sqrt(2 / (256 * 9)) - 1) < 0.02
    assert abs(net.fc.weight.std().item() * math.sqrt(512) - 1) < 0.05
    assert 11_150_000 < sum(p.numel() for p in net.parameters()) < 11_250_000  # ~11.2M, the usual CIFAR ResNet-18


def test_cbp_groups_are_block_internal_units() -> None:
    cbp = ContinualBackprop(ResNet18(10, widths=(4, 8, 8, 16)), None)
    assert [g.name for g in cbp.groups] == [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
    assert all(g.out_layer.kernel_size == (3, 3) and isinstance(g.norm, nn.BatchNorm2d) for g in cbp.groups)
    # stem, block outputs and downsample convs feed residual sums: not replaceable
    assert "consumers" in cbp.skipped["conv1"] and "residual" in cbp.skipped["layer2.0.downsample.0"]
    assert "residual" in cbp.skipped["layer4.1.conv2"] and cbp.skipped["fc"] == "output layer"


def test_output_unchanged_after_replacement_in_eval_mode() -> None:
    torch.manual_seed(0)
    net = ResNet18(10, widths=(8, 16, 16, 32))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    cbp = ContinualBackprop(net, opt, replacement_rate=0.1, maturity_threshold=1, decay_rate=0.99,
                            init="kaiming_normal")
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    x_eval = torch.randn(3, 3, 16, 16)
    checked = 0
    for _ in range(4):
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref = copy.deepcopy(net).eval()
        if cbp.step() == 0:
            continue
        mods = dict(ref.named_modules())
        with torch.no_grad():  # the reference: the old network with the replaced units' outgoing weights cut
            for g, idx in zip(cbp.groups, cbp.last_replaced, strict=True):
                if idx is not None:
                    mods[g.extra["out_name"]].weight[:, idx] = 0.0
            expected = ref(x_eval)
            got = net.eval()(x_eval)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        for g, idx in zip(cbp.groups, cbp.last_replaced, strict=True):
            if idx is not None:  # BN channel back to identity
                assert (g.norm.weight[idx] == 1).all() and (g.norm.running_var[idx] == 1).all()
                assert (opt.state[g.in_layer.weight]["momentum_buffer"][idx] == 0).all()
        checked += 1
    assert checked >= 2


def test_small_resnet_learns_a_batch() -> None:
    torch.manual_seed(0)
    net = ResNet18(5, widths=(8, 8, 16, 16))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(10, 3, 8, 8), torch.arange(10) % 5
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
