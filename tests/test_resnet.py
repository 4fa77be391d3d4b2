"""The paper's CIFAR ResNet-18, and continual backprop on it."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from lopbook.algos.cbp import ContinualBackprop
from lopbook.algos.units import find_unit_groups, reinit_units
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


HIDDEN = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)]


def test_cbp_covers_the_17_hidden_layers() -> None:
    cbp = ContinualBackprop(ResNet18(10, widths=(4, 8, 8, 16)), None)
    assert [g.name for g in cbp.groups] == HIDDEN
    groups = {g.name: g for g in cbp.groups}
    # block-internal units: plain groups (zero conv2's input channels)
    for s in range(1, 5):
        for b in range(2):
            g = groups[f"layer{s}.{b}.conv1"]
            assert not g.residual and g.extra["out_name"] == f"layer{s}.{b}.conv2"
    # stem and block ends feed the residual stream: silenced at their BN, consumers = what reads the stream next
    assert all(groups[n].residual and isinstance(groups[n].norm, nn.BatchNorm2d) for n in HIDDEN if n.endswith("2"))
    assert groups["conv1"].residual and groups["conv1"].extra["consumer_names"] == ["layer1.0.conv1"]
    # the stem's ReLU comes after its BN: silencing there would leave the unit without gradient (ReLU'(0) = 0)
    assert not groups["conv1"].silence_at_norm
    assert all(groups[n].silence_at_norm for n in HIDDEN if n.endswith("2"))
    assert groups["layer1.0.conv2"].extra["consumer_names"] == ["layer1.1.conv1"]
    assert sorted(groups["layer1.1.conv2"].extra["consumer_names"]) == ["layer2.0.conv1", "layer2.0.downsample.0"]
    assert groups["layer4.1.conv2"].extra["consumer_names"] == ["fc"]
    assert set(cbp.skipped) == {"layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0", "fc"}


def _ablate(net: nn.Module, cbp: ContinualBackprop, replaced: list) -> nn.Module:
    """The pre-replacement network without the replaced units: plain units' outgoing channels 0, residual
    units' BN scale and shift 0."""
    ref = copy.deepcopy(net)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for g, idx in zip(cbp.groups, replaced, strict=True):
            if idx is None:
                continue
            if g.residual:
                mods[g.name.replace("conv", "bn")].weight[idx] = 0.0
                mods[g.name.replace("conv", "bn")].bias[idx] = 0.0
            else:
                mods[g.extra["out_name"]].weight[:, idx] = 0.0
    return ref


def test_replacement_removes_exactly_the_replaced_units_in_every_layer() -> None:
    """After a replacement the net computes what it did without the replaced units, in eval *and* train mode,
    for the block-internal and the residual (block-end) units alike; the residual units' consumers are
    untouched, and a silenced unit learns again (its BN scale gets a gradient)."""
    torch.manual_seed(0)
    net = ResNet18(10, widths=(8, 16, 16, 32))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    groups = [g for g in find_unit_groups(net)[0] if g.name != "conv1"]  # the stem: see the next test
    cbp = ContinualBackprop(net, opt, replacement_rate=0.1, maturity_threshold=1, decay_rate=0.99,
                            init="kaiming_normal", groups=groups)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    x_eval = torch.randn(3, 3, 16, 16)
    hit: set[str] = set()
    for _ in range(4):
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = copy.deepcopy(net)
        consumers_before = {n: m.weight.detach().clone() for n, m in net.named_modules()
                            if isinstance(m, (nn.Conv2d, nn.Linear))}
        if cbp.step() == 0:
            continue
        ref = _ablate(before, cbp, cbp.last_replaced)
        with torch.no_grad():
            for mode in ("eval", "train"):  # train: batch statistics; on copies, so running stats stay put
                a, b = copy.deepcopy(net), copy.deepcopy(ref)
                a.train(mode == "train")
                b.train(mode == "train")
                assert torch.allclose(a(x_eval), b(x_eval), atol=1e-5, rtol=1e-5), mode
        mods = dict(net.named_modules())
        for g, idx in zip(cbp.groups, cbp.last_replaced, strict=True):
            if idx is None:
                continue
            hit.add("residual" if g.residual else "plain")
            assert (g.in_layer.bias[idx] == 0).all() and (g.norm.running_var[idx] == 1).all()
            assert (opt.state[g.in_layer.weight]["momentum_buffer"][idx] == 0).all()
            if g.residual:  # silenced at the BN; the weights that read the stream keep their values
                assert (g.norm.weight[idx] == 0).all() and (g.norm.bias[idx] == 0).all()
                for name in g.extra["consumer_names"]:
                    if not any(o.name == name and last is not None  # (unless redrawn as rows themselves)
                               for o, last in zip(cbp.groups, cbp.last_replaced, strict=True)):
                        assert torch.equal(mods[name].weight, consumers_before[name])
            else:
                assert (g.norm.weight[idx] == 1).all() and (g.out_layer.weight[:, idx] == 0).all()
        revived = [(g, idx) for g, idx in zip(cbp.groups, cbp.last_replaced, strict=True)
                   if idx is not None and g.residual]
    assert hit == {"plain", "residual"}
    net.train()
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    assert any(g.norm.weight.grad[idx].abs().max() > 0 for g, idx in revived)


def test_stem_units_are_replaced_as_the_authors_do_and_stay_trainable() -> None:
    """A stem unit (conv -> BN -> ReLU -> block 1 and its shortcut) silenced at its BN would be dead for good:
    ReLU'(0) = 0 leaves its BN scale without gradient. So it is replaced as in the authors' ResGnT: BN to
    identity, next conv's input channel 0; the new channel still reaches block 1 through the shortcut, the one
    place where a replacement changes the function."""
    torch.manual_seed(1)
    net = ResNet18(10, widths=(8, 16, 16, 32))
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    stem = find_unit_groups(net)[0][0]
    idx = torch.tensor([3])
    ablated = copy.deepcopy(net)
    with torch.no_grad():
        ablated.bn1.weight[idx], ablated.bn1.bias[idx] = 0.0, 0.0  # silenced at the BN ...
    F.cross_entropy(ablated(x), y).backward()
    assert ablated.bn1.weight.grad[idx].abs().max() == 0 and ablated.bn1.bias.grad[idx].abs().max() == 0
    assert ablated.conv1.weight.grad[idx].abs().max() == 0  # ... it would never learn again
    before = copy.deepcopy(net).eval()
    reinit_units(stem, idx, "kaiming_normal")
    assert (net.bn1.weight[idx] == 1).all() and (net.bn1.bias[idx] == 0).all()
    assert (net.layer1[0].conv1.weight[:, idx] == 0).all()
    with torch.no_grad():
        assert (net.eval()(x) - before(x)).abs().max() > 1e-3  # the shortcut carries the new channel
    net.train()
    F.cross_entropy(net(x), y).backward()
    assert net.conv1.weight.grad[idx].abs().max() > 0 and net.layer1[0].conv1.weight.grad[:, idx].abs().max() > 0


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
