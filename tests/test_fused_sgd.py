"""The fused SGD update + magnitude sums: same weights as torch's SGD, exact sums, and CBP unchanged by it."""

from __future__ import annotations

import copy
import os
import signal
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lopbook.algos import fused_sgd
from lopbook.algos.cbp import ContinualBackprop

pytestmark = pytest.mark.skipif(not fused_sgd.AVAILABLE, reason="numba is not installed")

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 300), nn.ReLU(), nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 3))


def batch1_stream(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 20, generator=g), torch.randint(0, 3, (1,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_is_torch_sgd_and_exact_sums(threads: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(301, 77, generator=g, dtype=dtype)
    grad = torch.randn(301, 77, generator=g, dtype=dtype) * 3
    expected = w0.clone().add_(grad, alpha=-0.03)  # what torch.optim.SGD does
    w = w0.clone()
    rows, cols = torch.empty(301, dtype=dtype), torch.empty(77, dtype=dtype)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # 2 threads: two row blocks, each with its own column partial sums
    try:
        version = w._version
        fused_sgd.sgd_step_abs_sums(w, grad, 0.03, rows, cols)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(w, expected)  # one FMA per entry, like Tensor.add_
    assert w._version > version  # autograd sees the in-place write
    assert torch.allclose(rows, expected.abs().sum(1)) and torch.allclose(cols, expected.abs().sum(0))
    w, rows2 = w0.clone(), torch.empty(301, dtype=dtype)
    fused_sgd.sgd_step_abs_sums(w, grad, 0.03, rows2, None)  # row sums only (a first layer's inputs are no units)
    assert torch.equal(w, expected) and torch.equal(rows2, rows)


def test_no_worker_keeps_a_core_busy_between_calls() -> None:
    w, g = torch.randn(512, 64), torch.randn(512, 64)
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # the thread-pool path
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(40):  # calls with other work (here: sleep) in between, as in training
            fused_sgd.sgd_step_abs_sums(w, g, 0.0, torch.empty(512), torch.empty(64))
            time.sleep(0.005)
        busy = (time.process_time() - c0) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    assert busy < 0.5  # idle workers sleep; numba's parallel layer kept one spinning (busy ≈ 1)


def test_only_plain_sgd_on_cpu_matrices_is_fused() -> None:
    m = mlp()
    cases = {"sgd": torch.optim.SGD(m.parameters(), lr=0.1),
             "momentum": torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
             "weight_decay": torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=1e-4),
             "adam": torch.optim.Adam(m.parameters())}
    fused = {}
    for name, opt in cases.items():
        cbp = ContinualBackprop(m, opt, utility="adaptable_contribution")
        fused[name] = len(cbp.fused_layers)
        cbp.remove()
    assert fused == {"sgd": 3, "momentum": 0, "weight_decay": 0, "adam": 0}
    for kwargs in ({"fuse_sgd": False}, {"out_refresh": 2}):  # opted out, or sums kept in slices
        cbp = ContinualBackprop(m, torch.optim.SGD(m.parameters(), lr=0.1), **kwargs)
        assert cbp.fused_layers == []
        cbp.remove()


def _train(fuse: bool, steps: int = 250) -> tuple[nn.Module, ContinualBackprop, list]:
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.01, maturity_threshold=5, decay_rate=0.9,
                            utility="adaptable_contribution", fuse_sgd=fuse)
    torch.manual_seed(2)  # the replacements' fresh weights: the same draws in both runs
    replaced = []
    for x, y in batch1_stream(steps):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        grads = [p.grad.clone() for p in m.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), grads, strict=True))  # grads kept
        cbp.step()
        replaced.append([None if r is None else r.tolist() for r in cbp.last_replaced])
    return m, cbp, replaced


def test_cbp_with_fused_sgd_matches_the_unfused_run() -> None:
    (m1, c1, r1), (m2, c2, r2) = _train(True), _train(False)
    assert len(c1.fused_layers) == 3 and c2.fused_layers == []
    assert c1._fused.updates == 3 * 250  # every step's weight updates went through the kernel
    assert sum(c1.n_replaced) > 20 and r1 == r2  # the same units replaced at the same steps
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    for u1, u2 in zip(c1.utilities(), c2.utilities(), strict=True):
        assert torch.allclose(u1, u2, rtol=1e-4, atol=1e-9)  # the sums differ only in summation order
    # the sums a step's utilities use are those of the weights after its update (a replacement's zeroed columns
    # leave the next layer's row sums stale only until then)
    x, y = batch1_stream(1, seed=3)[0]
    F.cross_entropy(m1(x), y).backward()
    c1.optimizer.step()
    for i, g in enumerate(c1.groups):
        assert torch.allclose(c1.out_magnitude(i), g.out_layer.weight.detach().abs().sum(0), rtol=1e-5)
        assert torch.allclose(c1.in_magnitude(i), g.in_layer.weight.detach().abs().mean(1), rtol=1e-5)


def test_weights_changed_after_the_step_are_reread() -> None:
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.0, utility="adaptable_contribution")
    (x, y), = batch1_stream(1)
    F.cross_entropy(m(x), y).backward()
    opt.step()
    with torch.no_grad():
        m[2].weight.add_(torch.sign(m[2].weight))  # every |w| of the middle layer grows by exactly 1
    cbp.step()
    w = m[2].weight.detach()
    assert torch.allclose(cbp.out_magnitude(0), w.abs().sum(0), rtol=1e-5)
    assert torch.allclose(cbp.in_magnitude(1), w.abs().mean(1), rtol=1e-5)


def test_closure_and_removed_hooks_leave_the_update_to_the_optimizer() -> None:
    m = mlp()
    ref = copy.deepcopy(m)
    opt, ref_opt = torch.optim.SGD(m.parameters(), lr=0.05), torch.optim.SGD(ref.parameters(), lr=0.05)
    cbp = ContinualBackprop(m, opt, replacement_rate=0.0)
    (x, y), = batch1_stream(1)

    def closure(model: nn.Module, optimizer: torch.optim.Optimizer):
        def f() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        return f

    opt.step(closure(m, opt))  # gradients computed inside step(): applied once, by SGD
    ref_opt.step(closure(ref, ref_opt))
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), ref.parameters(), strict=True))
    cbp.step()
    cbp.remove()
    version = m[0].weight._version
    closure(m, opt)()
    opt.step()
    assert m[0].weight.grad is not None and m[0].weight._version == version + 1  # torch's own add_


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_thread_pool_works_in_a_forked_child() -> None:
    w, g = torch.randn(512, 64), torch.randn(512, 64)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fused_sgd.sgd_step_abs_sums(w, g, 0.1, torch.empty(512), torch.empty(64))  # the parent's pool exists
        pid = os.fork()
        if pid == 0:  # a forked child (e.g. a DataLoader worker) inherits the pool object but not its threads
            signal.alarm(30)  # a hang kills the child, which the parent sees as a failure
            fused_sgd.sgd_step_abs_sums(w, g, 0.1, torch.empty(512), torch.empty(64))
            os._exit(0)
        _, status = os.waitpid(pid, 0)
    finally:
        torch.set_num_threads(old)
    assert os.waitstatus_to_exitcode(status) == 0
