"""Figure helpers: binning and confidence bands against hand computations, figure structure."""

from __future__ import annotations

import numpy as np
import pytest

from lopbook import plots
from lopbook.stats import t_interval


def test_bin_mean_by_hand():
    x = np.array([[1, 3, 5, 7, 9], [0, 0, 2, 2, 4]], dtype=float)
    np.testing.assert_allclose(plots.bin_mean(x, 2), [[2, 6], [0, 2]])  # trailing partial bin dropped
    with pytest.raises(ValueError, match="larger than the series"):
        plots.bin_mean(x, 6)


def test_band_is_mean_plus_minus_student_t_standard_errors():
    runs = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    mean, lo, hi = plots.mean_and_band(runs)
    se = 2.0 / np.sqrt(3)  # sample std of (1, 3, 5) is 2
    np.testing.assert_allclose(mean, [3, 2])
    np.testing.assert_allclose(hi - mean, [4.302653 * se, 0], rtol=1e-6)  # t quantile, 2 degrees of freedom
    np.testing.assert_allclose(mean - lo, [4.302653 * se, 0], rtol=1e-6)
    m, t_lo, t_hi = t_interval(runs[:, 0])  # the figures' band is the text's interval
    assert (m, t_lo, t_hi) == pytest.approx((mean[0], lo[0], hi[0]))
    _, lo2, hi2 = plots.mean_and_band(np.array([[0.0], [2.0]]))  # two seeds: 12.71 standard errors of 1
    np.testing.assert_allclose([lo2[0], hi2[0]], [1 - 12.7062, 1 + 12.7062], rtol=1e-5)
    m1, lo1, hi1 = plots.mean_and_band(np.array([4.0, 5.0]))  # one run: no band
    np.testing.assert_allclose(lo1, hi1)


def test_curves_figure_has_a_band_and_line_per_method_and_working_buttons():
    x = np.arange(4)
    fig = plots.curves_figure(x, {"bp": np.ones((4, 4)), "cbp_1e-4": np.zeros((4, 4))}, title="t",
                              xaxis="x", yaxis="y", reference={"paper": 0.5})
    assert len(fig.data) == 5  # band + mean per method, and the reference level as a legend entry
    assert fig.data[1].line.color == plots.METHOD_COLORS["bp"]
    assert fig.data[3].line.color == plots.METHOD_COLORS["cbp"]  # prefix match keeps the method colour
    assert fig.data[4].name == "paper" and list(fig.data[4].y) == [0.5, 0.5]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["all methods", "bp", "cbp_1e-4"]
    assert buttons[2].args[0]["visible"] == [False, False, True, True, True]  # references stay visible


def test_with_few_seeds_each_run_is_drawn_and_the_buttons_follow():
    x = np.arange(4)
    bp = np.array([[1.0, 2, 3, 4], [3, 2, 1, 0]])
    fig = plots.curves_figure(x, {"bp": bp, "cbp": np.zeros((2, 4))}, title="t", xaxis="x", yaxis="y",
                              reference={"paper": 0.5})
    assert [tr.name for tr in fig.data] == ["bp 95% CI", "bp seed 0", "bp seed 1", "bp",
                                            "cbp 95% CI", "cbp seed 0", "cbp seed 1", "cbp", "paper"]
    assert list(fig.data[1].y) == [1, 2, 3, 4] and list(fig.data[2].y) == [3, 2, 1, 0]
    assert list(fig.data[3].y) == [2, 2, 2, 2]  # the mean, drawn last so it stays on top
    assert not fig.data[1].showlegend and fig.data[1].legendgroup == fig.data[3].legendgroup  # one legend toggle
    assert fig.layout.updatemenus[0].buttons[2].args[0]["visible"] == [False] * 4 + [True] * 5
    assert len(plots.band_traces(x, np.zeros((plots.SHOW_RUNS_UP_TO + 1, 4)), "bp")) == 2  # many seeds: band only
    assert len(plots.band_traces(x, np.zeros((1, 4)), "bp")) == 2  # one run is the mean line itself


def test_bands_are_clipped_to_the_quantitys_range():
    x = np.arange(3)
    acc = np.array([[99.0, 50, 1], [90, 60, 9]])  # a wide band over two seeds
    fig = plots.curves_figure(x, {"bp": acc}, title="t", xaxis="task", yaxis="accuracy (%)")
    band = np.asarray(fig.data[0].y)
    assert band.max() <= 100 and band.min() >= 0
    mean, lo, hi = plots.mean_and_band(acc)
    assert hi[0] > 100 and lo[2] < 0  # the unclipped band would leave the range
    rel = plots.curves_figure(x, {"bp": acc - 95}, title="t", xaxis="task", yaxis="accuracy − retrained (% points)")
    assert np.asarray(rel.data[0].y).min() < -95  # a difference can be negative: no clipping
    assert plots.value_bounds([np.array([0.5, 2.0])], "error") == (0.0, None)
    assert plots.value_bounds([np.array([-1.0, 2.0])], "return") == (None, None)


def test_band_has_no_markers_and_few_points_get_markers_on_the_mean_only():
    band, line = plots.band_traces(np.arange(5), np.ones((5, 5)), "bp")
    assert band.mode == "lines" and line.mode == "lines+markers"
    band, line = plots.band_traces(np.arange(50), np.ones((5, 50)), "bp")
    assert band.mode == "lines" and line.mode == "lines"


def test_one_colour_per_method_and_dashes_for_variants():
    assert len(set(plots.METHOD_COLORS.values())) == len(plots.METHOD_COLORS)
    assert len(set(plots.ACTIVATION_COLORS.values())) == len(plots.ACTIVATION_COLORS)
    assert plots.color("adam") != plots.color("cbp")
    assert plots.color("relu") != plots.color("tanh-relu-tanh")
    st = plots.styles(["bp_0.01", "bp_0.001", "cbp", "bp_0.0001"])
    assert {st[k][0] for k in ("bp_0.01", "bp_0.001", "bp_0.0001")} == {plots.METHOD_COLORS["bp"]}
    assert len({st[k][1] for k in ("bp_0.01", "bp_0.001", "bp_0.0001")}) == 3 and st["cbp"][1] == "solid"


def test_titles_wrap_to_fit_a_phone():
    title = plots.wrap_title("Test accuracy after the last epoch of each task (mean ± 95% CI over seeds)")
    assert all(len(line) <= plots.TITLE_CHARS for line in title.split("<br>"))
    assert title.replace("<br>", " ") == "Test accuracy after the last epoch of each task (mean ± 95% CI over seeds)"


def test_task_slider_restyles_bars_from_zero_without_animation_frames():
    values = {"bp": np.array([[60.0, 70, 99], [62, 72, 97]]), "cbp": np.array([[61.0, 71, 80], [63, 73, 82]])}
    fig = plots.task_slider_figure(values, title="t", yaxis="accuracy (%)")
    assert not fig.frames
    assert fig.layout.yaxis.range[0] == 0 and fig.layout.yaxis.range[1] <= 100
    steps = fig.layout.sliders[0].steps
    assert [s.method for s in steps] == ["restyle"] * 3
    last = steps[-1].args[0]
    assert last["y"][0] == [98.0, 81.0]
    assert 98.0 + last["error_y.array"][0][0] <= 100  # whiskers clipped at 100%


def test_metric_dropdown_shows_one_metric_at_a_time():
    x = np.arange(3)
    fig = plots.metric_dropdown_figure(x, {"dead": {"bp": np.ones((4, 3))}, "rank": {"bp": np.ones((4, 3)),
                                                                                   "cbp": np.ones((4, 3))}},
                                       title="m", xaxis="x")
    assert [tr.visible for tr in fig.data] == [True, True, False, False, False, False]
    rank_button = fig.layout.updatemenus[0].buttons[1]
    assert rank_button.args[0]["visible"] == [False, False, True, True, True, True]
    few = plots.metric_dropdown_figure(x, {"dead": {"bp": np.ones((2, 3))}, "rank": {"bp": np.ones((2, 3))}},
                                       title="m", xaxis="x")  # 2 seeds: band, 2 runs, mean per metric
    assert few.layout.updatemenus[0].buttons[1].args[0]["visible"] == [False] * 4 + [True] * 4


@pytest.mark.parametrize("frictions, title, lines", [
    ([1.0, 1.0, 1.0, 1.0], "Episode return (friction fixed at 1.00)", [0]),
    ([0.5, 0.5, 1.7, 1.7], "Episode return while the friction changes", [0, 200]),
])
def test_ant_returns_figure_marks_friction_changes_or_says_it_is_fixed(frictions, title, lines):
    result = {"methods": np.array(["bp", "cbp"]), "bin_end": np.array([200, 400]),
              "returns_binned": np.ones((2, 2, 2)), "iter_step": np.array([100, 200, 300, 400]),
              "friction": np.tile(np.array(frictions), (2, 2, 1))}
    fig = plots.slippery_ant_returns_figure(result)
    assert title in fig.layout.title.text
    assert sorted(s.x0 for s in fig.layout.shapes) == lines


def test_ant_metrics_of_a_long_run_are_block_means_at_most_250_points():
    from lopbook.results import Result

    n_it, seeds = 1001, 2
    steps = 2048 * np.arange(1, n_it + 1)
    dormant = np.broadcast_to(np.arange(n_it, dtype=float)[None, None, :, None] / n_it, (2, seeds, n_it, 2))
    result = Result({"methods": np.array(["bp", "cbp"]), "iter_step": steps, "dormant": dormant,
                     "stable_rank": np.ones((2, seeds, n_it)), "weight_mag": np.ones((2, seeds, n_it, 3)),
                     "replaced": np.zeros((2, seeds, n_it))}, {"config": {"hidden": [256, 256]}})
    fig = plots.slippery_ant_metrics_figure(result)
    block = 5  # ceil(1001 / 250)
    assert f"mean of {block} PPO iterations" in fig.layout.title.text.replace("<br>", " ")
    mean_line = next(tr for tr in fig.data if tr.name == plots.SLIPPERY_ANT_LABELS["bp"])
    assert len(mean_line.x) == 200 and mean_line.x[0] == steps[block - 1] and mean_line.x[-1] == steps[999]
    np.testing.assert_allclose(mean_line.y[:2], [100 * np.mean(np.arange(0, 5)) / n_it,
                                                 100 * np.mean(np.arange(5, 10)) / n_it])
    short = Result({k: (v[..., :40, :] if v.ndim == 4 else v[..., :40]) if k != "methods" else v
                    for k, v in result.arrays.items()}, result.meta)
    short_fig = plots.slippery_ant_metrics_figure(short)
    assert len(next(tr for tr in short_fig.data if tr.name == plots.SLIPPERY_ANT_LABELS["bp"]).x) == 40
