"""export_html without a browser: offline by default (local widget JavaScript beside the page, no CDN
script), fetching that JavaScript from an npm registry with its integrity checked, clear errors.

The page rendering its widgets offline is tested in Chromium in tests/test_browser.py.
"""

import base64
import hashlib
import http.server
import io
import re
import tarfile
import threading
from types import SimpleNamespace

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from img2img_lab import htmlexport
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


def test_offline_is_the_default_and_loads_nothing_from_a_cdn(tmp_path, notebook):
    js = tmp_path / "js"
    js.mkdir()
    for name in ("embed-amd.js", "require.js"):
        (js / name).write_text("//")
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(new_markdown_cell("a formula $x^2$ and a diagram"))
    nb.cells.append(new_markdown_cell("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                                      "(https://colab.research.google.com/github/o/r/blob/main/nb.ipynb) and "
                                      "![a plot](http://example.com/p.png \"title\")"))
    nbformat.write(nb, notebook)
    text = export_html(notebook, tmp_path / "page.html", js_dir=js).read_text()
    external = sorted(set(re.findall(r"""src=["'](https?://[^"']+)""", text)))
    assert external == [], external  # nothing the browser would fetch
    assert "Open In Colab</a>" in text and "colab.research.google.com/github/o/r" in text  # a text link now
    assert "a plot" in text and "example.com/p.png" not in text
    assert "MathJax" not in text and "mermaid.esm" not in text and "cdnjs" not in text
    assert "'page_files/embed-amd.js'" in text


def test_cdn_page_when_asked_and_errors(tmp_path, notebook):
    text = export_html(notebook, tmp_path / "page.html", offline=False).read_text()
    assert "@jupyter-widgets/html-manager@" in text  # nbconvert's CDN
    with pytest.raises(ValidationError, match=r"`js_dir` .*nothing.*--fetch"):
        export_html(notebook, tmp_path / "p2.html", js_dir=tmp_path / "nothing")
    with pytest.raises(ValidationError, match="`js_dir` is only used with `offline=True`"):
        export_html(notebook, tmp_path / "p3.html", offline=False, js_dir=tmp_path)
    with pytest.raises(ValidationError, match="`html_path`"):
        export_html(notebook, tmp_path / "p.pdf")
    with pytest.raises(ValidationError, match="`notebook_path`"):
        export_html(tmp_path / "missing.ipynb", tmp_path / "p.html")


def _tarball(files: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A local npm registry serving two small tarballs laid out like the real packages."""
    manager = _tarball({"dist/embed-amd.js": b"/* embed */", "dist/abc.woff2": b"font", "dist/x.js.map": b"map",
                        "dist/lib/other.js": b"no", "package.json": b"{}"})
    require = _tarball({"require.js": b"/* require */", "bin/r.js": b"no"})
    served = {"/mgr.tgz": manager, "/req.tgz": require}
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = served.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    packages = {"@jupyter-widgets/html-manager@1.0.15": ("mgr.tgz", _integrity(manager)),
                "requirejs@2.3.8": ("req.tgz", _integrity(require))}
    monkeypatch.setattr(htmlexport, "WIDGET_JS_PACKAGES", packages)
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}", served=served, requests=requests,
                          packages=packages)
    server.shutdown()


def test_fetch_widget_js_checks_integrity_and_fetches_once(tmp_path, registry):
    dest = tmp_path / "widget-js"
    assert htmlexport.fetch_widget_js(dest, registry=registry.url) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["VERSIONS", "abc.woff2", "embed-amd.js", "require.js"]
    assert (dest / "embed-amd.js").read_bytes() == b"/* embed */"
    assert dest.stat().st_mode & 0o777 == 0o755  # readable by whoever is served the pages
    assert len(registry.requests) == 2
    htmlexport.fetch_widget_js(dest, registry=registry.url)  # already there: no request
    assert len(registry.requests) == 2
    # a tampered tarball is refused, and the folder already there is left as it was
    registry.served["/req.tgz"] = _tarball({"require.js": b"/* evil */"})
    other = tmp_path / "other"
    with pytest.raises(ValidationError, match=r"req\.tgz does not match its pinned sha512"):
        htmlexport.fetch_widget_js(other, registry=registry.url)
    assert not other.exists() and not list(tmp_path.glob(".other.*"))
    with pytest.raises(ValidationError, match="could not download"):
        htmlexport.fetch_widget_js(other, registry="http://127.0.0.1:9")


def test_default_js_dir_is_fetched_when_missing(tmp_path, registry, notebook, monkeypatch):
    monkeypatch.setenv("IMG2IMG_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("npm_config_registry", registry.url)
    out = export_html(notebook, tmp_path / "page.html")
    assert (tmp_path / "home" / "widget-js" / "embed-amd.js").is_file()
    assert (out.parent / "page_files" / "require.js").read_bytes() == b"/* require */"
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9")
    monkeypatch.setenv("IMG2IMG_LAB_HOME", str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match=r"needs the widget JavaScript.*`offline=False`"):
        export_html(notebook, tmp_path / "page2.html")
