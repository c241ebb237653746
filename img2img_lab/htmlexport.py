"""An executed notebook as one HTML page, its widgets (the explorer) rendered from their saved state.

nbconvert's `HTMLExporter` writes the widget state saved in the notebook's metadata into the page,
and the page loads `@jupyter-widgets/html-manager` (the "embed" bundle) and `requirejs` to render
it, from a CDN by default. `export_html(..., offline=True)` copies local copies of both next to the
page and points the page at them, so it renders from disk without any network. (MathJax and
mermaid stay on nbconvert's CDN: offline, formulas show as TeX; widgets are unaffected.)

The local copies come from the npm registry, once, with ``scripts/fetch_widget_js.sh`` (into
``$IMG2IMG_LAB_HOME/widget-js``, default ``~/.cache/img2img_lab/widget-js``).

The widget state is only in the notebook if it was saved when the notebook ran: nbclient's
``NotebookClient(..., store_widget_state=True)`` (papermill and nbconvert's ``--execute`` do it),
or "Save widget state automatically" in JupyterLab.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import ValidationError

HTML_MANAGER_VERSION = "1.0.15"  # @jupyter-widgets/html-manager for ipywidgets 8
REQUIREJS_VERSION = "2.3.8"
EMBED_JS = "embed-amd.js"  # html-manager's dist/ bundle with base, controls and output widgets
REQUIRE_JS = "require.js"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"


def default_js_dir() -> Path:
    """Where ``scripts/fetch_widget_js.sh`` puts the widget JavaScript by default."""
    home = os.environ.get("IMG2IMG_LAB_HOME") or str(Path.home() / ".cache" / "img2img_lab")
    return Path(home) / "widget-js"


def _check_js_dir(js_dir: Path) -> Path:
    missing = [name for name in (EMBED_JS, REQUIRE_JS) if not (js_dir / name).is_file()]
    if missing:
        raise ValidationError(
            f"`js_dir` {str(js_dir)!r} lacks {missing}; fetch the widget JavaScript first with "
            f"`bash scripts/fetch_widget_js.sh {js_dir}` (npm registry: @jupyter-widgets/html-manager@"
            f"{HTML_MANAGER_VERSION}, requirejs@{REQUIREJS_VERSION})"
        )
    return js_dir


def export_html(notebook_path, html_path, *, offline: bool = False, js_dir=None) -> Path:
    """Write an executed notebook as an HTML page whose widgets render from their saved state.

    Args:
        notebook_path: an executed ``.ipynb`` (widget state saved in its metadata).
        html_path: the page to write; its folder is created.
        offline: copy the widget JavaScript into ``<html stem>_files/`` beside the page and refer
            to it by a relative URL, so the page (with that folder) works from disk without network.
            Otherwise the page loads it from nbconvert's default CDN.
        js_dir: the folder holding ``embed-amd.js`` (with its font files) and ``require.js``;
            default `default_js_dir()`. Only used with ``offline=True``.

    Returns:
        The path of the page.

    Example:
        >>> export_html("runs/cat/report.ipynb", "runs/cat/report.html", offline=True)
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

    # 2. local widget JavaScript beside the page
    exporter = HTMLExporter(template_name="lab")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    if offline:
        source = _check_js_dir(Path(js_dir) if js_dir is not None else default_js_dir())
        assets = html_path.parent / f"{html_path.stem}_files"
        if assets.exists():
            shutil.rmtree(assets)
        shutil.copytree(source, assets, ignore=shutil.ignore_patterns("*.map", "*.tgz"))
        exporter.widget_renderer_url = f"{assets.name}/{EMBED_JS}"
        exporter.require_js_url = f"{assets.name}/{REQUIRE_JS}"

    # 3. export
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
