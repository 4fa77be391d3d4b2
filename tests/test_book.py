"""Build the book from cached results and read every page in headless Chromium, on a desktop and a phone.

A page fails on: any request that leaves the local server (the book must work offline), any console error,
math that MathJax did not render, a plotly figure that did not draw or whose plot area is narrower than 250 px
on a 390 px phone, a legend over the plot, horizontal overflow, and (on pages with live panels) widgets that
did not render. Every dropdown and slider step of every figure is exercised, since their errors only show
on use.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_chapters import ROOT, book_pages

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENS = {"desktop": (1400, 900), "phone": (390, 844)}
MIN_PLOT_WIDTH = 250  # px of plot area on a 390 px phone


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("book")
    env = {**os.environ, "LOPBOOK_MODE": "cached", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", "-W", "-n", "--keep-going", str(ROOT), "--path-output", str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, f"book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    html = out / "_build" / "html"
    assert (html / "index.html").exists()
    return html


def test_every_toc_page_is_built_with_its_notebook(built_book: Path):
    for page in book_pages():
        rel = page.relative_to(ROOT).with_suffix(".html")
        assert (built_book / rel).exists(), f"{rel} was not built"
        html = (built_book / rel).read_text()
        notebook = page.with_suffix(".ipynb")
        if notebook.exists():  # the download menu offers the reader's notebook, byte for byte
            served = built_book / "_sources" / page.relative_to(ROOT).with_suffix(".ipynb")
            assert served.read_bytes() == notebook.read_bytes(), f"{served} is not {notebook.name}"
            assert "download-notebook-button" in html and ".ipynb" in html
        else:  # no reader notebook: no download of the build's executed copy, no launch button to a .md
            assert "download-notebook-button" not in html and "launch-buttons" not in html
        # plotly.js (4.8 MB) only where a figure is drawn
        assert ("plotly.min.js" in html) == ("plotly-graph-div" in html), f"{rel}: plotly.js on a page without figures"
    static = built_book / "_static" / "lopbook"
    for asset in ("plotly.min.js", "require.js", "embed-amd.js", "mathjax/tex-mml-chtml.js", "mathjax-hub.js"):
        assert (static / asset).exists(), f"{asset} is not served by the book"


def test_no_page_names_a_cdn(built_book: Path):
    for page in built_book.rglob("*.html"):
        html = page.read_text()
        for cdn in ("cdn.jsdelivr.net", "cdnjs.cloudflare.com", "unpkg.com", "cdn.plot.ly"):
            assert cdn not in html, f"{page.relative_to(built_book)} loads from {cdn}"


@pytest.fixture(scope="session")
def server(built_book: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="session")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("Debian's chromium and chromium-driver are needed for the browser tests "
                    "(apt-get install -y chromium chromium-driver); the README's test command installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


# In the page: wait for MathJax and plotly, then use every dropdown button and slider step of every figure.
EXERCISE_FIGURES = """
const done = arguments[arguments.length - 1];
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  for (const gd of divs) {
    const layout = gd.layout || {};
    for (const menu of layout.updatemenus || []) {
      for (const b of menu.buttons || []) { await Plotly[b.method](gd, ...(b.args || [])); }
      if ((menu.buttons || []).length) { const b = menu.buttons[0]; await Plotly[b.method](gd, ...(b.args || [])); }
    }
    for (const slider of layout.sliders || []) {
      for (const s of slider.steps || []) { await Plotly[s.method](gd, ...(s.args || [])); }
    }
  }
  done('ok');
})().catch((e) => done('error: ' + e));
"""

MEASURE = """
const rect = (el) => el ? el.getBoundingClientRect() : null;
const overlap = (a, b) => a && b && a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1
  && b.top < a.bottom - 1;
const figs = [...document.querySelectorAll('.plotly-graph-div')].map((gd) => {
  const area = rect(gd.querySelector('.nsewdrag'));
  const legend = rect(gd.querySelector('g.legend'));
  const xtitle = rect(gd.querySelector('.g-xtitle'));
  return {drawn: !!(gd._fullLayout && gd.querySelector('.main-svg') &&
                    gd.querySelectorAll('g.trace, g.hm, image').length > 0),
          plotWidth: gd._fullLayout ? gd._fullLayout._size.w : 0,
          legendOverPlot: overlap(legend, area) || overlap(legend, xtitle),
          figWidth: gd.getBoundingClientRect().width};
});
const maths = [...document.querySelectorAll('.math')];
return {
  ready: document.readyState, plotly: typeof window.Plotly, figs: figs,
  mathTotal: maths.length,
  mathRaw: maths.filter((m) => !m.querySelector('mjx-container')).map((m) => m.textContent.slice(0, 60)),
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  widgetViews: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
  widgetsRendered: document.querySelectorAll('.jupyter-widgets, .widget-button, .lm-Widget').length,
};
"""

PAGES = [p.relative_to(ROOT).with_suffix(".html").as_posix() for p in book_pages()]


@pytest.mark.book
@pytest.mark.parametrize("screen", list(SCREENS))
@pytest.mark.parametrize("page", PAGES)
def test_page_reads_offline_on_desktop_and_phone(page: str, screen: str, server: str, browser):
    width, height = SCREENS[screen]
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": screen == "phone"})
    browser.get_log("browser"), _requests(browser)  # drop what earlier pages left
    browser.get(f"{server}/{page}")
    deadline = time.time() + 30
    while time.time() < deadline:
        state = browser.execute_script(MEASURE)
        mathjax_done = state["mathTotal"] == 0 or not state["mathRaw"]
        widgets_done = state["widgetViews"] == 0 or state["widgetsRendered"] > 0
        if (state["ready"] == "complete" and all(f["drawn"] for f in state["figs"]) and mathjax_done
                and widgets_done):
            break
        time.sleep(0.25)
    assert state["ready"] == "complete"
    assert all(f["drawn"] for f in state["figs"]), f"{page}: a plotly figure did not draw"
    if state["figs"]:
        assert state["plotly"] == "object"
    assert not state["mathRaw"], f"{page}: math left as raw TeX: {state['mathRaw'][:3]}"
    if state["widgetViews"]:
        assert state["widgetsRendered"], f"{page}: the live panel's widgets did not render"
    assert browser.execute_async_script(EXERCISE_FIGURES) == "ok"
    state = browser.execute_script(MEASURE)
    for i, fig in enumerate(state["figs"]):
        if screen == "phone":
            assert fig["plotWidth"] >= MIN_PLOT_WIDTH, f"{page}: figure {i} plot area {fig['plotWidth']:.0f} px wide"
        assert not fig["legendOverPlot"], f"{page}: figure {i}'s legend covers the plot"
    assert state["overflow"] <= 0, f"{page}: {state['overflow']} px of horizontal overflow at {width} px"
    offsite = [u for u in _requests(browser) if not u.startswith((server, "data:", "blob:", "about:"))]
    assert not offsite, f"{page}: requests that leave the local server: {offsite[:5]}"
    errors = [e["message"] for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, f"{page}: console errors: {errors}"
