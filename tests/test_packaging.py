"""Packaging: the conda environment matches pyproject.toml, and the wheel ships the notebooks."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from img2img_lab import reports as rp

ROOT = Path(__file__).resolve().parents[1]


def _normalise(reqs):
    out = {}
    for text in reqs:
        req = Requirement(text)
        out[req.name.lower().replace("_", "-")] = str(req.specifier)
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _normalise(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = _normalise([p for p in pip_section if not p.startswith("-e")])
    assert listed == wanted
    assert "-e ." in pip_section, "the conda env must install the package itself"


def test_console_script_points_at_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["img2img-lab"] == "img2img_lab.cli:main"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci


# --------------------------------------------------------------------------------------------
# the notebooks: one committed copy (notebooks/), shipped inside the wheel

NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the package's sources (the working tree gets no build/ folder)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "img2img_lab", src / "img2img_lab", ignore=shutil.ignore_patterns("__pycache__", "runs"))
    (src / "notebooks").mkdir()
    for name in NOTEBOOKS:
        shutil.copy2(ROOT / "notebooks" / name, src / "notebooks" / name)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (wheel,) = (tmp_path / "dist").glob("img2img_lab-*.whl")
    return wheel


def test_notebooks_have_one_committed_copy():
    assert NOTEBOOKS == ["01_quickstart.ipynb", "02_parameters.ipynb", "03_chaining.ipynb", "04_control.ipynb",
                         "05_sweep_report.ipynb", "06_modern_models.ipynb"]
    assert not list((ROOT / "img2img_lab").rglob("*.ipynb")), "the package holds no copy of the notebooks"
    # this checkout (an editable install of it too) reads them in place
    assert rp.notebook_folder() == ROOT / "notebooks"
    assert rp.notebook_path("02_parameters") == ROOT / "notebooks" / "02_parameters.ipynb"


def test_wheel_ships_the_notebooks_where_an_installed_package_finds_them(tmp_path):
    wheel = _build_wheel(tmp_path)
    inside = rp.PACKAGE_NOTEBOOKS.relative_to(ROOT).as_posix()  # img2img_lab/notebooks
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in NOTEBOOKS:
            assert archive.read(f"{inside}/{name}") == (ROOT / "notebooks" / name).read_bytes(), name
        assert "img2img_lab/assets/demo.yaml" in names and "img2img_lab/reports.py" in names
        assert not [n for n in names if n.startswith("notebooks/") or "/runs/" in n or "__pycache__" in n]
        site = tmp_path / "site"
        archive.extractall(site)  # a pure-Python wheel installs by unpacking it
    # the unpacked wheel, imported ahead of this checkout: reports finds its notebooks inside it
    code = ("import img2img_lab.reports as r, json; "
            "print(json.dumps([r.__file__, str(r.notebook_folder()), str(r.notebook_path('05_sweep_report'))]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr
    module, folder, found = map(Path, json.loads(run.stdout))
    assert module == site / "img2img_lab" / "reports.py"
    assert folder == site / "img2img_lab" / "notebooks"
    assert found == folder / "05_sweep_report.ipynb" and found.is_file()


def test_no_issue_numbers_in_the_shipped_text():
    """Code, tests, notebooks and docs say what things do, not which issue asked for them."""
    pattern = re.compile(r"\bissues? ?#?\d+", re.IGNORECASE)
    folders = ("img2img_lab", "tests", "notebooks", "scripts", "docs", "sweeps", "benchmarks")
    files = [p for f in folders for p in (ROOT / f).rglob("*") if p.suffix in {".py", ".ipynb", ".md", ".yaml", ".sh"}]
    files += [ROOT / name for name in ("README.md", "Makefile", "pyproject.toml", "setup.py")]
    found = [f"{p.relative_to(ROOT)}: {m.group()}" for p in files if "runs" not in p.relative_to(ROOT).parts
             for m in pattern.finditer(p.read_text(encoding="utf-8", errors="replace"))]
    assert not found
