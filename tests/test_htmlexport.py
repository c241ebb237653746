"""export_html without a browser: local widget JavaScript copied beside the page, clear errors.

The page rendering its widgets offline is tested in Chromium in tests/test_browser.py.
"""

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from img2img_lab.errors import ValidationError
from img2img_lab.htmlexport import WIDGET_STATE_MIME, export_html, has_widget_state


@pytest.fixture
def notebook(tmp_path):
    nb = new_notebook(cells=[new_code_cell("1 + 1")])
    nb.metadata["widgets"] = {WIDGET_STATE_MIME: {"version_major": 2, "version_minor": 0, "state": {"m": {}}}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_offline_copies_js_and_links_it_relatively(tmp_path, notebook):
    js = tmp_path / "js"
    js.mkdir()
    for name in ("embed-amd.js", "require.js", "font.woff2", "embed-amd.js.map"):
        (js / name).write_text("//")
    out = export_html(notebook, tmp_path / "out" / "page.html", offline=True, js_dir=js)
    text = out.read_text()
    assert 'src="page_files/require.js"' in text and "'page_files/embed-amd.js'" in text
    assert "@jupyter-widgets/html-manager@" not in text and "require.min.js" not in text  # no widget CDN
    copied = sorted(p.name for p in (out.parent / "page_files").iterdir())
    assert copied == ["embed-amd.js", "font.woff2", "require.js"]
    assert has_widget_state(notebook)


def test_online_default_and_errors(tmp_path, notebook):
    text = export_html(notebook, tmp_path / "page.html").read_text()
    assert "@jupyter-widgets/html-manager@" in text  # nbconvert's CDN
    with pytest.raises(ValidationError, match="fetch_widget_js.sh"):
        export_html(notebook, tmp_path / "p2.html", offline=True, js_dir=tmp_path / "nothing")
    with pytest.raises(ValidationError, match="`html_path`"):
        export_html(notebook, tmp_path / "p.pdf")
    with pytest.raises(ValidationError, match="`notebook_path`"):
        export_html(tmp_path / "missing.ipynb", tmp_path / "p.html")
