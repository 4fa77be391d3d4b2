"""The book's pages as listed in _toc.yml.

The chapters themselves are executed in ``quick`` mode by nbmake, from the very notebooks readers download or
open in Colab (``book/chapters/*.ipynb``, see :mod:`lopbook.notebooks` and ``conftest.py``); the intro and the
appendices run in the book build (``tests/test_book.py``).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
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


def test_toc_pages_exist():
    missing = [str(p.relative_to(ROOT)) for p in book_pages() if not p.exists()]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"


def test_every_chapter_is_a_notebook_that_ci_executes():
    chapters = [p for p in book_pages() if p.parent.name == "chapters"]
    assert chapters and all(executable(p) for p in chapters)
    missing = [p.with_suffix(".ipynb").name for p in chapters if not p.with_suffix(".ipynb").exists()]
    assert not missing, f"no reader notebook for {missing}; run `python -m lopbook.notebooks`"
    pytest_options = (ROOT / "pyproject.toml").read_text().split("[tool.pytest.ini_options]")[1].split("\n[")[0]
    assert '"book/chapters"' in pytest_options and "--nbmake" in pytest_options, \
        "pytest must collect book/chapters/*.ipynb with nbmake (pyproject.toml [tool.pytest.ini_options])"
