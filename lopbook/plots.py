"""Figures for the book: plotly figures that work in static HTML, Jupyter and Colab.

Shared helpers live at the top (:func:`show`, :func:`mean_and_band`, :func:`band_traces`);
chapter-specific figure builders follow, one section per chapter.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from .stats import t_quantile

# One colour per method everywhere, so a method looks the same on every page (BP always red, CBP always blue).
METHOD_COLORS: dict[str, str] = {
    "bp": "#d62728", "cbp": "#1f77b4", "l2": "#2ca02c", "snp": "#9467bd", "redo": "#ff7f0e",
    "adam": "#8c564b", "ns": "#e377c2", "l2init": "#17becf", "layernorm": "#bcbd22", "head_reset": "#b8860b",
    "retrain": "#7f7f7f", "linear": "#000000",
}
# Activation functions (panels that compare activations under one method) get their own palette.
ACTIVATION_COLORS: dict[str, str] = {
    "relu": "#d62728", "tanh": "#ff7f0e", "sigmoid": "#8c564b", "elu": "#e377c2", "leaky_relu": "#bcbd22",
    "swish": "#17becf", "relu-tanh-relu": "#6a3d9a", "tanh-relu-tanh": "#1b9e77", "linear": "#000000",
}
# Line styles that tell apart several configurations of one method (e.g. BP at three step sizes).
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
# Dropdowns sit right-aligned just above the plot area, below the title.
MENU_POSITION = {"x": 1.0, "xanchor": "right", "y": 1.02, "yanchor": "bottom"}
_FALLBACK = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d"]
TITLE_CHARS = 44  # a title line that fits a 390 px phone screen at the book's title size


def color(name: str, i: int = 0) -> str:
    """The book's colour for a method or activation name (prefix match: ``cbp_1e-4`` gets CBP's colour)."""
    key = name.lower()
    if key in ACTIVATION_COLORS:
        return ACTIVATION_COLORS[key]
    for method, col in METHOD_COLORS.items():
        if key == method or key.startswith(method + "_") or key.startswith(method + " "):
            return col
    return _FALLBACK[i % len(_FALLBACK)]


def styles(labels: Sequence[str], colors: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """``{label: (colour, dash)}``: the book's colour per label; labels that share a colour get distinct dashes."""
    out: dict[str, tuple[str, str]] = {}
    used: dict[str, int] = {}
    for i, label in enumerate(labels):
        col = (colors or {}).get(label) or color(label, i)
        out[label] = (col, DASHES[used.get(col, 0) % len(DASHES)])
        used[col] = used.get(col, 0) + 1
    return out


def wrap_title(text: str, width: int = TITLE_CHARS) -> str:
    """Break a title into lines of at most ``width`` characters (plotly does not wrap titles)."""
    if "<br>" in text:
        return text
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join([*lines, line])


def finish(fig: go.Figure, *, title: str, xaxis: str = "", yaxis: str = "", height: int = 460,
           menus: bool = False) -> go.Figure:
    """The book's layout: a title that wraps, room for a dropdown under it, the legend below the plot
    (a legend beside the plot crushes it on a phone), small side margins, and a width that follows the page."""
    lines = wrap_title(title).count("<br>") + 1
    top = 26 + 20 * lines + (34 if menus else 0)  # the title, then the dropdown
    fig.update_layout(title={"text": wrap_title(title), "x": 0, "xanchor": "left", "y": 1, "yanchor": "top",
                             "yref": "container", "pad": {"t": 10, "l": 8}, "font": {"size": 15}},
                      xaxis_title=xaxis, yaxis_title=yaxis, template="plotly_white", height=height,
                      autosize=True, margin={"t": top, "l": 58, "r": 12, "b": 10},
                      legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 0, "yanchor": "bottom",
                              "yref": "container", "font": {"size": 11}},
                      hoverlabel={"namelength": -1})
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def show(fig: go.Figure) -> None:
    """Display ``fig`` so that it draws in the built book, in Jupyter and in Colab.

    The book loads plotly.js on the pages that have figures (see :mod:`lopbook.sphinx_ext`) and renders the
    HTML part, which fills the page's width; JupyterLab and VS Code render plotly's own mime type; Colab gets
    its own renderer.
    """
    if "google.colab" in sys.modules:
        fig.show(renderer="colab")
        return
    from IPython.display import display

    height = fig.layout.height or 460
    bundle = {
        "application/vnd.plotly.v1+json": json.loads(fig.to_json()),
        "text/html": fig.to_html(include_plotlyjs=False, full_html=False, default_width="100%",
                                 default_height=f"{height}px",
                                 # no mode bar: on a phone it covers the title; drag still zooms,
                                 # a double click resets
                                 config={"responsive": True, "displayModeBar": False}),
    }
    display(bundle, raw=True)


def mean_and_band(runs: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 (seeds) and its ``level`` Student-t confidence band, pointwise.

    The t quantile, not the normal 1.96: with the few seeds a CPU affords the difference is large (a half-width
    of 12.7 standard errors for 2 seeds, 2.78 for 5), and the band then agrees with
    :func:`lopbook.stats.t_interval`. One run has no band (lower = upper = the run).
    """
    runs = np.asarray(runs, dtype=float)
    if runs.ndim == 1:
        runs = runs[None]
    mean = runs.mean(0)
    if runs.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    half = t_quantile(runs.shape[0], level) * runs.std(0, ddof=1) / np.sqrt(runs.shape[0])
    return mean, mean - half, mean + half


Bounds = tuple[float | None, float | None]


def value_bounds(values: Sequence[np.ndarray], axis_title: str = "") -> Bounds:
    """The range a plotted quantity can take, for clipping its confidence band.

    A quantity whose every observation is >= 0 (an error, a rank, a count, a weight magnitude) cannot go below 0;
    a percentage (axis title with "%" but not "% points") cannot exceed 100.
    """
    finite = [np.asarray(v, float)[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    if not finite:
        return (None, None)
    lo_all = min(float(v.min()) for v in finite)
    hi_all = max(float(v.max()) for v in finite)
    lower = 0.0 if lo_all >= 0 else None
    upper = 100.0 if "%" in axis_title and "point" not in axis_title and hi_all <= 100 and lower == 0 else None
    return (lower, upper)


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


SHOW_RUNS_UP_TO = 3  # with this few seeds a band says little: draw every seed's run as well


def band_traces(x: np.ndarray, runs: np.ndarray, name: str, col: str | None = None,
                visible: bool | str = True, legendgroup: str | None = None, dash: str = "solid",
                bounds: Bounds = (None, None)) -> list[go.Scatter]:
    """A mean line and a shaded 95% band over seeds (``runs`` has shape seeds x points); with at most
    :data:`SHOW_RUNS_UP_TO` seeds, also each seed's own run as a thin line (the band of 2 seeds reaches 12.7
    standard errors either side of the mean, and the runs show what it is made of).

    The band is clipped to ``bounds`` (the quantity's possible range; a band over few seeds can otherwise run
    past 100% or below 0).
    """
    col = col or color(name)
    x = np.asarray(x)
    mean, lo, hi = mean_and_band(runs)
    lo = np.clip(lo, bounds[0], bounds[1]) if any(b is not None for b in bounds) else lo
    hi = np.clip(hi, bounds[0], bounds[1]) if any(b is not None for b in bounds) else hi
    group = legendgroup or name
    band = go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself",
                      mode="lines", fillcolor=_rgba(col, 0.18), line={"width": 0}, hoverinfo="skip",
                      showlegend=False, legendgroup=group, visible=visible, name=f"{name} 95% CI")
    per_seed = np.asarray(runs, dtype=float).reshape(-1, len(x))
    seeds = [go.Scatter(x=x, y=run, mode="lines", line={"color": col, "width": 1, "dash": dash}, opacity=0.5,
                        hoverinfo="skip", showlegend=False, legendgroup=group, visible=visible,
                        name=f"{name} seed {k}")
             for k, run in enumerate(per_seed)] if 1 < len(per_seed) <= SHOW_RUNS_UP_TO else []
    few = len(x) <= 20  # few points: mark them on the mean line, never on the band
    line = go.Scatter(x=x, y=mean, name=name, mode="lines+markers" if few else "lines",
                      line={"color": col, "width": 2, "dash": dash}, marker={"size": 5},
                      legendgroup=group, visible=visible)
    return [band, *seeds, line]


REFERENCE_DASHES = ("dot", "dash", "dashdot", "longdashdot")


def reference_traces(x: np.ndarray, reference: Mapping[str, float], visible: bool | str = True
                     ) -> list[go.Scatter]:
    """Horizontal reference levels as legend entries (labels in the legend never overlap each other)."""
    x = np.asarray(x)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    return [go.Scatter(x=[lo, hi], y=[value, value], mode="lines", name=text, visible=visible,
                       line={"color": "#444", "width": 1.5, "dash": REFERENCE_DASHES[k % len(REFERENCE_DASHES)]},
                       hovertemplate=f"{text}<extra></extra>")
            for k, (text, value) in enumerate(reference.items())]


def curves_figure(x: np.ndarray, curves: Mapping[str, np.ndarray], *, title: str, xaxis: str, yaxis: str,
                  reference: Mapping[str, float] | None = None, bounds: Bounds | None = None) -> go.Figure:
    """Mean ± 95% CI curves, one per method, with buttons to show all methods or one at a time.

    ``curves`` maps a label to a (seeds x points) array; ``reference`` adds dotted horizontal lines
    (e.g. a published number or a linear baseline), listed in the legend. ``bounds`` clips the bands
    (default: inferred by :func:`value_bounds`).
    """
    fig = go.Figure()
    labels = list(curves)
    bounds = bounds if bounds is not None else value_bounds(list(curves.values()), yaxis)
    style = styles(labels)
    owner: list[int] = []  # the curve each trace belongs to (-1: a reference line, always shown)
    for i, label in enumerate(labels):
        col, dash = style[label]
        for tr in band_traces(np.asarray(x), curves[label], label, col, dash=dash, bounds=bounds):
            fig.add_trace(tr)
            owner.append(i)
    for tr in reference_traces(np.asarray(x), reference or {}):
        fig.add_trace(tr)
        owner.append(-1)
    n = len(fig.data)
    buttons = [{"label": "all methods", "method": "update", "args": [{"visible": [True] * n}]}]
    for i, label in enumerate(labels):
        vis = [o in (i, -1) for o in owner]
        buttons.append({"label": label, "method": "update", "args": [{"visible": vis}]})
    fig.update_layout(hovermode="x unified",
                      updatemenus=[{"buttons": buttons, "direction": "down", **MENU_POSITION}])
    return finish(fig, title=title, xaxis=xaxis, yaxis=yaxis, menus=True)


def metric_dropdown_figure(x: np.ndarray, metrics: Mapping[str, Mapping[str, np.ndarray]], *, title: str,
                           xaxis: str) -> go.Figure:
    """One panel, a dropdown to pick the metric; ``metrics[metric][method]`` is (seeds x points).

    Each metric's bands are clipped to its own range (:func:`value_bounds` with the metric name as axis title).
    """
    fig = go.Figure()
    names = list(metrics)
    spans: list[tuple[int, int]] = []
    for k, metric in enumerate(names):
        start = len(fig.data)
        bounds = value_bounds(list(metrics[metric].values()), metric)
        style = styles(list(metrics[metric]))
        for label, runs in metrics[metric].items():
            col, dash = style[label]
            for tr in band_traces(np.asarray(x), runs, label, col, visible=k == 0,
                                  legendgroup=f"{metric}:{label}", dash=dash, bounds=bounds):
                fig.add_trace(tr)
        spans.append((start, len(fig.data)))
    n = len(fig.data)
    buttons = [{"label": metric, "method": "update",
                "args": [{"visible": [a <= j < b for j in range(n)]}, {"yaxis": {"title": {"text": metric}}}]}
               for metric, (a, b) in zip(names, spans, strict=True)]
    fig.update_layout(updatemenus=[{"buttons": buttons, "direction": "down", **MENU_POSITION}])
    return finish(fig, title=title, xaxis=xaxis, yaxis=names[0] if names else "", menus=True)


def bin_mean(values: np.ndarray, bin_size: int, axis: int = -1) -> np.ndarray:
    """Average consecutive blocks of ``bin_size`` along ``axis`` (a trailing partial block is dropped)."""
    values = np.moveaxis(np.asarray(values), axis, -1)
    n = values.shape[-1] // bin_size
    if n == 0:
        raise ValueError(f"bin size {bin_size} is larger than the series ({values.shape[-1]} points)")
    out = values[..., : n * bin_size].reshape(*values.shape[:-1], n, bin_size).mean(-1)
    return np.moveaxis(out, -1, axis)



# --- slippery Ant ---

SLIPPERY_ANT_LABELS = {"bp": "bp (standard PPO)", "ns": "ns (PPO, Adam betas 0.99)", "l2": "l2 (PPO + L2)",
                       "cbp": "cbp (PPO + CBP + L2)", "redo": "redo (PPO + ReDo + L2)"}


def _ant_curves(result, values) -> dict[str, np.ndarray]:
    return {SLIPPERY_ANT_LABELS.get(str(m), str(m)): np.asarray(values[i], float)
            for i, m in enumerate(result["methods"])}


def friction_changes(result, method: int = 0, seed: int = 0) -> list[tuple[int, float]]:
    """(env step, new friction) at each PPO iteration in which env 0's friction changed, plus the start."""
    fr, steps = result["friction"][method, seed], result["iter_step"]
    out = [(0, float(fr[0]))]
    out += [(int(steps[i - 1]), float(fr[i])) for i in range(1, len(fr)) if fr[i] != fr[i - 1]]
    return out


def slippery_ant_returns_figure(result) -> go.Figure:
    """Mean episode return per bin (95% band over seeds), methods selectable; dashed lines mark when the
    friction changed (seed 0's sequence; every method sees the same frictions, each seed its own). With a fixed
    friction (stationary Ant) the title says so and there is one line, at the start."""
    changes = friction_changes(result)
    title = ("Episode return while the friction changes" if len(changes) > 1
             else f"Episode return (friction fixed at {changes[0][1]:.2f})")
    fig = curves_figure(result["bin_end"], _ant_curves(result, result["returns_binned"]), title=title,
                        xaxis="env steps", yaxis="mean episode return (per bin)")
    for step, f in changes:
        fig.add_vline(x=step, line_dash="dash", line_color="gray", annotation_text=f"f={f:.2f}",
                      annotation_position="bottom right", annotation_font_size=10)
    return fig


ANT_METRIC_POINTS = 250  # at most this many points per curve: a 10M-step run has ~4,900 PPO iterations


def slippery_ant_metrics_figure(result) -> go.Figure:
    """Dropdown over the plasticity metrics of the policy net (95% band over seeds).

    A long run is averaged over blocks of consecutive PPO iterations, to at most :data:`ANT_METRIC_POINTS` points
    per curve (the page stays light; the title says how many iterations a point is), each placed at its block's
    last step."""
    width = int(result.meta["config"]["hidden"][-1])
    steps = np.asarray(result["iter_step"])
    block = -(-len(steps) // ANT_METRIC_POINTS)

    def thin(values: np.ndarray) -> np.ndarray:
        return bin_mean(np.asarray(values, float), block) if block > 1 else values

    metrics = {
        "dormant policy units (%)": _ant_curves(result, thin(100 * result["dormant"].mean(-1))),
        f"stable rank of the last policy hidden layer (% of {width})":
            _ant_curves(result, thin(100 * result["stable_rank"] / width)),
        "mean |W|, policy hidden->hidden layer": _ant_curves(result, thin(result["weight_mag"][..., 1])),
        "mean |W|, policy output layer": _ant_curves(result, thin(result["weight_mag"][..., -1])),
        "units re-initialised so far (CBP / ReDo, both nets)": _ant_curves(result, thin(result["replaced"])),
    }
    x = steps[block - 1::block][: len(steps) // block] if block > 1 else steps
    title = "Inside the policy network" + (f" (each point: mean of {block} PPO iterations)" if block > 1 else "")
    return metric_dropdown_figure(x, metrics, title=title, xaxis="env steps")

# --- permuted MNIST ---

def permuted_digits_figure(image: np.ndarray, perms: Sequence[np.ndarray], titles: Sequence[str] | None = None
                           ) -> go.Figure:
    """One ``28×28`` digit as the network sees it under several tasks' pixel permutations (side by side)."""
    from plotly.subplots import make_subplots

    img = np.asarray(image, dtype=float).reshape(-1)
    side = int(round(np.sqrt(img.size)))
    titles = list(titles) if titles is not None else [f"task {i}" for i in range(len(perms))]
    fig = make_subplots(rows=1, cols=len(perms), subplot_titles=titles, horizontal_spacing=0.02)
    for i, perm in enumerate(perms):
        z = img[np.asarray(perm)].reshape(side, side)
        fig.add_trace(go.Heatmap(z=z[::-1], colorscale="gray_r", showscale=False, hoverinfo="skip"), 1, i + 1)
        fig.update_xaxes(visible=False, row=1, col=i + 1)
        fig.update_yaxes(visible=False, scaleanchor=f"x{i + 1 if i else ''}", row=1, col=i + 1)
    fig.update_layout(height=240, margin={"t": 30, "b": 6, "l": 6, "r": 6}, template="plotly_white", autosize=True)
    return fig


def task_slider_figure(values: Mapping[str, np.ndarray], *, title: str, yaxis: str, every: int = 1,
                       task_offset: int = 0) -> go.Figure:
    """Per method, mean ± 95% CI over seeds at one task (bars), with a slider to move through the tasks.

    ``values[label]`` has shape (seeds x tasks); the slider has a step every ``every`` tasks. The value axis
    starts at 0 (bars must), and the whiskers are clipped to the quantity's range.
    """
    labels = list(values)
    n_tasks = np.asarray(values[labels[0]]).shape[-1]
    steps_at = list(range(0, n_tasks, max(1, every)))
    if steps_at[-1] != n_tasks - 1:
        steps_at.append(n_tasks - 1)
    bounds = value_bounds([np.asarray(values[lab]) for lab in labels], yaxis)
    stats = {}
    for lab in labels:
        mean, lo, hi = mean_and_band(np.asarray(values[lab]))
        stats[lab] = (mean, np.clip(lo, bounds[0], bounds[1]), np.clip(hi, bounds[0], bounds[1]))
    lo_all = min(0.0, min(float(np.nanmin(st[1])) for st in stats.values()))
    hi_all = max(float(np.nanmax(st[2])) for st in stats.values())
    top = bounds[1] if bounds[1] is not None and hi_all > 0.9 * bounds[1] else hi_all * 1.05

    def at(t: int) -> dict[str, list]:
        return {"y": [[float(stats[lab][0][t]) for lab in labels]],
                "error_y.array": [[float(stats[lab][2][t] - stats[lab][0][t]) for lab in labels]],
                "error_y.arrayminus": [[float(stats[lab][0][t] - stats[lab][1][t]) for lab in labels]]}

    first = at(steps_at[0])
    fig = go.Figure(go.Bar(x=labels, y=first["y"][0],
                           error_y={"type": "data", "symmetric": False, "array": first["error_y.array"][0],
                                    "arrayminus": first["error_y.arrayminus"][0]},
                           marker_color=[styles(labels)[lab][0] for lab in labels]))
    # "restyle" swaps the bar heights in place: no animation frames, so no interrupted-animation promises.
    slider_steps = [{"label": str(t + task_offset), "method": "restyle", "args": [at(t)]} for t in steps_at]
    fig.update_layout(yaxis_range=[lo_all, top],
                      sliders=[{"steps": slider_steps, "currentvalue": {"prefix": "task "}, "pad": {"t": 50}}])
    finish(fig, title=title, yaxis=yaxis, height=440)
    fig.update_layout(showlegend=False, margin={"b": 20})
    return fig


# --- slowly-changing regression ---
SCR_ACT_COLORS = ACTIVATION_COLORS  # the BP-by-activation panels use the book's activation palette


def _scr_color(label: str, by_activation: bool) -> str:
    if by_activation and label.startswith("bp_"):
        return SCR_ACT_COLORS.get(label[3:], "#7f7f7f")
    return color(label)


def scr_problem_figure(x: np.ndarray, y: np.ndarray, period: int, every: int = 50) -> go.Figure:
    """The SCR input stream as a bit raster (every ``every``-th example) above the target over time."""
    from plotly.subplots import make_subplots

    idx = np.arange(0, len(x), every)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.12,
                        subplot_titles=("input bits (1–15 slow, 16–20 fresh)",
                                        f"target y (mean of {every} examples)"))
    fig.add_trace(go.Heatmap(x=idx, y=np.arange(1, x.shape[1] + 1), z=x[idx].T, colorscale=[[0, "#f7f7f7"],
                             [1, "#1f4e79"]], showscale=False, hovertemplate="example %{x}<br>bit %{y}: %{z}"
                             "<extra></extra>"), row=1, col=1)
    ym = y[: len(y) // every * every].reshape(-1, every).mean(1)
    fig.add_trace(go.Scatter(x=idx[: len(ym)], y=ym, mode="lines", line={"color": "#444"}, name="target"),
                  row=2, col=1)
    for t in range(period, len(x), period):
        fig.add_vline(x=t, line_dash="dot", line_color="#d62728", opacity=0.6)
    fig.update_yaxes(autorange="reversed", title_text="bit", row=1, col=1)
    fig.update_yaxes(title_text="y", row=2, col=1)
    fig.update_xaxes(title_text="example", row=2, col=1)
    finish(fig, title="The first stretches of the input stream", height=480)
    fig.update_layout(showlegend=False)
    return fig


def scr_panels_figure(x: np.ndarray, panels: Mapping[str, Mapping[str, np.ndarray]], *, title: str,
                      xaxis: str = "examples", yaxes: Mapping[str, str] | None = None,
                      reference: Mapping[str, Sequence[tuple[float, float, float, str]]] | None = None,
                      hlines: Mapping[str, Mapping[str, float]] | None = None) -> go.Figure:
    """Mean +- 95% CI curves; a dropdown picks the panel (a set of labelled (seeds x points) arrays).

    ``reference[panel]`` lists published read-offs ``(x, y_low, y_high, text)`` drawn as black diamonds with
    range bars; ``hlines[panel]`` maps a name to a horizontal dotted level (e.g. the linear baseline).
    """
    fig = go.Figure()
    spans: list[tuple[int, int]] = []
    names = list(panels)
    for k, pname in enumerate(names):
        start = len(fig.data)
        curves = panels[pname]
        by_act = sum(lab.startswith("bp_") for lab in curves) > 1
        style = styles(list(curves), {lab: _scr_color(lab, by_act) for lab in curves})
        bounds = value_bounds(list(curves.values()), (yaxes or {}).get(pname, ""))
        for label, runs in curves.items():
            for tr in band_traces(np.asarray(x), runs, label, style[label][0], visible=k == 0,
                                  legendgroup=f"{pname}:{label}", dash=style[label][1], bounds=bounds):
                fig.add_trace(tr)
        for tr in reference_traces(np.asarray(x), (hlines or {}).get(pname, {}), visible=k == 0):
            fig.add_trace(tr)
        pts = (reference or {}).get(pname, [])
        if pts:
            xs, lo, hi, txt = (list(v) for v in zip(*pts, strict=True))
            mid = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
            fig.add_trace(go.Scatter(x=xs, y=mid, mode="markers", name="paper's figure (read-off)",
                                     visible=k == 0, text=txt, hovertemplate="%{text}<extra></extra>",
                                     marker={"symbol": "diamond-open", "size": 11, "color": "black"},
                                     error_y={"type": "data", "symmetric": False,
                                              "array": [b - m for b, m in zip(hi, mid, strict=True)],
                                              "arrayminus": [m - a for a, m in zip(lo, mid, strict=True)]}))
        spans.append((start, len(fig.data)))
    n = len(fig.data)
    yaxes = yaxes or {}
    buttons = [{"label": pname, "method": "update",
                "args": [{"visible": [a <= j < b for j in range(n)]},
                         {"yaxis": {"title": {"text": yaxes.get(pname, "")}}}]}
               for pname, (a, b) in zip(names, spans, strict=True)]
    fig.update_layout(hovermode="x unified", updatemenus=[{"buttons": buttons, "direction": "down", **MENU_POSITION}])
    return finish(fig, title=title, xaxis=xaxis, yaxis=yaxes.get(names[0], "") if names else "", height=500,
                  menus=True)


def scr_curves(result, metric: str, labels: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``{label: (seeds x bins)}`` of one metric of an ``scr`` result (all labels by default)."""
    all_labels = [str(lab) for lab in result["labels"]]
    labels = [lab for lab in (labels or all_labels) if lab in all_labels]
    return {lab: result[metric][all_labels.index(lab)] for lab in labels}


# --- algorithms appendix ---

def cbp_utility_figure(trace: Mapping[str, np.ndarray]) -> go.Figure:
    """Utilities of one hidden layer's units over time with CBP's replacement events marked.

    ``trace`` is :func:`lopbook.algos.cbp.utility_trace` output. A dropdown switches between the bias-corrected
    utility CBP ranks by and the raw EMA (which starts near 0 for every young unit).
    """
    steps, util, raw, events = trace["steps"], trace["utility"], trace["raw_utility"], trace["events"]
    n = util.shape[1]
    fig = go.Figure()
    for which, values in enumerate((util, raw)):
        for u in range(n):
            fig.add_trace(go.Scatter(x=steps, y=values[:, u], mode="lines", name=f"unit {u}", legendgroup=f"u{u}",
                                     line={"width": 1.3},
                                     visible=which == 0, showlegend=False,
                                     hovertemplate=f"unit {u}<br>step %{{x}}<br>utility %{{y:.3g}}<extra></extra>"))
        if len(events):
            t, u = events[:, 0], events[:, 1]
            before = values[np.maximum(t - 1, 0), u]  # the utility that made the unit the weakest one
            fig.add_trace(go.Scatter(x=t, y=before, mode="markers", name="replacement",
                                     marker={"symbol": "x", "size": 9, "color": "black"}, visible=which == 0,
                                     hovertemplate="step %{x}: unit %{text} replaced<extra></extra>",
                                     text=[str(int(v)) for v in u]))
    per = n + (1 if len(events) else 0)
    buttons = [{"label": label, "method": "update",
                "args": [{"visible": [k // per == which for k in range(2 * per)]}]}
               for which, label in enumerate(("bias-corrected utility û", "raw EMA utility"))]
    fig.update_layout(updatemenus=[{"buttons": buttons, **MENU_POSITION}])
    return finish(fig, title="CBP on a 6-12-1 net: unit utilities and replacements (x)", xaxis="step",
                  yaxis="utility", height=440, menus=True)


__all__: Sequence[str] = ["show", "color", "styles", "finish", "wrap_title", "value_bounds", "mean_and_band",
                          "band_traces", "reference_traces", "curves_figure", "ACTIVATION_COLORS",
                          "metric_dropdown_figure", "bin_mean", "METHOD_COLORS",
                          "slippery_ant_returns_figure", "slippery_ant_metrics_figure", "friction_changes",
                          "permuted_digits_figure", "task_slider_figure", "cbp_utility_figure"]
