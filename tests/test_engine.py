"""The continual-learning engine: learning, schedules, method protocol, checkpoint/resume, probes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lopbook.engine import Engine, EngineConfig, Task, TaskHooks, default_probe, run_tasks


def _blobs(n=400, d=10, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    y = torch.arange(n) % k
    x = centers[y] + torch.randn(n, d, generator=g)
    return x, y


def _mlp(d=10, k=3, width=32, seed=0):
    torch.manual_seed(seed)
    from lopbook.nets import MLP

    return MLP(d, [width, width], k)


def test_online_accuracy_rises_and_loss_falls_on_an_easy_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g)).argmax(1)  # a linear teacher: learnable, chance level at init
    model = _mlp()
    eng = Engine(model, torch.optim.SGD(model.parameters(), lr=0.05),
                 config=EngineConfig(batch_size=4, epochs=3, bins_per_task=50), seed=0)
    log = eng.train_task(Task(x, y, x_test=x[:100], y_test=y[:100]))
    acc, loss = log["online_acc_bins"], log["online_loss_bins"]
    assert acc.shape == (50,) and log["steps"] == 300
    assert acc[:3].mean() < 0.6 and acc[-5:].mean() > 0.85  # a curve that must go up (chance is 1/3)
    assert loss[-5:].mean() < 0.5 * loss[:3].mean()
    assert log["epoch_acc"].shape == (3,) and log["epoch_acc"][-1] > log["epoch_acc"][0]
    assert log["test_acc"] > 0.85


def test_schedule_counts_and_per_epoch_eval():
    x, y = _blobs(n=100)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = []

    class Hooks(TaskHooks):
        def on_task_start(self, engine, t, task):
            calls.append(("start", t))

        def on_epoch_end(self, engine, t, task, epoch):
            calls.append(("epoch", epoch))

        def on_task_end(self, engine, t, task, log):
            log["extra"] = 7.0
            calls.append(("end", t))

    eng = Engine(model, opt, config=EngineConfig(batch_size=16, epochs=2, eval_every_epoch=True), seed=1)
    log = eng.train_task(Task(x, y, x[:10], y[:10]), 5, Hooks())
    assert log["steps"] == 14  # ceil(100/16) = 7 per pass
    assert log["epoch_test_acc"].shape == (2,) and log["extra"] == 7.0
    assert calls == [("start", 5), ("epoch", 0), ("epoch", 1), ("end", 5)]
    eng2 = Engine(model, opt, config=EngineConfig(batch_size=16, drop_last=True), seed=1)
    assert eng2.train_task(Task(x, y))["steps"] == 6
    eng3 = Engine(model, opt, config=EngineConfig(batch_size=16, examples_per_task=250), seed=1)
    assert eng3.train_task(Task(x, y))["steps"] == 7 + 7 + 4  # passes of 100, 100, 50 examples


class _Spy:
    """A plasticity method that records the optimizer's step count each time it is stepped."""

    def __init__(self, opt):
        self.opt = opt
        self.seen: list[int] = []

    def step(self):
        p = self.opt.param_groups[0]["params"][0]
        self.seen.append(int(self.opt.state[p]["step"]))


def test_methods_step_right_after_each_optimizer_step():
    x, y = _blobs(n=64)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    spy = _Spy(opt)
    eng = Engine(model, opt, methods=[spy], config=EngineConfig(batch_size=8, epochs=2), seed=0)
    eng.train_task(Task(x, y))
    assert spy.seen == list(range(1, 17))  # called once per update, after the optimizer counted it
    with pytest.raises(TypeError, match="step"):
        Engine(model, opt, methods=[object()])


def test_engine_with_build_method_specs_changes_training():
    from lopbook.algos import build_method

    x, y = _blobs(n=64)
    out = {}
    for spec in ({"name": "bp"}, {"name": "snp", "noise_std": 1e-2}):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        methods = build_method(spec, model, opt)
        eng = Engine(model, opt, methods=methods, config=EngineConfig(batch_size=8), seed=0)
        eng.train_task(Task(x, y))
        out[spec["name"]] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(out["bp"], out["snp"])


def _cbp_run(n_tasks, resume=None, stop_after=None):
    from lopbook.algos import build_method

    x, y = _blobs(n=96, seed=2)
    model = _mlp(width=16, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    methods = build_method({"name": "cbp", "replacement_rate": 0.05, "maturity_threshold": 5}, model, opt)
    eng = Engine(model, opt, methods=methods, config=EngineConfig(batch_size=8, probe_size=50), seed=7,
                 probe=default_probe)

    def stream(t):
        g = torch.Generator().manual_seed(100 + t)
        perm = torch.randperm(10, generator=g)
        return Task(x, y, transform=lambda b, perm=perm: b[:, perm].float(), name=str(t))

    saved = []

    def on_done(state):
        saved.append(state)
        if stop_after is not None and state["next_task"] == stop_after:
            raise KeyboardInterrupt  # simulate a crash right after the checkpoint

    try:
        logs = run_tasks(eng, stream, n_tasks, resume=resume, on_task_done=on_done)
    except KeyboardInterrupt:
        return None, saved[-1], model
    return logs, saved[-1], model


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    from lopbook.checkpoint import Checkpoint

    full, _, model_a = _cbp_run(4)
    _, state, _ = _cbp_run(4, stop_after=2)
    ck = Checkpoint(tmp_path / "c.pt", key="k")
    ck.save(state, force=True)
    torch.manual_seed(12345)  # scramble the global RNG: the checkpoint must restore it
    np.random.seed(99)
    resumed, _, model_b = _cbp_run(4, resume=ck.load())
    assert set(full) == set(resumed)
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert full["online_acc"].shape == (4,) and (full["probe/dead_frac"] >= 0).all()


def test_default_probe_counts_dead_units_and_weight_magnitude():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
        model[0].bias.copy_(torch.tensor([-100.0, -100.0, 0, 0, 0, 0]))  # two units never fire on x >= 0
        model[2].weight.fill_(-0.25)
    x = torch.rand(50, 4)
    out = default_probe(model, x)
    assert out["dead_frac"] == pytest.approx(2 / 6)
    assert out["weight_mag"] == pytest.approx((24 * 0.5 + 12 * 0.25) / 36)
    # the four live units are identical, so the feature matrix has rank 1: effective rank 1 of 6 units
    assert out["erank_frac"] == pytest.approx(1 / 6, rel=1e-6)


def test_bad_inputs_give_clear_errors():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="CUDA"):
        Engine(model, opt, config=EngineConfig(amp="bf16"), device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        Engine(model, opt, config=EngineConfig(batch_size=0))
    with pytest.raises(ValueError, match="rows"):
        Task(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="both"):
        Task(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), x_test=torch.zeros(1, 2))


# Three tasks of 200 batch-1 steps on a 784-1000x3-10 MLP (11 MB of gradients a step), in a fresh process; prints
# how far the resident memory after a task rose above the memory in use before training, in MB (at most).
_MEMORY_SCRIPT = """
import torch
from lopbook.engine import Engine, EngineConfig, Task
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(784, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 1000), torch.nn.ReLU(),
                          torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))
eng = Engine(net, torch.optim.SGD(net.parameters(), lr=0.003), config=EngineConfig(batch_size=1, epochs=1))
g = torch.Generator().manual_seed(0)
task = Task(torch.randint(0, 255, (200, 784), dtype=torch.uint8, generator=g), torch.randint(0, 10, (200,), generator=g))
eng.train_task(Task(task.x_train[:5], task.y_train[:5]), 0)  # first-call allocations
before = rss_mb()
after = []
for t in range(1, 4):
    eng.train_task(task, t)
    after.append(rss_mb())
print(round(max(after) - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_batch_1_training_on_the_cpu_does_not_grow_the_process():
    # With each step's loss and correct count kept as 0-d tensors until the task ended, those small tensors sat
    # between the steps' large gradient buffers and fragmented malloc's heap: the process grew by 330-380 MB here
    # (2-7 GB at the paper's width). Read on the host at once, it stays within ~10 MB.
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert int(out.stdout) < 100, f"resident memory rose by {out.stdout.strip()} MB over 600 batch-1 steps"


def test_per_step_logs_are_the_same_read_on_the_host_or_stacked_from_tensors():
    from lopbook.engine import _to_host

    losses = torch.rand(50, generator=torch.Generator().manual_seed(0)) * 3
    counts = torch.randint(0, 2, (50,), generator=torch.Generator().manual_seed(1))
    assert np.array_equal(_to_host([v for v in losses]), _to_host([v.item() for v in losses]))
    assert np.array_equal(_to_host([v for v in counts]), _to_host([v.item() for v in counts]))
