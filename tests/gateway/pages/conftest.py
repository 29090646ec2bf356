"""Browser tests of web pages: Debian's Chromium driven by the PyPI `playwright` package.

The browser is the system Chromium (`scripts/install_chromium.sh` installs Debian's `chromium`), launched
with `executable_path`; `playwright install` is never run and no browser is downloaded. Without a Chromium
the tests skip on a developer machine and FAIL under CI (env CI set, as `.ci/run` does).

Fixtures:
  chromium_path  (session)  the Chromium binary: $SWIFTPIPE_CHROMIUM, `chromium` or `chromium-browser`
  browser        (session)  a headless playwright Browser on it
  page_watch     (function) the PageWatch of `page`: what the page did wrong so far
  page           (function) a fresh context + page. At teardown the test FAILS when the page logged a
                            console error, threw an uncaught exception (`pageerror`), or tried to reach a
                            host other than loopback (such requests are aborted: pages must not use a CDN).
                            A test that provokes an error on purpose takes it with `page_watch.take()`.
  screenshot     (function) screenshot(page, name) -> Path of a PNG under the artifacts directory
                            ($SWIFTPIPE_TEST_ARTIFACTS, else <repo>/test-artifacts/), one folder per test
A test that fails leaves `<artifacts>/<test>/failure.png` behind.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import REPO, skip_or_fail

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route, WebSocket

INSTALL_HINT = "install it with `bash scripts/install_chromium.sh` (Debian's chromium package, as root) " \
               "or point SWIFTPIPE_CHROMIUM at a Chromium binary"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]
TIMEOUT_MS = 15_000  # default for every playwright call in a test (its own default is 30 s)


def find_chromium() -> str | None:
    """$SWIFTPIPE_CHROMIUM when set (None when it is not an executable file), else chromium / chromium-browser."""
    env = os.environ.get("SWIFTPIPE_CHROMIUM")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def artifacts_dir() -> Path:
    return Path(os.environ.get("SWIFTPIPE_TEST_ARTIFACTS") or REPO / "test-artifacts")


def is_loopback_url(url: str) -> bool:
    """True for URLs that stay on this machine: loopback hosts, and non-network schemes (data:, blob:, ...)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class PageWatch:
    """Collects what pages of a browser context did wrong: console errors, uncaught exceptions, and
    attempts to reach a non-loopback host (aborted by its route)."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    offsite_requests: list[str] = field(default_factory=list)

    def attach(self, context: BrowserContext) -> None:
        """Watch `context` and every page opened in it afterwards (call before context.new_page())."""
        context.route("**/*", self._route)
        context.on("page", self._watch_page)

    def _watch_page(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", self._on_pageerror)
        page.on("websocket", self._on_websocket)

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            loc = msg.location or {}
            where = f" ({loc.get('url')}:{loc.get('lineNumber')})" if loc.get("url") else ""
            self.console_errors.append(f"{msg.text}{where}")

    def _on_pageerror(self, error: Any) -> None:
        self.page_errors.append(f"{getattr(error, 'name', '') or 'Error'}: {getattr(error, 'message', error)}")

    def _on_websocket(self, ws: WebSocket) -> None:
        if not is_loopback_url(ws.url):
            self.offsite_requests.append(f"websocket {ws.url}")

    def _route(self, route: Route) -> None:
        request = route.request
        if is_loopback_url(request.url):
            route.continue_()
        else:
            self.offsite_requests.append(f"{request.method} {request.url}")
            route.abort("blockedbyclient")

    def problems(self) -> list[str]:
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"uncaught exception: {m}" for m in self.page_errors]
                + [f"request to a non-loopback host (blocked; pages must not use a CDN): {m}"
                   for m in self.offsite_requests])

    def take(self) -> list[str]:
        """The problems so far, forgotten afterwards (for tests that provoke an error on purpose)."""
        found = self.problems()
        self.console_errors.clear()
        self.page_errors.clear()
        self.offsite_requests.clear()
        return found


def new_watched_page(browser: Browser, watch: PageWatch | None = None) -> tuple[BrowserContext, Page, PageWatch]:
    """A fresh context and page, watched by `watch` (a new PageWatch by default): what `page` uses."""
    watch = watch if watch is not None else PageWatch()
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    watch.attach(context)
    return context, context.new_page(), watch


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        env = os.environ.get("SWIFTPIPE_CHROMIUM")
        what = f"SWIFTPIPE_CHROMIUM={env} is not an executable file" if env else \
            "no Chromium found (chromium, chromium-browser on PATH, or $SWIFTPIPE_CHROMIUM)"
        skip_or_fail(f"{what}: {INSTALL_HINT}")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Browser]:
    """Per module: Playwright's sync API keeps an event loop running in this thread while it is
    started, and later tests that call asyncio.run() must not find it there."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the `playwright` package is missing: pip install -e '.[test]' (never `playwright install`)")
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=chromium_path, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


@pytest.fixture
def page_watch() -> PageWatch:
    return PageWatch()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[..., Path]:
    """screenshot(page, name, full_page=True) -> <artifacts>/<test>/<name>.png"""
    def take(page: Page, name: str, *, full_page: bool = True) -> Path:
        folder = artifacts_dir() / safe_name(request.node.name)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{safe_name(name.removesuffix('.png'))}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return take


@pytest.fixture
def page(browser: Browser, page_watch: PageWatch, screenshot: Callable[..., Path],
         request: pytest.FixtureRequest) -> Iterator[Page]:
    context, page, _ = new_watched_page(browser, page_watch)
    try:
        yield page
        report = request.node.stash.get(_CALL_REPORT, None)
        if report is not None and report.failed and not page.is_closed():
            try:
                screenshot(page, "failure")
            except Exception:  # the screenshot is a courtesy; the test's own failure is what counts
                pass
    finally:
        context.close()  # also delivers events still in flight to page_watch
    problems = page_watch.problems()
    if problems:
        pytest.fail("the page misbehaved:\n  " + "\n  ".join(problems), pytrace=False)
