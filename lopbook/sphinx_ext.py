"""Sphinx extension for the book: every script a page loads comes from the book itself, and every chapter
can be downloaded as a notebook.

* **No CDN.** plotly.js comes from the installed ``plotly`` package; MathJax 3, the Jupyter widgets HTML
  manager and RequireJS come from the npm packages pinned in ``package.json`` / ``package-lock.json``
  (``npm ci``, run by ``scripts/setup.sh``, installs them into ``node_modules/``). They are copied into
  ``_static/lopbook/`` and ``_config.yml`` points ``mathjax_path`` and ``nb_ipywidgets_js`` there, so a
  page works without a network.
* **Only where needed.** plotly.js (4.8 MB) is added only to pages that draw a figure; MathJax only to pages
  with math (Sphinx's rule); the widget manager only to pages with widgets (myst-nb's rule).
* **MathJax 2 calls.** The widget manager typesets widget labels through MathJax 2's ``MathJax.Hub.Queue``;
  ``mathjax-hub.js`` gives MathJax 3 that one entry point on widget pages.
* **Notebooks.** Each chapter's download menu offers the chapter's notebook (``book/chapters/<name>.ipynb``,
  made by :mod:`lopbook.notebooks`: the same file Colab and Binder open and CI executes), not the executed copy
  with the book's outputs. Launch buttons appear once ``repository.url`` is set in ``_config.yml``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

ROOT = Path(__file__).resolve().parent.parent
STATIC = "lopbook"  # files land in _static/lopbook/
# (npm package, files or folders inside it, destination folder under _static/lopbook)
NPM_ASSETS: list[tuple[str, list[str], str]] = [
    ("mathjax", ["es5/tex-mml-chtml.js", "es5/output/chtml/fonts/woff-v2", "es5/input/tex/extensions",
                 "es5/ui", "es5/a11y", "es5/sre"], "mathjax"),
    ("requirejs", ["require.js"], "."),
    ("@jupyter-widgets/html-manager", ["dist/embed-amd.js"], "."),
    *(("@jupyter-widgets/html-manager", ["dist/*.woff2", "dist/*.woff", "dist/*.ttf", "dist/*.eot", "dist/*.svg"],
       folder) for folder in ("@jupyter-widgets", "@jupyter-widgets/html-manager/dist")),
]

MATHJAX_HUB_JS = """\
// The Jupyter widgets HTML manager (1.x) typesets widget labels with MathJax 2's MathJax.Hub.Queue; the book
// loads MathJax 3, which has no Hub. Whatever object becomes window.MathJax (this configuration, then MathJax 3
// itself) gets a Hub.Queue that hands the element to MathJax 3, or keeps it until MathJax 3 is ready.
(function () {
  var pending = [];
  var hub = {Queue: function (job) {
    var el = Array.isArray(job) ? job[2] : undefined;
    var mj = window.MathJax;
    if (mj && mj.typesetPromise && mj.startup && mj.startup.document) {
      mj.typesetPromise(el ? [el] : undefined).catch(function () {});
    } else { pending.push(el); }
  }};
  var current = {startup: {ready: function () {
    window.MathJax.startup.defaultReady();
    pending.splice(0).forEach(function (el) { hub.Queue(["Typeset", hub, el]); });
  }}};
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { if (value && !value.Hub) { value.Hub = hub; } current = value; }
  });
  current.Hub = hub;
})();
"""

# RequireJS turns the widget bundles' module names into URLs, and each bundle loads its fonts from the folder of
# its URL: resolve the names under _static/lopbook/ (where collect_assets puts the fonts), not under the page.
REQUIRE_CONFIG_JS = 'require.config({baseUrl: document.currentScript.src.replace(/[^/]*$/, "")});\n'


def node_modules() -> Path:
    """The ``node_modules`` folder that ``npm ci`` filled from ``package-lock.json``."""
    return ROOT / "node_modules"


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def collect_assets(out: Path) -> list[Path]:
    """Copy plotly.js, MathJax, RequireJS and the widget manager into ``out``; return what was copied."""
    import plotly

    copied = []
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not plotly_js.exists():
        raise ExtensionError(f"plotly.min.js not found in the plotly package at {plotly_js}; reinstall plotly")
    _copy(plotly_js, out / "plotly.min.js")
    copied.append(out / "plotly.min.js")
    for package, parts, dest in NPM_ASSETS:
        base = node_modules() / package
        if not (base / "package.json").exists():
            raise ExtensionError(f"npm package {package} is missing from {node_modules()}; run `npm ci` in "
                                 f"{ROOT} (scripts/setup.sh does) to install the book's pinned JavaScript")
        for part in parts:
            matches = sorted(base.glob(part))
            if not matches:
                raise ExtensionError(f"{package}: {part} not found; `npm ci` installs the pinned version")
            for src in matches:
                dst = out / dest / (src.relative_to(base / Path(parts[0]).parts[0]) if dest == "mathjax"
                                    else src.name)
                _copy(src, dst)
                copied.append(dst)
    (out / "mathjax-hub.js").write_text(MATHJAX_HUB_JS)
    (out / "require-config.js").write_text(REQUIRE_CONFIG_JS)
    return copied


def _check_assets(app: Sphinx) -> None:
    """Fail at the start of a build, not at its end, when ``npm ci`` has not been run."""
    for package, _, _ in NPM_ASSETS:
        if not (node_modules() / package / "package.json").exists():
            raise ExtensionError(f"npm package {package} is missing from {node_modules()}; run `npm ci` in "
                                 f"{ROOT} (scripts/setup.sh does) to install the book's pinned JavaScript")


def _copy_assets(app: Sphinx, exception: Exception | None) -> None:
    """Copy the scripts into ``_static/lopbook`` (not through ``html_static_path``, whose copy skips every
    path that matches the book's ``exclude_patterns``)."""
    if exception is None and app.builder.format == "html":
        collect_assets(Path(app.outdir) / "_static" / STATIC)


def _per_page_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """plotly.js on pages that draw a figure; the MathJax 2 entry point on pages with widgets."""
    body = context.get("body", "")
    if "plotly-graph-div" in body:
        app.add_js_file(f"{STATIC}/plotly.min.js", priority=200)
    if "application/vnd.jupyter.widget-view+json" in body or "jupyter-widgets" in body:
        app.add_js_file(f"{STATIC}/mathjax-hub.js", priority=190)


def _launch_buttons_need_a_url(app: Sphinx, config) -> None:
    """Without ``repository.url`` there is nothing for Colab or Binder to open: leave their buttons out
    (sphinx-book-theme would otherwise fail on the empty URL). The notebook download does not need it."""
    options = config.html_theme_options
    if not str(options.get("repository_url") or "").strip():
        launch = dict(options.get("launch_buttons") or {})
        for key in ("binderhub_url", "jupyterhub_url", "colab_url", "deepnote_url", "jupyterlite_url"):
            launch.pop(key, None)
        options["launch_buttons"] = launch


def _notebook_download(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Offer the chapter's committed notebook in the download menu (set before the theme builds the menu)."""
    if pagename not in app.env.all_docs:
        return
    notebook = Path(app.env.doc2path(pagename)).with_suffix(".ipynb")
    if notebook.exists():
        context["ipynb_source"] = pagename + ".ipynb"
    else:
        context.pop("ipynb_source", None)


def _only_reader_notebooks(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """On a page without a reader notebook (the intro, the appendices), drop the launch buttons (Colab cannot
    open the page's .md) and the download of the build's executed copy, which the theme adds to every
    executed page."""
    if pagename not in app.env.all_docs or Path(app.env.doc2path(pagename)).with_suffix(".ipynb").exists():
        return
    buttons = []
    for button in context.get("header_buttons", []):
        if button.get("label") == "launch-buttons":
            continue
        if button.get("label") == "download-buttons":
            button = {**button, "buttons": [b for b in button.get("buttons", [])
                                            if b.get("label") != "download-notebook-button"]}
        buttons.append(button)
    context["header_buttons"] = buttons


def _copy_notebooks(app: Sphinx, exception: Exception | None) -> None:
    """Copy the notebooks last: the theme's launch buttons copy the executed notebook to the same place."""
    if exception is not None or app.builder.format != "html":
        return
    for pagename in sorted(app.env.found_docs):
        notebook = Path(app.env.doc2path(pagename)).with_suffix(".ipynb")
        if not notebook.exists():
            continue
        dst = Path(app.outdir) / "_sources" / Path(pagename).with_suffix(".ipynb")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, dst)


_THEBE_CONFIG = re.compile(r'<script type="text/x-thebe-config">.*?</script>', re.S)


def _scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Drop repeated <script> entries (sphinx-thebe registers its config script twice under jupyter-book 1.0.4,
    and the second ``const THEBE_JS_URL`` is a JavaScript error on every page), and, while Thebe is off, drop
    Thebe altogether: its loader and configuration name a CDN and are never used."""
    thebe = bool((app.config.html_theme_options.get("launch_buttons") or {}).get("thebe"))
    seen: set[tuple[str, str]] = set()
    unique = []
    for js in context.get("script_files", []):
        name = str(getattr(js, "filename", js) or "")
        body = str(getattr(js, "attributes", {}).get("body", ""))
        if not thebe and ("thebe" in name or "THEBE_JS_URL" in body):
            continue
        key = (name, repr(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique
    if not thebe:
        context["css_files"] = [css for css in context.get("css_files", [])
                                if "thebe" not in str(getattr(css, "filename", css))]
        context["body"] = _THEBE_CONFIG.sub("", context.get("body", ""))


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", _check_assets)
    app.connect("build-finished", _copy_assets)
    app.connect("html-page-context", _per_page_scripts, priority=400)
    app.connect("config-inited", _launch_buttons_need_a_url, priority=900)
    app.connect("html-page-context", _notebook_download, priority=500)  # before the theme's buttons (501)
    app.connect("html-page-context", _only_reader_notebooks, priority=600)  # after them
    app.connect("build-finished", _copy_notebooks)
    app.connect("html-page-context", _scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
