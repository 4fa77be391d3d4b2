"""Every chapter page of the book, executed top to bottom in ``quick`` mode (the real code at tiny scale)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import jupytext
import nbclient
import pytest
import yaml

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


def test_toc_pages_exist():
    missing = [str(p.relative_to(ROOT)) for p in book_pages() if not p.exists()]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"


@pytest.mark.chapter
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs_in_quick_mode(page: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOPBOOK_MODE", "quick")
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    nb = jupytext.read(page)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(page.parent)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert elapsed < 300, f"{page.name} took {elapsed:.0f} s in quick mode; keep quick mode to seconds"
