"""lopbook.stats: the one Student-t interval and sliding-window mean the chapters' summaries use."""

import numpy as np
import pytest

from lopbook.stats import sliding_means, t_interval


def test_t_interval_by_hand() -> None:
    m, lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert m == 2.0
    np.testing.assert_allclose([lo, hi], [2 - 4.302653 / np.sqrt(3), 2 + 4.302653 / np.sqrt(3)], rtol=1e-6)


def test_t_interval_one_value_has_no_interval_and_none_is_an_error() -> None:
    m, lo, hi = t_interval([0.3])
    assert m == 0.3 and np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ValueError, match="at least one value"):
        t_interval([])


def test_sliding_means_along_the_last_axis() -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_allclose(sliding_means(x, 2), [[1.5, 2.5, 3.5], [0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="window"):
        sliding_means(x, 5)
