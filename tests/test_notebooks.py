"""The readers' notebooks (book/chapters/*.ipynb): up to date with the chapters, a working install cell,
plain markdown for Jupyter and Colab, and the headless button-clicking hook that CI runs after the last cell."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import nbformat
import pytest

from lopbook import notebooks

REAL_FIND_SPEC = importlib.util.find_spec


def test_committed_notebooks_match_their_chapters():
    stale = notebooks.write_all(check=True)
    assert not stale, (f"out of date: {[p.name for p in stale]}; run `python -m lopbook.notebooks` and commit "
                       "book/chapters/*.ipynb")


def test_check_mode_reports_a_stale_notebook(tmp_path, monkeypatch):
    md = notebooks.CHAPTERS / "01_slowly_changing_regression.md"
    monkeypatch.setattr(notebooks, "CHAPTERS", tmp_path)
    (tmp_path / md.name).write_text(md.read_text())
    assert notebooks.write_all(check=True) == [tmp_path / md.with_suffix(".ipynb").name]
    assert not (tmp_path / md.with_suffix(".ipynb").name).exists()  # --check writes nothing
    assert notebooks.write_all() and notebooks.write_all(check=True) == []


def test_notebook_starts_with_the_setup_cell_and_ends_with_the_click_hook():
    nb = notebooks.make_notebook(notebooks.CHAPTERS / "05_slippery_ant.md", url="https://github.com/o/r")
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "code" and "'https://github.com/o/r'" in nb.cells[0].source
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert "\n".join(last.metadata["nbmake"]["post_cell_execute"]) == notebooks.CLICK_EVERY_BUTTON.rstrip("\n")
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert ":::" not in md and "{doc}" not in md  # MyST-only markup is converted for Jupyter/Colab
    image = [c for c in nb.cells if "attachment:slippery_ant_frames.png" in c.source]
    assert image and image[0].attachments["slippery_ant_frames.png"]["image/png"].startswith("iVBOR")


def test_plain_markdown_conversion_by_hand():
    text, att = notebooks._plain_markdown(":::{admonition} Why\n:class: note\n- one\n- two\n:::\n"
                                          "See {doc}`../appendix/algorithms`.")
    assert text == "> **Why**\n>\n> - one\n> - two\n\nSee *algorithms*."
    assert att == {}


def _run_setup(url: str, *, installed: bool, mode: str | None, monkeypatch) -> tuple[list, dict]:
    """Execute the setup cell with lopbook (not) importable; record the commands it would run."""
    import os

    calls = []
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (REAL_FIND_SPEC(name, *a) if name != "lopbook" or installed else None))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(os.path, "isdir", lambda p: False)
    # the cell sets variables in os.environ: give it a private copy, so nothing leaks into later tests
    env = {k: v for k, v in os.environ.items() if k not in ("LOPBOOK_MODE", "LOPBOOK_DATA")}
    monkeypatch.setattr(os, "environ", env)
    source = notebooks.SETUP_CELL.format(url=url)
    if mode:
        source = source.replace("MODE = None", f"MODE = {mode!r}")
    exec(compile(source, "setup-cell", "exec"), {})
    return calls, env


def test_setup_cell_installs_lopbook_only_where_it_is_missing(monkeypatch):
    calls, env = _run_setup("https://github.com/o/r", installed=False, mode="quick", monkeypatch=monkeypatch)
    assert calls[0] == ["git", "clone", "--depth", "1", "https://github.com/o/r", "lopbook-src"]
    assert calls[1][:4] == [sys.executable, "-m", "pip", "install"] and calls[1][-1] == "lopbook-src[data,rl]"
    assert env["LOPBOOK_MODE"] == "quick" and env["LOPBOOK_DATA"].endswith("lopbook-src/data")
    calls, env = _run_setup("https://github.com/o/r", installed=True, mode=None, monkeypatch=monkeypatch)
    assert calls == [] and "LOPBOOK_MODE" not in env  # installed: nothing to do, the mode stays the default


def test_setup_cell_without_a_repository_says_what_to_do(monkeypatch):
    with pytest.raises(RuntimeError, match="pip install -r requirements.txt -e ."):
        _run_setup("", installed=False, mode=None, monkeypatch=monkeypatch)
