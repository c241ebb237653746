"""Headless Chromium for the browser tests (tests/test_browser.py, tests/jupyterlab/): one way to
launch it, to keep a page's requests on this machine, and to stop a server's process group.

Chromium comes from Debian (`/usr/bin/chromium`, never `playwright install`). Without it (or
Playwright) the tests are skipped, except with `IMG2IMG_LAB_REQUIRE_BROWSER=1` (CI), where they fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
# --disable-background-networking and friends: no connections of Chromium's own on a closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def unavailable(reason: str):
    if os.environ.get("IMG2IMG_LAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (IMG2IMG_LAB_REQUIRE_BROWSER=1: browser tests must run)")
    pytest.skip(reason)


@contextmanager
def chromium():
    """A headless Chromium, closed on exit (one Playwright at a time per process)."""
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing: run scripts/install_browser.sh")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def local_page(browser, viewport: dict):
    """A page in a fresh context whose requests may only go to files and this machine; the others
    are aborted and listed in `page.blocked`, script errors in `page.errors`."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.blocked, page.errors = [], []

    def only_local(route):
        url = urlparse(route.request.url)
        if url.scheme in ("file", "data", "blob") or url.hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            page.blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server started with `start_new_session=True` and every kernel it started."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
