"""The CPU analog of continual ImageNet: digit-group tasks, the narrow ConvNet and CBP's rescaled ρ."""

import numpy as np
import pytest
import torch

from lopbook.data.digit_groups import TRAIN_POOL, DigitGroupTasks
from lopbook.problems.continual_imagenet import PAPER_RHO, SmallConvNet, cbp_rate


@pytest.fixture(scope="module")
def tasks():
    return DigitGroupTasks(group_size=5, train_per_class=50, test_per_class=50, size=16)


def test_groups_are_disjoint_deterministic_and_change_between_tasks(tasks):
    seen = set()
    for t in range(20):
        a, b = tasks.groups(3, t)
        assert len(a) == len(b) == 5 and not set(a) & set(b)
        assert tasks.groups(3, t) == (a, b)
        seen.add((a, b))
    assert len(seen) >= 15  # 252 labelled splits: 20 draws almost never collide
    assert tasks.groups(3, 0) != tasks.groups(4, 0) or tasks.groups(3, 1) != tasks.groups(4, 1)


def test_task_images_come_from_the_right_digits_and_pools(tasks):
    x, y, xt, yt = tasks.task(0, 5)
    assert x.shape == (100, 1, 16, 16) and xt.shape == (100, 1, 16, 16)
    assert (y == 0).sum() == 50 and (yt == 1).sum() == 50
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    tr, ytr, te, yte = tasks.indices(0, 5)
    assert torch.equal(x, tasks._x[tr]) and np.array_equal(y.numpy(), ytr)
    a, b = tasks.groups(0, 5)
    for rows, labels, lo, hi in ((tr, ytr, 0, TRAIN_POOL), (te, yte, TRAIN_POOL, 500)):
        digits = tasks.digit_of(rows)
        assert all(d in (a, b)[lab] for d, lab in zip(digits, labels, strict=True))
        pos = [int(np.flatnonzero(tasks._by_digit[d] == r)[0]) for d, r in zip(digits, rows, strict=True)]
        assert lo <= min(pos) and max(pos) < hi  # training rows from the training pool, test rows from the test pool
    assert len(set(tr.tolist())) == len(tr)  # drawn without replacement
    assert not np.array_equal(tasks.indices(0, 6)[0], tr)  # a fresh draw every task


def test_a_task_is_the_same_every_time_and_a_permutation_only_moves_pixels():
    plain = DigitGroupTasks(train_per_class=10, test_per_class=10, size=16)
    perm = DigitGroupTasks(train_per_class=10, test_per_class=10, size=16, permute=True)
    x1, y1, _, _ = plain.task(1, 2)
    x2, y2, _, _ = plain.task(1, 2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    xp, yp, _, _ = perm.task(1, 2)
    assert torch.equal(y1, yp) and not torch.equal(x1, xp)
    assert torch.equal(x1.flatten(1).sort(1).values, xp.flatten(1).sort(1).values)


def test_bad_settings_fail_with_the_fix():
    with pytest.raises(ValueError, match="multiples of group_size"):
        DigitGroupTasks(group_size=5, train_per_class=12)
    with pytest.raises(ValueError, match="group_size"):
        DigitGroupTasks(group_size=6)


def test_cbp_rate_keeps_the_papers_turnover_per_task():
    assert cbp_rate(3000) == pytest.approx(PAPER_RHO)
    assert cbp_rate(200) * 200 == pytest.approx(3e-4 * 250 * 12)  # 0.9 of each layer's eligible units per task
    with pytest.raises(ValueError):
        cbp_rate(0)


def test_small_convnet_has_the_papers_shape_and_five_cbp_layers():
    from lopbook.algos.units import find_unit_groups

    net = SmallConvNet(size=16)
    assert net(torch.zeros(4, 1, 16, 16)).shape == (4, 2)
    groups, skipped = find_unit_groups(net)
    assert [g.name for g in groups] == ["features.0", "features.3", "features.6", "fc.0", "fc.2"]
    assert "head" in skipped


def test_window_means_by_hand():
    from lopbook.problems.continual_imagenet import window_means

    acc = np.array([[0.0, 1.0, 3.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0]])
    best, last = window_means(acc, frac=0.2)  # windows of 2 tasks
    assert best[0] == pytest.approx(2.5) and last[0] == pytest.approx(1.5)
    best, last = window_means(acc, frac=1.0)
    assert best[0] == last[0] == pytest.approx(1.2)


def test_paired_ci_matches_the_t_interval():
    from lopbook.problems.continual_imagenet import paired_ci

    mean, lo, hi = paired_ci(np.array([1.0, 2.0, 3.0]))
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, 2 dof) x sd / sqrt(n)
    assert mean == pytest.approx(2.0) and lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    with pytest.raises(ValueError, match="2 seeds"):
        paired_ci(np.array([1.0]))
