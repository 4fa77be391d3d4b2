"""Text computed from results: the numbers a chapter states, formatted by hand-checked rules."""

from __future__ import annotations

import numpy as np
import pytest

from lopbook import report
from lopbook.results import Result


def test_ci_is_the_figures_95_percent_band():
    values = np.array([1.0, 3.0, 5.0])  # sample std 2
    mean, half = report.mean_ci(values)
    assert mean == 3.0 and half == pytest.approx(4.302653 * 2 / np.sqrt(3))  # Student-t, 2 degrees of freedom
    assert report.ci(values) == "3.00 ± 4.97"
    assert report.ci([0.5, 0.5], digits=1, scale=100, unit="%") == "50.0% ± 0.0%"
    with pytest.raises(ValueError, match="at least one value"):
        report.mean_ci([])


def test_number_formats():
    assert report.num(-4688.79, 0) == "−4,689"  # a true minus sign
    assert report.num(0.8765) == "0.88"
    assert report.pct(0.376) == "38%"
    assert report.approx(58_594) == "59,000" and report.approx(160.0) == "160"


def test_say_and_note_display_markdown_and_html(monkeypatch):
    shown = []
    monkeypatch.setattr(report, "_display", shown.append)
    report.say("  **BP** rises.\n")
    assert shown[-1] == {"text/markdown": "**BP** rises.", "text/plain": "**BP** rises."}
    report.note("Scale", ["a < b"], kind="warning")
    assert 'class="admonition warning"' in shown[-1]["text/html"] and "a &lt; b" in shown[-1]["text/html"]
    with pytest.raises(ValueError, match="choose one of"):
        report.note("x", [], kind="loud")


def test_scale_note_says_stand_in_and_scale():
    meta = {"experiment": "e", "preset": "cpu", "seeds": [0, 1], "device": "cpu", "wall_time_s": 600,
            "git_commit": "abcdef1234567", "created": "2026-11-25T06:11:00",
            "dataset": {"name": "digits", "stand_in": True, "note": "not ImageNet"},
            "scale": {"paper_scale": False, "note": "16 tasks (paper: 5,000)"}}
    title, lines, kind = report.scale_lines(Result({}, meta))
    assert kind == "warning" and title.startswith("A stand-in") and title.endswith("e/cpu")
    assert lines == ["Data: digits: not ImageNet", "Scale: 16 tasks (paper: 5,000)",
                     "Seeds: 2; device cpu; 10 min wall time; commit abcdef1234; created 2026-11-25"]
    meta["dataset"]["stand_in"], meta["scale"]["paper_scale"] = False, True
    assert report.scale_lines(Result({}, meta))[2] == "tip"
    meta["git_commit"] = "mixed: 2508f1114306cf9e, d504364f4b95cba3"  # a sweep whose runs span commits
    assert "commit mixed (2508f11143, d504364f4b); " in report.scale_lines(Result({}, meta))[1][-1]
