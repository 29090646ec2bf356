"""The browser harness itself (tests/pages/conftest.py): Chromium starts, pages work, problems are caught."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.gateway.pages.conftest import PageWatch, is_loopback_url, new_watched_page

FORM_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>harness</title><link rel="icon" href="data:,"></head>
<body>
  <input id="name" placeholder="name">
  <button id="greet" type="button">Greet</button>
  <p id="out">nobody yet</p>
  <script>
    document.getElementById("greet").addEventListener("click", () => {
      document.getElementById("out").textContent = "Hello, " + document.getElementById("name").value + "!";
    });
  </script>
</body></html>
"""

BAD_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>bad</title><link rel="icon" href="data:,"></head>
<body>
  <p id="ready">loaded</p>
  <script>
    console.error("boom from the page");
    setTimeout(() => { throw new Error("kaboom"); }, 0);
  </script>
</body></html>
"""

CDN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>cdn</title><link rel="icon" href="data:,">
<script src="https://cdn.example.com/lib.js"></script></head>
<body><p id="ready">loaded</p></body></html>
"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The pages above, served by http.server on 127.0.0.1 (a free port); yields the base URL."""
    root = tmp_path_factory.mktemp("site")
    for name, text in {"form.html": FORM_PAGE, "bad.html": BAD_PAGE, "cdn.html": CDN_PAGE}.items():
        (root / name).write_text(text, encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_fill_click_read_and_screenshot(page, site, screenshot) -> None:
    page.goto(f"{site}/form.html")
    page.fill("#name", "Ada")
    page.click("#greet")
    page.wait_for_function("document.getElementById('out').textContent !== 'nobody yet'")
    assert page.text_content("#out") == "Hello, Ada!"
    path = screenshot(page, "greeted")
    assert path.is_file() and path.suffix == ".png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_watch_collects_console_errors_and_uncaught_exceptions(browser, site) -> None:
    context, page, watch = new_watched_page(browser)
    try:
        page.goto(f"{site}/bad.html")
        page.wait_for_selector("#ready")
        page.wait_for_timeout(100)  # the exception is thrown from a timer
    finally:
        context.close()
    problems = watch.problems()
    assert any("console error: boom from the page" in p for p in problems), problems
    assert any("uncaught exception" in p and "kaboom" in p for p in problems), problems
    assert watch.take() == problems and watch.problems() == []


def test_watch_blocks_and_reports_non_loopback_requests(browser, site) -> None:
    context, page, watch = new_watched_page(browser)
    try:
        page.goto(f"{site}/cdn.html")
        page.wait_for_selector("#ready")
    finally:
        context.close()
    assert watch.offsite_requests == ["GET https://cdn.example.com/lib.js"]
    assert any("non-loopback host" in p and "cdn.example.com" in p for p in watch.problems())


def test_page_fixture_lets_a_test_take_expected_errors(page, page_watch: PageWatch, site) -> None:
    """A test that provokes errors on purpose takes them; the fixture's teardown then has nothing to fail on."""
    page.goto(f"{site}/bad.html")
    page.wait_for_function("1")
    page.wait_for_timeout(100)
    taken = page_watch.take()
    assert any("boom from the page" in p for p in taken), taken


@pytest.mark.parametrize(("url", "local"), [
    ("http://127.0.0.1:8000/x", True), ("http://localhost:8000/", True), ("http://[::1]:80/", True),
    ("data:text/plain,hi", True), ("https://cdn.jsdelivr.net/npm/x.js", False), ("http://10.0.0.1/", False),
    ("wss://example.com/socket", False),
])
def test_is_loopback_url(url: str, local: bool) -> None:
    assert is_loopback_url(url) is local


def test_screenshot_goes_to_the_artifacts_directory(monkeypatch, tmp_path: Path, page, site, screenshot) -> None:
    monkeypatch.setenv("SWIFTPIPE_TEST_ARTIFACTS", str(tmp_path / "artifacts"))
    page.goto(f"{site}/form.html")
    path = screenshot(page, "shot.png")
    assert path == tmp_path / "artifacts" / "test_screenshot_goes_to_the_artifacts_directory" / "shot.png"
    assert path.read_bytes()[:4] == b"\x89PNG"
