"""Stamp the guide's notebooks (notebooks/*.ipynb) after editing them: repository URL in, outputs out.

    python scripts/make_notebooks.py          # stamp every notebook in place
    python scripts/make_notebooks.py --check  # exit 1 if stamping would change a committed notebook

The notebooks themselves are the one source: edit them in JupyterLab (or any editor), then run
this script. It changes only what must not be edited by hand:

- the "Open in Colab" badge, the first line of the first cell, and the GitHub URL the first code
  cell installs from (`git+https://github.com/OWNER/NAME@main`): both from the `Repository`
  entry of pyproject.toml's `[project.urls]`, the one place the URL lives;
- what running a notebook leaves behind: outputs, execution counts, the cells' `execution`
  timings, the notebook's widget state and the kernel's `language_info` details (the name stays).

The rest of the notebooks' frame (one `parameters` cell and the `check_parameters` cell after it,
the kernelspec papermill needs, the shared install cell, ...) is checked by tests/test_notebooks.py.
Packaging ships this folder inside the wheel as `img2img_lab/notebooks/` (setup.py); nothing is
copied in the repository.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import nbformat

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "notebooks"
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# the install cell's fallback: `pip install "img2img_lab @ git+https://github.com/OWNER/NAME@main"`
INSTALL_URL = re.compile(r"git\+https://github\.com/[^\s\"'@]+@[\w.-]+")


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The `Repository` URL of pyproject.toml's [project.urls] (https://github.com/OWNER/NAME)."""
    urls = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("urls", {})
    url = urls.get("Repository", "")
    parts = urlparse(url)
    if parts.netloc != "github.com" or len(parts.path.strip("/").split("/")) != 2:
        raise SystemExit(f"pyproject.toml [project.urls] Repository must be https://github.com/OWNER/NAME, got {url!r}")
    return url.rstrip("/")


def badge(name: str, repository: str) -> str:
    """The "Open in Colab" badge of notebooks/<name>.ipynb on the repository's main branch."""
    github_path = urlparse(repository).path.strip("/")
    url = f"https://colab.research.google.com/github/{github_path}/blob/{BRANCH}/notebooks/{name}.ipynb"
    return f"[![Open In Colab]({BADGE_IMAGE})]({url})"


def stamp(nb: nbformat.NotebookNode, name: str, repository: str) -> nbformat.NotebookNode:
    """`nb` (notebooks/<name>.ipynb) with the repository's badge and install URL, and no outputs (in place)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not nb.cells or nb.cells[0].cell_type != "markdown" or not code:
        raise SystemExit(f"{name}.ipynb must start with a markdown cell (the badge and title) and have code cells")
    # 1. the badge: the first line of the first cell
    text = nb.cells[0].source
    if text.startswith("[![Open In Colab]"):
        text = text.partition("\n")[2].lstrip("\n")
    nb.cells[0].source = badge(name, repository) + (f"\n\n{text}" if text else "")
    # 2. the install cell's GitHub fallback
    install = code[0]
    if len(INSTALL_URL.findall(install.source)) != 1:
        raise SystemExit(f"{name}.ipynb: the first code cell must install from one git+https://github.com/OWNER/NAME@{BRANCH} URL")
    install.source = INSTALL_URL.sub(lambda _: f"git+{repository}@{BRANCH}", install.source)
    # 3. what running the notebook left behind
    for cell in code:
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    return nb


def stamped_text(path: Path, repository: str) -> str:
    """The text notebooks/<name>.ipynb should have: `path` read, stamped and validated."""
    nb = stamp(nbformat.read(path, as_version=4), path.stem, repository)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if stamping would change a committed notebook")
    args = parser.parse_args(argv)
    repository = repository_url()
    paths = sorted(FOLDER.glob("*.ipynb"))
    if not paths:
        print(f"no notebooks in {FOLDER}", file=sys.stderr)
        return 1
    stale = []
    for path in paths:
        text = stamped_text(path, repository)
        if path.read_text(encoding="utf-8") != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if stale and args.check:
        print("not stamped (run python scripts/make_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    if stale:
        print("stamped: " + ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
