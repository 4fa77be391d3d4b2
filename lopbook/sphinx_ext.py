"""Sphinx extension for the book: serve plotly.js from the book itself.

myst-nb drops plotly's own mime type, so :func:`lopbook.plots.show` also emits an HTML ``<div>`` that
expects a global ``Plotly``. This extension copies the ``plotly.min.js`` shipped with the installed
plotly package into the book's ``_static`` folder and loads it on every page: figures draw offline
and each page stays small (one cached script instead of 4.7 MB inlined per page).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx


def _add_plotly_js(app: Sphinx) -> None:
    import plotly

    src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not src.exists():
        raise FileNotFoundError(f"plotly.min.js not found in the plotly package at {src}; reinstall plotly")
    static = Path(app.doctreedir).parent / "_lopbook_static"
    static.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, static / "plotly.min.js")
    app.config.html_static_path.append(str(static))
    app.add_js_file("plotly.min.js", priority=200)


def _dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Drop repeated <script> entries: sphinx-thebe registers its config script twice under
    jupyter-book 1.0.4, and the second ``const THEBE_JS_URL`` is a JavaScript error on every page."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for js in context.get("script_files", []):
        key = (str(getattr(js, "filename", js) or ""), repr(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", _add_plotly_js)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
