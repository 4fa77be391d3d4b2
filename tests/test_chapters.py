"""Every chapter page of the book, executed top to bottom in ``quick`` mode (the real code at tiny scale)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import jupytext
import nbclient
import nbformat
import pytest
import yaml
from nbclient.exceptions import CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent


def book_pages() -> list[Path]:
    """All pages listed in _toc.yml, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [ch["file"] for ch in part.get("chapters", [])]
    return [ROOT / f"{f}.md" for f in files]


def executable(path: Path) -> bool:
    return "kernelspec" in jupytext.read(path).metadata


PAGES = [p for p in book_pages() if executable(p)]

# Appended to each page in quick mode: the live panels only train when a button is clicked, so click every
# button once (with the panel's default settings) and fail on any traceback that a callback printed.
CLICK_EVERY_BUTTON = """
import ipywidgets as _w
from ipywidgets.widgets.widget import _instances as _live

# Output widgets route what a callback prints to the widget (a frontend feature) and swallow its exception.
# Headless, make them plain pass-through contexts that record the exception instead.
_failures = []


def _enter(self):
    return self


def _exit(self, etype, evalue, tb):
    if etype is not None:
        _failures.append(f"{etype.__name__}: {evalue}")
    return True


_w.Output.__enter__, _w.Output.__exit__ = _enter, _exit
_w.Output.clear_output = lambda self, *a, **k: None
_buttons = [x for x in list(_live.values()) if isinstance(x, _w.Button)]
for _b in _buttons:
    for _callback in _b._click_handlers.callbacks:  # called directly so an exception propagates
        _callback(_b)
assert not _failures, "a live panel failed: " + " | ".join(_failures)
print(f"clicked {len(_buttons)} button(s)")
"""


def test_toc_pages_exist():
    missing = [str(p.relative_to(ROOT)) for p in book_pages() if not p.exists()]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"


@pytest.mark.chapter
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs_in_quick_mode(page: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOPBOOK_MODE", "quick")
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    # A lost kernel (died, or went silent) is infrastructure, not the chapter: retry once with a fresh kernel.
    # A cell that raises (CellExecutionError) is never retried.
    for attempt in (1, 2):
        nb = jupytext.read(page)
        nb.cells.append(nbformat.v4.new_code_cell(CLICK_EVERY_BUTTON))
        client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                         resources={"metadata": {"path": str(page.parent)}})
        start = time.perf_counter()
        try:
            client.execute()  # raises CellExecutionError with the failing cell's traceback
            break
        except (DeadKernelError, CellTimeoutError):
            if attempt == 2:
                raise
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert elapsed < 300, f"{page.name} took {elapsed:.0f} s in quick mode; keep quick mode to seconds"
