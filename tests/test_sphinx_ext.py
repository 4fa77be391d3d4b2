"""The book's Sphinx extension: offline assets and launch buttons that need a repository URL."""

from __future__ import annotations

from types import SimpleNamespace

from lopbook import sphinx_ext


def test_assets_are_copied_for_offline_reading(tmp_path):
    copied = {p.relative_to(tmp_path).as_posix() for p in sphinx_ext.collect_assets(tmp_path)}
    for name in ("plotly.min.js", "require.js", "embed-amd.js", "mathjax/tex-mml-chtml.js"):
        assert name in copied
    assert (tmp_path / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()  # MathJax loads its fonts
    fonts = sorted(p.name for p in (tmp_path / "@jupyter-widgets").glob("*.woff2"))
    assert fonts and fonts == sorted(p.name for p in (tmp_path / "@jupyter-widgets/html-manager/dist").glob("*.woff2"))
    assert "baseUrl" in (tmp_path / "require-config.js").read_text()


def _config(url: str) -> SimpleNamespace:
    return SimpleNamespace(html_theme_options={
        "repository_url": url,
        "launch_buttons": {"notebook_interface": "classic", "colab_url": "https://colab.research.google.com",
                           "binderhub_url": "https://mybinder.org"}})


def test_launch_buttons_only_with_a_repository_url():
    empty = _config("")
    sphinx_ext._launch_buttons_need_a_url(None, empty)
    assert empty.html_theme_options["launch_buttons"] == {"notebook_interface": "classic"}
    set_ = _config("https://github.com/o/r")
    sphinx_ext._launch_buttons_need_a_url(None, set_)
    assert set_.html_theme_options["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert set_.html_theme_options["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
