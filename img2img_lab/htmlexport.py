"""An executed notebook as one HTML page, its widgets (the explorer) rendered from their saved state.

nbconvert's `HTMLExporter` writes the widget state saved in the notebook's metadata into the page,
and the page loads `@jupyter-widgets/html-manager` (the "embed" bundle) and `requirejs` to render
it, from a CDN by default. `export_html` (``offline=True``, the default) instead copies local
copies of both into ``<page stem>_files/`` beside the page, links them relatively, and leaves out
the other scripts nbconvert would fetch (MathJax, mermaid; formulas then show as their TeX text),
so the page renders from disk with no network at all. ``offline=False`` gives nbconvert's
CDN-linked page.

The local copies come from the npm registry, once, checked against their pinned sha512
(`fetch_widget_js`; ``python -m img2img_lab.htmlexport --fetch [DIR]``), into
``$IMG2IMG_LAB_HOME/widget-js`` (default ``~/.cache/img2img_lab/widget-js``). The set-up scripts
fetch them; `export_html` fetches them itself the first time if they are missing.

The widget state is only in the notebook if it was saved when the notebook ran: nbclient's
``NotebookClient(..., store_widget_state=True)`` (papermill and nbconvert's ``--execute`` do it),
or "Save widget state automatically" in JupyterLab.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from .errors import ValidationError

HTML_MANAGER_VERSION = "1.0.15"  # @jupyter-widgets/html-manager for ipywidgets 8
REQUIREJS_VERSION = "2.3.8"
EMBED_JS = "embed-amd.js"  # html-manager's dist/ bundle with base, controls and output widgets
REQUIRE_JS = "require.js"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
OFFLINE_TEMPLATE = Path(__file__).resolve().parent / "assets" / "offline.html.j2"
NPM_REGISTRY = "https://registry.npmjs.org"
# npm package -> (tarball path in the registry, its sha512 integrity as the registry lists it)
WIDGET_JS_PACKAGES = {
    f"@jupyter-widgets/html-manager@{HTML_MANAGER_VERSION}": (
        f"@jupyter-widgets/html-manager/-/html-manager-{HTML_MANAGER_VERSION}.tgz",
        "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
    ),
    f"requirejs@{REQUIREJS_VERSION}": (
        f"requirejs/-/requirejs-{REQUIREJS_VERSION}.tgz",
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
    ),
}
_FONT_SUFFIXES = (".woff", ".woff2", ".ttf", ".eot", ".svg")
_REMOTE_PICTURE = re.compile(r"!\[([^\]]*)\]\(\s*https?://[^)\s]+(?:\s+\"[^\"]*\")?\s*\)")  # ![alt](http...)


def default_js_dir() -> Path:
    """Where `fetch_widget_js` puts the widget JavaScript by default."""
    home = os.environ.get("IMG2IMG_LAB_HOME") or str(Path.home() / ".cache" / "img2img_lab")
    return Path(home) / "widget-js"


def _versions_line() -> str:
    return " ".join(WIDGET_JS_PACKAGES)


def _download(url: str, integrity: str, timeout: float) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except OSError as exc:
        raise ValidationError(f"could not download {url}: {exc}") from None
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise ValidationError(f"{url} does not match its pinned {algorithm} integrity ({integrity}); got {algorithm}-{actual}")
    return data


def fetch_widget_js(dest=None, *, registry: str | None = None, timeout: float = 60.0) -> Path:
    """Download the widget JavaScript for offline pages from the npm registry, once.

    Fetches `@jupyter-widgets/html-manager` (its ``dist/embed-amd.js`` bundle and the font files
    beside it) and `requirejs` (``require.js``), checks each tarball against its pinned sha512,
    and writes them into ``dest`` atomically. Does nothing when ``dest`` already holds these versions.

    Args:
        dest: the folder to fill; default `default_js_dir()`.
        registry: the npm registry's URL; default ``$npm_config_registry`` or registry.npmjs.org.
        timeout: seconds per download.

    Returns:
        The folder.

    Raises:
        ValidationError: a download failed or did not match its pinned integrity.

    Example:
        >>> fetch_widget_js()            # python -m img2img_lab.htmlexport --fetch
        PosixPath('/home/me/.cache/img2img_lab/widget-js')
    """
    dest = Path(dest) if dest is not None else default_js_dir()
    stamp = dest / "VERSIONS"
    if stamp.is_file() and stamp.read_text().strip() == _versions_line() and _missing_js(dest) == []:
        return dest
    registry = (registry or os.environ.get("npm_config_registry") or NPM_REGISTRY).rstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for package, (path, integrity) in WIDGET_JS_PACKAGES.items():
            data = _download(f"{registry}/{path}", integrity, timeout)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                for member in tar.getmembers():
                    name = member.name.removeprefix("package/")
                    wanted = (
                        name == "require.js"
                        if package.startswith("requirejs@")
                        else name.startswith("dist/") and "/" not in name[5:]
                        and (name[5:] == EMBED_JS or name.endswith(_FONT_SUFFIXES) or name.endswith(".LICENSE.txt"))
                    )
                    if wanted and member.isfile():
                        (staging / Path(name).name).write_bytes(tar.extractfile(member).read())
        missing = _missing_js(staging)
        if missing:
            raise ValidationError(f"the npm tarballs {list(WIDGET_JS_PACKAGES)} did not hold {missing}")
        (staging / "VERSIONS").write_text(_versions_line() + "\n")
        staging.chmod(0o755)  # mkdtemp's 0700 would follow the copies beside every page
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _missing_js(js_dir: Path) -> list[str]:
    return [name for name in (EMBED_JS, REQUIRE_JS) if not (js_dir / name).is_file()]


def widget_js_dir(js_dir=None) -> Path:
    """A folder holding the widget JavaScript: ``js_dir`` as given, or the default one, fetched if missing.

    Raises:
        ValidationError: ``js_dir`` lacks the files, or the default folder could not be fetched
            (with the two ways out: fetch it where there is network, or pass ``offline=False``).
    """
    if js_dir is not None:
        js_dir = Path(js_dir)
        missing = _missing_js(js_dir)
        if missing:
            raise ValidationError(
                f"`js_dir` {str(js_dir)!r} lacks {missing}; fetch the widget JavaScript into it with "
                f"`python -m img2img_lab.htmlexport --fetch {js_dir}` (npm registry: {', '.join(WIDGET_JS_PACKAGES)})"
            )
        return js_dir
    try:
        return fetch_widget_js()
    except ValidationError as exc:
        raise ValidationError(
            f"an offline page needs the widget JavaScript in {default_js_dir()}, and fetching it failed ({exc}); "
            f"run `python -m img2img_lab.htmlexport --fetch` where the npm registry is reachable, pass "
            f"`js_dir=` a folder holding {EMBED_JS} and {REQUIRE_JS}, or `offline=False` for a page that "
            f"loads them from a CDN"
        ) from None


def export_html(notebook_path, html_path, *, offline: bool = True, js_dir=None) -> Path:
    """Write an executed notebook as an HTML page whose widgets render from their saved state.

    Args:
        notebook_path: an executed ``.ipynb`` (widget state saved in its metadata).
        html_path: the page to write; its folder is created.
        offline: (default) copy the widget JavaScript into ``<html stem>_files/`` beside the page,
            refer to it by a relative URL and load nothing else from the network (no MathJax or
            mermaid: formulas show as TeX), so the page with that folder works from disk with no
            network. ``False``: nbconvert's page, which loads its scripts from CDNs.
        js_dir: the folder holding ``embed-amd.js`` (with its font files) and ``require.js``;
            default `default_js_dir()`, fetched once if missing. Only used with ``offline=True``.

    Returns:
        The path of the page.

    Example:
        >>> export_html("runs/cat/report.ipynb", "runs/cat/report.html")   # works from disk
    """
    import nbformat
    from nbconvert import HTMLExporter

    # 1. validate
    notebook_path, html_path = Path(notebook_path), Path(html_path)
    if not notebook_path.is_file():
        raise ValidationError(f"`notebook_path` {str(notebook_path)!r} is not a file")
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise ValidationError(f"`html_path` must end in .html, got {str(html_path)!r}")
    if js_dir is not None and not offline:
        raise ValidationError("`js_dir` is only used with `offline=True`")
    nb = nbformat.read(notebook_path, as_version=4)

    # 2. local widget JavaScript beside the page, and no other network script
    html_path.parent.mkdir(parents=True, exist_ok=True)
    if offline:
        source = widget_js_dir(js_dir)
        exporter = HTMLExporter(template_name="lab", template_file=str(OFFLINE_TEMPLATE))
        assets = html_path.parent / f"{html_path.stem}_files"
        if assets.exists():
            shutil.rmtree(assets)
        shutil.copytree(source, assets, ignore=shutil.ignore_patterns("*.map", "*.tgz", "VERSIONS"))
        assets.chmod(0o755)  # served with the page, whatever the cache folder's mode
        exporter.widget_renderer_url = f"{assets.name}/{EMBED_JS}"
        exporter.require_js_url = f"{assets.name}/{REQUIRE_JS}"
    else:
        exporter = HTMLExporter(template_name="lab")

    # 3. export (offline: a markdown picture from the web, such as the "Open in Colab" badge, becomes
    #    its alt text, still a link where it was one, so the page asks the network for nothing)
    if offline:
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = _REMOTE_PICTURE.sub(lambda m: m.group(1) or "image", cell.source)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook_path.stem}})
    tmp = html_path.with_name(f".{html_path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html_path)
    return html_path


def has_widget_state(notebook_path) -> bool:
    """Whether a notebook carries saved widget state (so its widgets can render in HTML)."""
    import nbformat

    nb = nbformat.read(Path(notebook_path), as_version=4)
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE_MIME, {})
    return bool(state.get("state"))


if __name__ == "__main__":  # python -m img2img_lab.htmlexport --fetch [DIR]
    import argparse

    parser = argparse.ArgumentParser(description="Fetch the widget JavaScript for offline HTML pages (npm registry).")
    parser.add_argument("--fetch", nargs="?", const="", metavar="DIR", required=True,
                        help=f"folder to fill (default {default_js_dir()})")
    args = parser.parse_args()
    print(f"widget JavaScript in {fetch_widget_js(args.fetch or None)}")
