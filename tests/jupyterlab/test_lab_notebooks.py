"""Every notebook, opened and run in a real JupyterLab as a user would, checked from the page.

For each notebook of `notebooks/`: a temporary copy with its tiny parameters injected (as
papermill injects them) is opened at 1280x800 in headless Chromium, all cells run through the UI
(Run > Run All Cells), and once the kernel is idle the page must show: no error and nothing on
stderr (no warnings or noise); no figure as `<Figure size ...>` text; each figure an `<img>` at
least 200 px wide, a `lab.plot_*` cell exactly one; each explorer inside the notebook's width with
its grid and details visible, and for a 3x3 sweep inside the view's height too; clicking a cell
selects it, re-sorting the ranked list keeps it selected, and the snippet's text shows. A
screenshot per notebook is kept under the pytest temp dir; its path is printed, so a failing
test's output names it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.jupyterlab, pytest.mark.browser]

# Each notebook's tiny parameters: `model` alone makes every model, image, size and step count tiny.
TINY = {
    "01_quickstart": {"model": "tiny/sd15"},
    "02_parameters": {"model": "tiny/sd15"},
    "03_chaining": {"model": "tiny/sd15"},
    "04_control": {"model": "tiny/sd15"},
    # a guide spec (its image a URL: the tiny model runs on the offline sample, said in one line), 3x3
    "05_sweep_report": {"model": "tiny/sd15", "spec": "sweeps/strength.yaml", "strength": [0.4, 0.6, 0.8],
                        "guidance_scale": [1.0, 5.0, 9.0]},
    "06_modern_models": {"model": "tiny/sd15"},
}
# seconds; generous for a loaded machine (two suites at once): the waits end as soon as the page is ready
RUN_TIMEOUT_S = 300
START_TIMEOUT_S = 180
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
MIN_FIGURE_PX = 200

# The notebook's state, read from JupyterLab's own models (window.jupyterapp, exposed by the server).
STATE = """() => {
  const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!nb || !nb.content || !nb.sessionContext) return null;
  const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
  const cells = nb.content.widgets.filter((c) => c.model.type === 'code');
  return {
    kernel: kernel ? kernel.status : null,
    running: cells.filter((c) => c.promptNode && c.promptNode.textContent.includes('*')).length,
    unexecuted: cells.filter((c) => c.model.executionCount === null && c.model.sharedModel.source.trim()).length,
    cells: cells.length,
  };
}"""
# What each code cell shows: its source's last line, stderr/error texts, plain texts, images.
OUTPUTS = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  return nb.content.widgets.filter((c) => c.model.type === 'code').map((cell, index) => {
    const node = cell.node;
    const lines = cell.model.sharedModel.source.trim().split('\\n');
    return {
      index,
      last: lines[lines.length - 1],
      stderr: [...node.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
        .map((e) => e.innerText.slice(0, 600)),
      plain: [...node.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/plain"]')].map((e) => e.innerText.slice(0, 200)),
      images: node.querySelectorAll('.jp-RenderedImage img').length,
      explorers: node.querySelectorAll('.img2img-lab-explorer').length,
    };
  });
}"""
IMAGE_SIZES = """async () => {
  const out = [];
  for (const img of document.querySelectorAll('.jp-RenderedImage img')) {
    img.scrollIntoView({block: 'center'});
    await new Promise((r) => setTimeout(r, 50));
    const box = img.getBoundingClientRect();
    out.push({w: Math.round(box.width), h: Math.round(box.height), natural: img.naturalWidth, loaded: img.complete});
  }
  return out;
}"""
BOX = """(el) => { const b = el.getBoundingClientRect();
  return {x: Math.round(b.x), y: Math.round(b.y), w: Math.round(b.width), h: Math.round(b.height),
          right: Math.round(b.right), bottom: Math.round(b.bottom)}; }"""


def _prepared(lab_server, name: str) -> Path:
    """A copy of the notebook in the server's root with its tiny parameters injected (papermill's way)."""
    from papermill.parameterize import parameterize_notebook

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nb.metadata.setdefault("papermill", {})
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    nb = parameterize_notebook(nb, TINY[name])
    path = lab_server.root / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _wait(page, predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        page.wait_for_timeout(poll * 1000)


def _idle(page):
    """The kernel is idle and no cell is running, twice in a row (a queued cell starts in between)."""
    state = page.evaluate(STATE)
    if not state or state["kernel"] != "idle" or state["running"]:
        return None
    page.wait_for_timeout(500)
    again = page.evaluate(STATE)
    return again if again and again["kernel"] == "idle" and not again["running"] else None


def _run_all(page, lab_server, name: str) -> dict:
    # ?reset: a fresh workspace, not the tabs the earlier tests left open
    page.goto(lab_server.url(f"lab/tree/{name}.ipynb?reset"), wait_until="domcontentloaded", timeout=START_TIMEOUT_S * 1000)
    _wait(page, lambda: (page.evaluate(STATE) or {}).get("kernel") == "idle", START_TIMEOUT_S, "the kernel to start")
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    _wait(page, lambda: (page.evaluate(STATE) or {}).get("running"), 60, "Run All to start", poll=0.2)
    return _wait(page, lambda: _idle(page), RUN_TIMEOUT_S, f"{name} to finish")


def _check_explorer(page, explorer, *, fits_height: bool) -> None:
    explorer.evaluate("(e) => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    panel = page.locator(".jp-NotebookPanel:visible .jp-WindowedPanel-outer").first.evaluate(BOX)
    box = explorer.evaluate(BOX)
    # inside the notebook's width: no horizontal scrolling, grid and details side by side in view
    assert box["right"] <= panel["right"], f"explorer {box} is wider than the notebook {panel}"
    scroll = explorer.evaluate("(e) => e.closest('.jp-OutputArea-output').scrollWidth - e.closest('.jp-OutputArea-output').clientWidth")
    assert scroll <= 1, f"the explorer's output scrolls sideways by {scroll} px"
    if fits_height:
        assert box["h"] <= panel["h"], f"explorer is {box['h']} px tall, the view shows {panel['h']} px"
    details = explorer.locator(".img2img-lab-details").first.evaluate(BOX)
    assert details["w"] >= 250 and details["right"] <= panel["right"], details
    cells = explorer.locator("img.img2img-lab-cell")
    assert cells.count() >= 1 and cells.first.is_visible()
    assert explorer.locator(".img2img-lab-params").first.is_visible()

    # click a cell: it is selected and the details show it
    buttons = explorer.locator("button.img2img-lab-select")
    pick = 1 if buttons.count() > 1 else 0
    buttons.nth(pick).click()
    _wait(page, lambda: buttons.nth(pick).inner_text().strip() == "selected", 60, "the clicked cell to be selected")
    params = explorer.locator(".img2img-lab-params").first
    chosen = params.inner_text()

    # re-sort the ranked list (another column, then the other direction): the selection stays
    explorer.locator(".lm-TabBar-tab", has_text="ranked list").first.click()
    sort_by = explorer.locator(".widget-dropdown", has=page.locator("label", has_text="sort by")).locator("select")
    options = sort_by.locator("option").all_inner_texts()
    current = sort_by.evaluate("(s) => s.options[s.selectedIndex].text")
    sort_by.select_option(label=next(o for o in options if o != current))
    _wait(page, lambda: _idle(page), 60, "the kernel after re-sorting")
    explorer.locator("button", has_text="ascending").first.click()
    _wait(page, lambda: _idle(page), 60, "the kernel after reversing the order")
    page.wait_for_timeout(500)
    assert params.inner_text() == chosen, "re-sorting changed the selected image"
    explorer.locator(".lm-TabBar-tab", has_text="grid").first.click()
    assert buttons.nth(pick).inner_text().strip() == "selected", "re-sorting moved the selection in the grid"

    # the snippet that reproduces it
    explorer.locator(".lm-TabBar-tab", has_text="code").first.click()
    code = explorer.locator(".img2img-lab-code textarea").first
    _wait(page, lambda: code.is_visible(), 30, "the code tab")
    snippet = code.input_value()
    assert "lab.load_pipeline(" in snippet and "manual_seed(" in snippet, snippet
    explorer.locator(".lm-TabBar-tab", has_text="grid").first.click()
    page.wait_for_timeout(300)


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs_in_jupyterlab(lab_server, lab_page, name, tmp_path_factory):
    page = lab_page
    shots = tmp_path_factory.getbasetemp() / "jupyterlab_screenshots"
    shots.mkdir(exist_ok=True)
    shot = shots / f"{name}.png"
    print(f"screenshot: {shot}")
    _prepared(lab_server, name)
    try:
        state = _run_all(page, lab_server, name)
        outputs = page.evaluate(OUTPUTS)

        # 1. every cell ran, nothing on stderr (errors, warnings, noise), no figure as text
        noise = [(o["index"], text) for o in outputs for text in o["stderr"]]
        assert not noise, "stderr output in cells:\n" + "\n".join(f"[{i}] {t}" for i, t in noise)
        assert state["unexecuted"] == 0, f"{state['unexecuted']} of {state['cells']} code cells did not run"
        as_text = [(o["index"], t) for o in outputs for t in o["plain"] if t.startswith("<Figure size")]
        assert not as_text, f"figures shown as text: {as_text}"

        # 2. figures: one picture per lab.plot_* cell, each at least 200 px wide on the page
        for o in outputs:
            if o["last"].startswith("lab.plot_"):
                assert o["images"] == 1, f"cell {o['index']} ({o['last']!r}) shows {o['images']} images"
        sizes = page.evaluate(IMAGE_SIZES)
        assert sizes, "the notebook shows no figure"
        small = [s for s in sizes if not s["loaded"] or s["w"] < MIN_FIGURE_PX]
        assert not small, f"figures under {MIN_FIGURE_PX} px (or not loaded): {small}"

        # 3. explorers: in the notebook's width (a 3x3 one in the view's height), usable
        explorers = page.locator(".img2img-lab-explorer")
        for i in range(explorers.count()):
            explorer = explorers.nth(i)
            if i == 0:
                _check_explorer(page, explorer, fits_height=name == "05_sweep_report")
            else:
                explorer.evaluate("(e) => e.scrollIntoView({block: 'start'})")
                panel = page.locator(".jp-NotebookPanel:visible .jp-WindowedPanel-outer").first.evaluate(BOX)
                assert explorer.evaluate(BOX)["right"] <= panel["right"]
        if name in ("01_quickstart", "02_parameters", "05_sweep_report"):
            assert explorers.count() >= 1, f"{name} shows no explorer"
        assert not page.errors, page.errors
        # the one picture from the network is the "Open in Colab" badge (a markdown image)
        others = [u for u in page.blocked if u != COLAB_BADGE]
        assert not others, f"the page asked the network for {others}"
    finally:
        page.screenshot(path=str(shot))
        print(json.dumps({"screenshot": str(shot)}))


LARGE_SIZES = (512, 1024)


def test_explorer_of_a_3x3_sweep_of_large_images_fits_the_view(lab_server, lab_page, tmp_path_factory):
    """The guide's sizes: a 3x3 sweep of 512 px and one of 1024 px images, each explored in
    JupyterLab (one notebook, one kernel: an explorer per size, each checked on its own)."""
    from nbformat.v4 import new_code_cell, new_notebook

    page = lab_page
    shots = tmp_path_factory.getbasetemp() / "jupyterlab_screenshots"
    shots.mkdir(exist_ok=True)
    cells = [new_code_cell(f"import sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\nimport img2img_lab as lab\n"
                           "from _fake_sweep import make_fake_sweep")]
    for size in LARGE_SIZES:
        print(f"screenshot: {shots / f'explorer_{size}px.png'}")
        cells += [new_code_cell(f"res_{size} = make_fake_sweep('runs/fake_{size}', strength=[0.4, 0.6, 0.8], "
                                f"guidance_scale=[1.0, 5.0, 9.0], negative_prompt=[None], size={size}, error_cell=None)"),
                  new_code_cell(f"lab.explore(res_{size})")]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    name = "explore_large"
    nbformat.write(nb, lab_server.root / f"{name}.ipynb")
    checked = 0
    try:
        state = _run_all(page, lab_server, name)
        assert state["unexecuted"] == 0 and not [t for o in page.evaluate(OUTPUTS) for t in o["stderr"]]
        explorers = page.locator(".img2img-lab-explorer")
        assert explorers.count() == len(LARGE_SIZES)
        for i, size in enumerate(LARGE_SIZES):
            explorer = explorers.nth(i)
            _check_explorer(page, explorer, fits_height=True)
            shown = explorer.locator("img.img2img-lab-cell").first.evaluate(BOX)
            assert 64 <= shown["w"] <= 200, (size, shown)  # thumbnails at their set size, not the pictures' own
            detail = explorer.locator("img.img2img-lab-detail").first.evaluate(BOX)
            assert detail["w"] <= 400, (size, detail)
            explorer.evaluate("(e) => e.scrollIntoView({block: 'start'})")
            page.screenshot(path=str(shots / f"explorer_{size}px.png"))
            checked += 1
        assert not page.errors, page.errors
    finally:
        if checked < len(LARGE_SIZES):  # the view where a check failed
            page.screenshot(path=str(shots / f"explorer_{LARGE_SIZES[checked]}px.png"))
