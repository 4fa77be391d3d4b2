"""Figure helpers: binning and confidence bands against hand computations, figure structure."""

from __future__ import annotations

import numpy as np
import pytest

from lopbook import plots


def test_bin_mean_by_hand():
    x = np.array([[1, 3, 5, 7, 9], [0, 0, 2, 2, 4]], dtype=float)
    np.testing.assert_allclose(plots.bin_mean(x, 2), [[2, 6], [0, 2]])  # trailing partial bin dropped
    with pytest.raises(ValueError, match="larger than the series"):
        plots.bin_mean(x, 6)


def test_band_is_mean_plus_minus_1_96_standard_errors():
    runs = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    mean, lo, hi = plots.mean_and_band(runs)
    se = 2.0 / np.sqrt(3)  # sample std of (1, 3, 5) is 2
    np.testing.assert_allclose(mean, [3, 2])
    np.testing.assert_allclose(hi - mean, [1.96 * se, 0])
    np.testing.assert_allclose(mean - lo, [1.96 * se, 0])
    m1, lo1, hi1 = plots.mean_and_band(np.array([4.0, 5.0]))  # one run: no band
    np.testing.assert_allclose(lo1, hi1)


def test_curves_figure_has_a_band_and_line_per_method_and_working_buttons():
    x = np.arange(4)
    fig = plots.curves_figure(x, {"bp": np.ones((2, 4)), "cbp_1e-4": np.zeros((2, 4))}, title="t",
                              xaxis="x", yaxis="y", reference={"paper": 0.5})
    assert len(fig.data) == 4
    assert fig.data[1].line.color == plots.METHOD_COLORS["bp"]
    assert fig.data[3].line.color == plots.METHOD_COLORS["cbp"]  # prefix match keeps the method colour
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["all", "bp", "cbp_1e-4"]
    assert buttons[2].args[0]["visible"] == [False, False, True, True]


def test_metric_dropdown_shows_one_metric_at_a_time():
    x = np.arange(3)
    fig = plots.metric_dropdown_figure(x, {"dead": {"bp": np.ones((2, 3))}, "rank": {"bp": np.ones((2, 3)),
                                                                                   "cbp": np.ones((2, 3))}},
                                       title="m", xaxis="x")
    assert [tr.visible for tr in fig.data] == [True, True, False, False, False, False]
    rank_button = fig.layout.updatemenus[0].buttons[1]
    assert rank_button.args[0]["visible"] == [False, False, True, True, True, True]
