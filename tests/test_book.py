"""Build the book from cached results and open every page in headless Chromium.

Checks: the build is clean under ``-W -n``; every page loads without JavaScript errors; every plotly
figure actually draws (plotly.js is served by the book itself, so this works offline).
"""

from __future__ import annotations

import functools
import http.server
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


def test_every_toc_page_is_built(built_book: Path):
    for page in book_pages():
        rel = page.relative_to(ROOT).with_suffix(".html")
        assert (built_book / rel).exists(), f"{rel} was not built"
    assert (built_book / "_static" / "plotly.min.js").exists(), "plotly.js is not served by the book"


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
                 "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _js_errors(logs: list[dict]) -> list[str]:
    """SEVERE console entries, except failed loads of off-site resources (the test machine is offline)."""
    errors = []
    for entry in logs:
        if entry.get("level") != "SEVERE":
            continue
        msg = entry.get("message", "")
        failed_load = "Failed to load resource" in msg or "net::ERR_" in msg
        offsite = "127.0.0.1" not in msg.split(" ")[0]
        favicon = "/favicon.ico" in msg  # requested by the browser itself, not by the page
        if not (failed_load and (offsite or favicon)):
            errors.append(msg)
    return errors


PAGES = [p.relative_to(ROOT).with_suffix(".html").as_posix() for p in book_pages()]


@pytest.mark.book
@pytest.mark.parametrize("page", PAGES)
def test_page_loads_and_figures_draw(page: str, server: str, browser):
    browser.get(f"{server}/{page}")
    deadline = time.time() + 20
    while time.time() < deadline:
        state = browser.execute_script(
            "const d=[...document.querySelectorAll('.plotly-graph-div')];"
            "return {ready: document.readyState, n: d.length,"
            " drawn: d.filter(x => x._fullLayout && x.querySelector('.main-svg')"
            "  && x.querySelectorAll('g.trace, g.hm, image').length > 0).length,"
            " plotly: typeof window.Plotly};")
        if state["ready"] == "complete" and state["drawn"] == state["n"]:
            break
        time.sleep(0.25)
    assert state["ready"] == "complete"
    assert state["drawn"] == state["n"], f"{page}: only {state['drawn']} of {state['n']} plotly figures drew"
    if state["n"]:
        assert state["plotly"] == "object"
    errors = _js_errors(browser.get_log("browser"))
    assert not errors, f"{page}: JavaScript errors: {errors}"
