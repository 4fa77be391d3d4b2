"""The chapters as Jupyter notebooks for readers: the files the book's download menu, Colab and Binder open.

``book/chapters/<chapter>.md`` (jupytext MyST markdown) is the source; ``book/chapters/<chapter>.ipynb`` is made
from it by :func:`make_notebook` and committed, because Colab and Binder open notebooks from the repository.
The notebook adds one first cell, which installs lopbook where it is missing (Colab) and picks the run mode, and
turns MyST-only markup (admonitions, ``{doc}`` roles, local images) into plain Jupyter markdown. CI executes
these very files in ``quick`` mode with nbmake; ``tests/test_notebooks.py`` fails when one is out of date.

Regenerate after editing a chapter or ``repository.url`` in ``_config.yml``::

    python -m lopbook.notebooks           # write book/chapters/*.ipynb
    python -m lopbook.notebooks --check   # exit 1 and list the notebooks that are out of date
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "book" / "chapters"

SETUP_CELL = '''\
# Run this cell first. Where lopbook is not installed (e.g. on Colab) it fetches the book's repository and
# installs it; then it sets the run mode that every cell below reads.
import importlib.util
import os
import subprocess
import sys

REPOSITORY = {url!r}  # repository.url in the book's _config.yml
# "cached": load the book's stored results (seconds); "quick": retrain at a tiny scale (CPU, minutes);
# "full": the paper's scale (a GPU, hours to days). None keeps $LOPBOOK_MODE (default "cached").
MODE = None

if importlib.util.find_spec("lopbook") is None:
    if not REPOSITORY:
        raise RuntimeError("lopbook is not installed and this notebook does not know the book's repository: "
                           "clone it, run `pip install -r requirements.txt -e .` there and reopen the notebook")
    if not os.path.isdir("lopbook-src"):
        subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, "lopbook-src"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "lopbook-src[data,rl]"], check=True)
    sys.path.insert(0, os.path.abspath("lopbook-src"))
    os.environ.setdefault("LOPBOOK_DATA", os.path.abspath("lopbook-src/data"))
if MODE:
    os.environ["LOPBOOK_MODE"] = MODE
print("lopbook run mode:", os.environ.get("LOPBOOK_MODE", "cached"))
'''

# Run by nbmake after the notebook's last cell (cell metadata ``nbmake.post_cell_execute``): the live panels
# only train when a button is clicked, so click every button once with the panel's default settings and fail
# on any exception a callback raised.
CLICK_EVERY_BUTTON = '''\
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
'''

_ADMONITION = re.compile(r"^(:{3,}|`{3,})\{(admonition|note|tip|important|warning|caution|seealso)\}(.*?)\n"
                         r"(?P<body>.*?)^\1\s*$", re.S | re.M)
_DOC_ROLE = re.compile(r"\{doc\}`([^`<]*?)(?:<([^`>]*)>)?`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\((images/[^)\s]+)\)")


def repository_url(config: Path = ROOT / "_config.yml") -> str:
    """``repository.url`` from the book's ``_config.yml`` ("" while it is not set)."""
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    return str((data.get("repository") or {}).get("url") or "").strip()


def _plain_markdown(text: str) -> tuple[str, dict]:
    """MyST-only markup as plain Jupyter markdown; local images become cell attachments."""

    def admonition(m: re.Match) -> str:
        kind, title = m.group(2), m.group(3).strip()
        body = "\n".join(line for line in m.group("body").splitlines() if not line.startswith(":class:"))
        head = f"**{title or kind.capitalize()}**"
        quoted = "\n".join("> " + line if line else ">" for line in [head, "", *body.strip().splitlines()])
        return quoted + "\n"  # a blank line ends the quote (else the next paragraph continues it)

    text = _ADMONITION.sub(admonition, text)
    text = _DOC_ROLE.sub(lambda m: f"*{(m.group(1) or m.group(2)).strip().split('/')[-1]}*", text)
    attachments = {}

    def image(m: re.Match) -> str:
        path = CHAPTERS / m.group(2)
        name = path.name
        attachments[name] = {"image/png": base64.b64encode(path.read_bytes()).decode()}
        return f"![{m.group(1)}](attachment:{name})"

    text = _IMAGE.sub(image, text)
    return text, attachments


def make_notebook(md: Path, url: str | None = None) -> nbformat.NotebookNode:
    """The reader's notebook of one chapter (no outputs; deterministic, so it can be committed and compared)."""
    import jupytext

    url = repository_url() if url is None else url
    source = jupytext.read(md)
    cells = [nbformat.v4.new_code_cell(SETUP_CELL.format(url=url))]
    for cell in source.cells:
        if cell.cell_type == "markdown":
            text, attachments = _plain_markdown(cell.source)
            new = nbformat.v4.new_markdown_cell(text)
            if attachments:
                new["attachments"] = attachments
        elif cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(cell.source)
            tags = cell.metadata.get("tags")
            if tags:
                new.metadata["tags"] = list(tags)
        else:
            new = nbformat.v4.new_raw_cell(cell.source)
        cells.append(new)
    code = [c for c in cells if c.cell_type == "code"]
    code[-1].metadata["nbmake"] = {"post_cell_execute": CLICK_EVERY_BUTTON.splitlines()}
    for i, cell in enumerate(cells):
        cell["id"] = f"{md.stem[:2]}-{i:03d}"
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"},
                   "colab": {"name": md.with_suffix(".ipynb").name, "provenance": []}}
    return nb


def chapter_sources() -> list[Path]:
    """The chapter pages that are notebooks (jupytext markdown with a kernel)."""
    import jupytext

    return [p for p in sorted(CHAPTERS.glob("*.md")) if "kernelspec" in jupytext.read(p).metadata]


def render(md: Path, url: str | None = None) -> str:
    return nbformat.writes(make_notebook(md, url)) + "\n"


def write_all(check: bool = False) -> list[Path]:
    """Write every chapter's notebook (or, with ``check``, only list those that differ); return the stale ones."""
    url = repository_url()
    stale = []
    for md in chapter_sources():
        target = md.with_suffix(".ipynb")
        text = render(md, url)
        if not target.exists() or target.read_text() != text:
            stale.append(target)
            if not check:
                target.write_text(text)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lopbook.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    args = parser.parse_args(argv)
    stale = write_all(check=args.check)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
