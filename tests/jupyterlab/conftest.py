"""A real JupyterLab for the notebook tier: one server per test session, headless Chromium.

The server runs on a loopback port with no token, temporary config/data/runtime dirs (set by
tests/conftest.py before anything else), `--LabApp.expose_app_in_browser` (so a test can ask
the page for its kernel's status), and a temporary root folder holding the notebooks the tests
open: copies of `notebooks/*.ipynb` with their tiny parameters injected the way papermill does
(never the committed files: JupyterLab saves outputs into what it opens).

Chromium, and skipping without it (failing in CI), as in tests/_browser.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _browser import CHROMIUM, chromium, free_port, local_page, stop_group, unavailable

ROOT = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1280, "height": 800}
SERVER_START_S = 180  # seconds; generous for a loaded machine (it takes a few)


class LabServer:
    """A running `jupyter lab` serving `root`; `url(path)` for its pages, `log()` for its output."""

    def __init__(self, root: Path, port: int, process: subprocess.Popen, log_path: Path):
        self.root, self.port, self.process, self.log_path = root, port, process, log_path

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def shutdown_kernels(self) -> None:
        """Stop every kernel the server runs (each notebook's, once its test is done)."""
        import json

        with urllib.request.urlopen(self.url("api/sessions"), timeout=10) as r:
            sessions = json.load(r)
        for session in sessions:
            request = urllib.request.Request(self.url(f"api/sessions/{session['id']}"), method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing: run scripts/install_browser.sh")  # before a server starts
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        unavailable("jupyterlab is not installed (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("lab_root")
    # user settings of a fresh JupyterLab, less the "Jupyter news?" toast that would cover the page
    settings = tmp_path_factory.mktemp("lab_settings")
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    port = free_port()
    log_path = root.parent / "jupyterlab.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True", "--allow-root",
         "--ServerApp.disable_check_xsrf=True", f"--LabApp.user_settings_dir={settings}",
         f"--LabApp.workspaces_dir={tmp_path_factory.mktemp('lab_workspaces')}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    server = LabServer(root, port, process, log_path)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert process.poll() is None, f"jupyter lab exited:\n{server.log()}"
            try:
                with urllib.request.urlopen(server.url("api/status"), timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"jupyter lab did not answer in {SERVER_START_S} s:\n{server.log()}"
            time.sleep(0.3)
        yield server
    finally:
        stop_group(process)  # the server and the kernels it started
        log.close()


@pytest.fixture(scope="module")  # closed before tests/test_browser.py starts its own Playwright
def lab_chromium():
    with chromium() as browser:
        yield browser


@pytest.fixture
def lab_page(lab_chromium, lab_server):
    """A fresh browser context at 1280x800 whose requests may only go to the local server."""
    with local_page(lab_chromium, VIEWPORT) as page:
        try:
            yield page
        finally:
            lab_server.shutdown_kernels()
