"""The explorer in a real browser: live in Voila, and static in an exported HTML page, offline.

Headless Chromium from Debian (``/usr/bin/chromium``, never ``playwright install``), driven by
Playwright's Python package; every request to a host other than 127.0.0.1/localhost is aborted.
Skipped when Chromium is missing, unless ``IMG2IMG_LAB_REQUIRE_BROWSER=1`` (CI), which fails instead.
The fixture notebook ``notebooks/explore_tiny.ipynb`` runs a tiny/sd15 sweep (strength x
guidance_scale x seed, 64 px, 2 steps) with a prompt holding ``<script>`` and ``<img onerror>``.
"""

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _browser import chromium, free_port, local_page, stop_group, unavailable

pytestmark = pytest.mark.browser

NOTEBOOK = Path(__file__).parent / "notebooks" / "explore_tiny.ipynb"
ROOT = Path(__file__).resolve().parents[1]
XSS_TEXT = "<script>window.__xss=1</script>"
PAGE_TIMEOUT_MS = 300_000  # generous for a loaded machine; Voila runs the notebook (torch import, tiny sweep) before the widgets show

# Pixels of every `img` under a selector, decoded by the browser (works for blob: and data: URLs).
READ_PIXELS = """(els) => els.map((img) => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return {w: canvas.width, h: canvas.height,
            data: Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data)};
})"""
IMAGES_LOADED = """(sel) => {
    const imgs = Array.from(document.querySelectorAll(sel));
    return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    with local_page(browser, {"width": 1400, "height": 1000}) as page:
        yield page


@pytest.fixture(scope="session")
def widget_js():
    """The widget JavaScript from the npm registry (htmlexport.fetch_widget_js), cached across sessions."""
    from img2img_lab.errors import ValidationError
    from img2img_lab.htmlexport import fetch_widget_js

    try:
        return fetch_widget_js()
    except ValidationError as exc:
        unavailable(f"no widget JavaScript: {exc}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding the fixture notebook; its sweep is computed once and reused (content keys)."""
    folder = tmp_path_factory.mktemp("explore_nb")
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    return folder


def _expected(sweep_dir, **params) -> np.ndarray:
    from img2img_lab import load_sweep

    result = load_sweep(sweep_dir)
    df = result.df
    for column, value in params.items():
        df = df[df[column] == value]
    assert len(df) == 1, params
    return np.asarray(result.image(df.iloc[0]))


def _rgb(decoded) -> np.ndarray:
    array = np.array(decoded["data"], dtype=np.uint8).reshape(decoded["h"], decoded["w"], 4)
    assert (array[..., 3] == 255).all()
    return array[..., :3]


def _cell_pixels(page) -> list:
    return [_rgb(d) for d in page.eval_on_selector_all("img.img2img-lab-cell", READ_PIXELS)]


def _grid_expected(sweep_dir, seed) -> list:
    # x = strength across, y = guidance_scale down, row by row
    return [_expected(sweep_dir, strength=s, guidance_scale=g, seed=seed) for g in (1.0, 5.0) for s in (0.5, 1.0)]


def _wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and (x == y).all() for x, y in zip(a, b))


def test_voila_live_explorer_changes_cells_and_never_runs_prompt_markup(page, workdir):
    port = free_port()
    log = open(workdir / "voila.log", "wb")
    voila = subprocess.Popen(
        [sys.executable, "-m", "voila", NOTEBOOK.name, "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", f"--Voila.root_dir={workdir}", "--Voila.port_retries=0"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        # 1. ready: a static file answers (asking for `/` would start a kernel of its own)
        def ready():
            assert voila.poll() is None, (workdir / "voila.log").read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/static/voila.js", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait_for(ready, timeout=120, what="Voila to listen")
        page.goto(f"http://127.0.0.1:{port}/", timeout=PAGE_TIMEOUT_MS, wait_until="commit")
        page.wait_for_function(IMAGES_LOADED, arg="img.img2img-lab-cell", timeout=PAGE_TIMEOUT_MS, polling=250)
        sweep_dir = workdir / "sweep"

        # 2. the grid shows the right cells: seed 0 first
        _wait_for(lambda: _same(_cell_pixels(page), _grid_expected(sweep_dir, 0)), timeout=60, what="seed 0 cells")

        # 3. move the seed slider one step: every cell changes to its seed-1 image
        handle = page.locator(".widget-hslider .noUi-handle").first
        handle.focus()
        handle.press("ArrowRight")
        _wait_for(lambda: _same(_cell_pixels(page), _grid_expected(sweep_dir, 1)), timeout=60, what="seed 1 cells")

        # 4. selecting a cell shows its full image
        page.locator("button.img2img-lab-select").nth(3).click()  # guidance 5.0, strength 1.0
        expected = _expected(sweep_dir, strength=1.0, guidance_scale=5.0, seed=1)
        _wait_for(
            lambda: _same([_rgb(d) for d in page.eval_on_selector_all("img.img2img-lab-detail", READ_PIXELS)], [expected]),
            timeout=60, what="the detail image",
        )

        # 5. the prompt's markup is text on the page, and none of it ran
        params = page.locator(".img2img-lab-params").first
        assert XSS_TEXT in params.inner_text()
        assert "onerror='window.__xss=2'" in params.inner_text()
        assert page.evaluate("window.__xss") is None
        assert not page.errors, page.errors
    finally:
        stop_group(voila, timeout=15)  # Voila and the kernel it started
        log.close()


def test_static_html_export_renders_widgets_offline(page, workdir, widget_js):
    import nbformat
    from nbclient import NotebookClient

    from img2img_lab.htmlexport import export_html, has_widget_state

    # 1. execute, saving the widget state into the notebook
    nb = nbformat.read(workdir / NOTEBOOK.name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    executed = workdir / "executed.ipynb"
    nbformat.write(nb, executed)
    assert has_widget_state(executed)

    # 2. export (offline is the default: the widget JavaScript beside the page), open it from disk
    out = workdir / "html" / "explore.html"
    export_html(executed, out, js_dir=widget_js)
    assert (out.parent / "explore_files" / "embed-amd.js").exists()
    assert "explore_files/embed-amd.js" in out.read_text()
    page.goto(out.as_uri(), timeout=60_000)
    page.wait_for_function(IMAGES_LOADED, arg="img.img2img-lab-cell", timeout=60_000, polling=250)

    # 3. the explorer rendered: its cells (the right pixels), axis dropdown, prompt as text
    assert _same(_cell_pixels(page), _grid_expected(workdir / "sweep", 0))
    options = page.locator(".widget-dropdown select").first.locator("option").all_inner_texts()
    assert "strength" in options
    assert XSS_TEXT in page.locator(".img2img-lab-params").first.inner_text()
    assert page.evaluate("window.__xss") is None
    # the widgets in JupyterLab's UI font, not the browser's default serif
    font = page.eval_on_selector(".img2img-lab-params", "(e) => getComputedStyle(e).fontFamily")
    assert font.split(",")[0].strip() == "system-ui", font
    # 4. nothing was even asked of the network (no widget manager, require.js, MathJax or fonts)
    assert page.blocked == [], page.blocked
    assert not page.errors, page.errors
