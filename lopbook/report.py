"""Text that a chapter computes from a result, so the numbers it states cannot drift from the cached file.

A chapter never types a number it read off a result. It computes the number in a code cell and writes the
sentence with :func:`say` (a paragraph of markdown, shown in the book as ordinary text when the cell is tagged
``remove-input``), and it states a run's data and scale with :func:`scale_note` (an admonition, not a long
output line). The formatting helpers (:func:`mean_ci`, :func:`ci`, :func:`pct`) use the same 95% band as
the figures (:func:`lopbook.plots.mean_and_band`).

Example (a cell tagged ``remove-input``)::

    err = load_cached("scr", "full")["err"]
    say(f"BP with relu ends at {ci(err[0, :, -5:].mean(1))} ...")
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import numpy as np

from .plots import mean_and_band
from .results import Result, short_commit

ADMONITION_KINDS = ("note", "tip", "important", "warning", "caution")


def mean_ci(values: Iterable[float] | np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width over the first axis (one value per seed)."""
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.size == 0:
        raise ValueError("mean_ci needs at least one value (one per seed)")
    mean, _, hi = mean_and_band(arr[:, None])
    return float(mean[0]), float(hi[0] - mean[0])


def ci(values: Iterable[float] | np.ndarray, digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    """``"1.26 ± 0.12"``: the mean over seeds and its 95% half-width (``scale`` multiplies both)."""
    mean, half = mean_ci(np.asarray(values, dtype=float) * scale)
    return f"{mean:,.{digits}f}{unit} ± {half:,.{digits}f}{unit}"


def num(value: float, digits: int = 2) -> str:
    """A number as the text writes it: thousands separators, ``digits`` decimals, a true minus sign."""
    return f"{float(value):,.{digits}f}".replace("-", "−")


def approx(value: float, figures: int = 2) -> str:
    """A large number rounded to ``figures`` significant figures, as text: ``approx(58_594) == "59,000"``."""
    value = float(value)
    if value == 0:
        return "0"
    step = 10 ** (int(np.floor(np.log10(abs(value)))) - figures + 1)
    return f"{round(value / step) * step:,.0f}"


def pct(fraction: float, digits: int = 0) -> str:
    """A fraction as a percentage: ``pct(0.376) == "38%"``."""
    return f"{100 * float(fraction):.{digits}f}%"


def _display(bundle: dict) -> None:
    from IPython.display import display

    display(bundle, raw=True)


def say(markdown: str) -> None:
    """Show a paragraph of markdown as the chapter's own text (MyST in the book, markdown in Jupyter)."""
    text = markdown.strip()
    _display({"text/markdown": text, "text/plain": text})


def note(title: str, lines: Iterable[str], kind: str = "note") -> None:
    """Show an admonition box (HTML: the book styles it like its own admonitions; Jupyter shows it plainly).

    ``lines`` are plain text (escaped); each becomes one bullet.
    """
    if kind not in ADMONITION_KINDS:
        raise ValueError(f"unknown admonition kind {kind!r}; choose one of {', '.join(ADMONITION_KINDS)}")
    items = [str(line) for line in lines]
    body = "".join(f"<li>{html.escape(item)}</li>" for item in items)
    markup = (f'<div class="admonition {kind}"><p class="admonition-title">{html.escape(title)}</p>'
              f"<ul>{body}</ul></div>")
    plain = "\n".join([title, *(f"- {item}" for item in items)])
    _display({"text/html": markup, "text/plain": plain})


def scale_lines(result: Result) -> tuple[str, list[str], str]:
    """(title, bullet lines, admonition kind) describing a result's data, scale and provenance."""
    m = result.meta
    ds = m.get("dataset", {}) or {}
    scale = m.get("scale", {}) or {}
    stand_in = bool(ds.get("stand_in"))
    paper_scale = bool(scale.get("paper_scale"))
    if stand_in:
        title, kind = "A stand-in for the paper's data, at a reduced scale", "warning"
    elif not paper_scale:
        title, kind = "A reduced-scale run", "note"
    else:
        title, kind = "The paper's scale", "tip"
    title = f"{title}: {m.get('experiment')}/{m.get('preset')}"
    lines = []
    data = str(ds.get("name", "?"))
    if ds.get("note"):
        data += f": {ds['note']}"
    lines.append(f"Data: {data}")
    lines.append(f"Scale: {scale.get('note') or ('the paper’s' if paper_scale else 'reduced')}")
    commit = short_commit(m.get("git_commit"))
    lines.append(f"Seeds: {len(m.get('seeds', []))}; device {m.get('device')}; "
                 f"{float(m.get('wall_time_s', 0)) / 60:,.0f} min wall time; commit {commit}; "
                 f"created {str(m.get('created', '?'))[:10]}")
    return title, lines, kind


def scale_note(result: Result) -> None:
    """State a result's data, scale, seeds and provenance as an admonition (warning for a stand-in)."""
    title, lines, kind = scale_lines(result)
    note(title, lines, kind)


__all__ = ["say", "note", "scale_note", "scale_lines", "mean_ci", "ci", "num", "approx", "pct"]
