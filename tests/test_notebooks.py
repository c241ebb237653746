"""The guide's notebooks: their shape as committed, and each one run headless on the tiny models."""

import ast
import os
import subprocess
import sys
import time
import tomllib
import types
from pathlib import Path

import nbformat
import pytest

import img2img_lab as lab
from img2img_lab.reports import COMPANIONS, NOTEBOOK_DEFAULTS
from img2img_lab.tiny import TINY_SIZE

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["01_quickstart", "02_parameters", "03_chaining", "04_control", "05_sweep_report", "06_modern_models"]
PATHS = [ROOT / "notebooks" / f"{n}.ipynb" for n in NAMES]
KNOBS = {"offload", "attention", "compile"}


def _tiny_parameters(name: str, out_dir: Path) -> dict:
    """Only `model` changed: every companion, image, step count and size follows it (and out_dir)."""
    return {"model": "tiny/sd15",
            **({"out_dir": str(out_dir)} if name in ("01_quickstart", "02_parameters", "06_modern_models") else {})}


def _repository() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def _parameters_cells(nb):
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


# --------------------------------------------------------------------------------------------
# as committed


@pytest.mark.parametrize("path", PATHS, ids=NAMES)
def test_committed_shape(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # cell ids present and unique too
    # papermill starts the kernel the kernelspec names
    assert nb.metadata["kernelspec"] == {"display_name": "Python 3", "language": "python", "name": "python3"}
    assert nb.metadata["language_info"] == {"name": "python"}
    # exactly one parameters cell, plain assignments each with a comment, knobs included
    (cell,) = _parameters_cells(nb)
    tree = ast.parse(cell.source)
    assert all(isinstance(node, ast.Assign) for node in tree.body)
    assert all("  # " in line for line in cell.source.splitlines() if line.strip())
    names = {node.targets[0].id for node in tree.body}
    assert KNOBS <= names and "model" in names
    model = ast.literal_eval(tree.body[[n.targets[0].id for n in tree.body].index("model")].value)
    if path.stem == "05_sweep_report":  # None: the spec's model, else the guide's SD v1.5
        assert model is None and NOTEBOOK_DEFAULTS["05_sweep_report"]["model"][0].startswith("stable-diffusion-v1-5/")
    elif path.stem == "06_modern_models":  # the families on their tiny twins; real ids one parameter away
        assert model == "tiny/sd15"
    else:
        assert model.startswith("stable-diffusion-v1-5/")
    # no outputs, nothing a run leaves behind
    assert "widgets" not in nb.metadata
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None and "execution" not in c.metadata
    # Colab: badge, then a first code cell that installs and enables the widget manager
    assert "colab.research.google.com/github/" in nb.cells[0].source and f"notebooks/{path.name}" in nb.cells[0].source
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "google.colab" in first_code.source and "pip install" in first_code.source
    assert "enable_custom_widget_manager()" in first_code.source
    # the markdown cell before it explains the parameters; the cell right after checks them
    index = nb.cells.index(cell)
    intro = nb.cells[index - 1]
    assert intro.cell_type == "markdown" and intro.source.startswith("## Parameters")
    assert f"papermill {path.name} out.ipynb -p model tiny/sd15" in intro.source
    check = nb.cells[index + 1]
    assert check.cell_type == "code" and check.source.startswith("params = check_parameters(globals(), ")
    if path.stem == "05_sweep_report":  # every spec key is a parameter
        assert "spec_keys=True" in check.source
    else:  # resolves the Nones from this notebook's row of NOTEBOOK_DEFAULTS
        assert f'notebook="{path.stem}"' in check.source and "globals().update(params.resolved)" in check.source


@pytest.mark.parametrize("path", PATHS, ids=NAMES)
def test_badge_and_install_cell_use_the_pyproject_repository_url(path):
    url = _repository()
    owner_name = url.removeprefix("https://github.com/")
    nb = nbformat.read(path, as_version=4)
    assert f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/{path.name}" in nb.cells[0].source
    assert f"git+{url}@main" in nb.cells[1].source
    text = path.read_text(encoding="utf-8")
    assert "OWNER" not in text
    # every GitHub repository URL in the notebook is pyproject's
    for found in {w.split("@")[0].split("/blob/")[0] for w in text.replace("(", " ").replace('"', " ").split()
                  if w.startswith(("https://github.com/", "git+https://github.com/"))}:
        assert found.removeprefix("git+") == url, found


def _make_notebooks():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return make_notebooks


def test_make_notebooks_reads_the_pyproject_url(tmp_path):
    """The URL lives only in pyproject.toml: make_notebooks reads it there."""
    make_notebooks = _make_notebooks()
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "img2img_lab"\n[project.urls]\nRepository = "https://github.com/someone/fork"\n')
    assert make_notebooks.repository_url(other) == "https://github.com/someone/fork"
    assert make_notebooks.repository_url() == _repository()
    other.write_text('[project]\nname = "img2img_lab"\n')
    with pytest.raises(SystemExit, match="Repository"):
        make_notebooks.repository_url(other)


@pytest.mark.parametrize("path", PATHS, ids=NAMES)
def test_stamping_sets_the_url_and_drops_what_a_run_left(path):
    """Stamping puts pyproject's URL into the badge and install cell, clears outputs, keeps the rest."""
    make_notebooks = _make_notebooks()
    committed = nbformat.read(path, as_version=4)
    nb = nbformat.read(path, as_version=4)
    make_notebooks.stamp(nb, path.stem, "https://github.com/someone/fork")
    fork_badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                  f"(https://colab.research.google.com/github/someone/fork/blob/main/notebooks/{path.name})")
    assert nb.cells[0].source.startswith(fork_badge + "\n\n# ")
    assert nb.cells[0].source.split("\n", 1)[1] == committed.cells[0].source.split("\n", 1)[1]
    assert '"img2img_lab @ git+https://github.com/someone/fork@main"' in nb.cells[1].source
    assert "img2img-lab/img2img_lab" not in nbformat.writes(nb)
    # as a notebook saved after a run in JupyterLab: outputs, counts, widget state, kernel details
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
        cell.execution_count = i + 1
        cell.metadata["execution"] = {"iopub.status.idle": "2025-01-01T00:00:00Z"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.9", "mimetype": "text/x-python"}
    nb.cells[0].source = nb.cells[0].source.split("\n", 1)[1].lstrip()  # a badge deleted by hand comes back
    make_notebooks.stamp(nb, path.stem, _repository())
    assert nbformat.writes(nb) + "\n" == path.read_text(encoding="utf-8")


def test_stamping_refuses_an_install_cell_without_its_github_url():
    make_notebooks = _make_notebooks()
    nb = nbformat.read(PATHS[0], as_version=4)
    nb.cells[1].source = nb.cells[1].source.replace("git+", "")
    with pytest.raises(SystemExit, match="first code cell must install from one git"):
        make_notebooks.stamp(nb, "01_quickstart", _repository())


def test_committed_notebooks_are_stamped():
    """The committed notebooks are the stamping step's output: `make_notebooks.py --check` passes."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_notebooks_share_one_frame():
    """The install cell, the parameters intro and the knobs are the same text in every notebook."""
    nbs = {path.stem: nbformat.read(path, as_version=4) for path in PATHS}
    assert len({nb.cells[1].source for nb in nbs.values()}) == 1
    assert nbs["01_quickstart"].cells[1].source.startswith("# Colab (or wherever img2img_lab is missing)")
    intros, knobs = set(), set()
    for name, nb in nbs.items():
        (cell,) = _parameters_cells(nb)
        if name != "06_modern_models":  # its model defaults to a tiny twin, and its intro says so
            intros.add(nb.cells[nb.cells.index(cell) - 1].source.replace(name, "NAME"))
        knobs.add("\n".join(line for line in cell.source.splitlines() if line.split(" = ")[0] in KNOBS))
    assert len(intros) == 1 and len(knobs) == 1


def _run_setup_cell(monkeypatch, cwd: Path) -> list:
    """Run the notebooks' first code cell as Colab would, recording the magics instead of running them."""
    from IPython.core.inputtransformer2 import TransformerManager

    calls = []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append(("widgets",)))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.chdir(cwd)
    source = nbformat.read(PATHS[0], as_version=4).cells[1].source
    shell = types.SimpleNamespace(run_line_magic=lambda name, line: calls.append((name, line)))
    code = TransformerManager().transform_cell(source)
    namespace = {"get_ipython": lambda: shell}
    # IPython expands {source} in a magic line; the transformed code passes the raw text
    shell.run_line_magic = lambda name, line: calls.append((name, line.format(**namespace)))
    exec(compile(code, "setup-cell", "exec"), namespace)
    return calls


def test_install_cell_prefers_a_wheel_then_a_clone_then_github(tmp_path, monkeypatch):
    here = tmp_path / "clone" / "notebooks"
    here.mkdir(parents=True)
    monkeypatch.delenv("IMG2IMG_LAB_WHEEL", raising=False)
    # nothing local: GitHub at pyproject's URL; the widget manager is enabled either way
    calls = _run_setup_cell(monkeypatch, here)
    assert ("pip", f'install -q "img2img_lab @ git+{_repository()}@main"') in calls and ("widgets",) in calls
    # a clone of img2img_lab one level up (the notebook opened from its notebooks/ folder)
    (here.parent / "pyproject.toml").write_text('[project]\nname = "img2img_lab"\n')
    calls = _run_setup_cell(monkeypatch, here)
    assert ("pip", f'install -q "{here.parent.resolve()}"') in calls
    # a wheel in the current folder beats the clone; IMG2IMG_LAB_WHEEL beats both
    (here / "img2img_lab-0.1.0-py3-none-any.whl").write_bytes(b"")
    assert ("pip", 'install -q "img2img_lab-0.1.0-py3-none-any.whl"') in _run_setup_cell(monkeypatch, here)
    monkeypatch.setenv("IMG2IMG_LAB_WHEEL", "/data/img2img_lab-0.2.0-py3-none-any.whl")
    assert ("pip", 'install -q "/data/img2img_lab-0.2.0-py3-none-any.whl"') in _run_setup_cell(monkeypatch, here)


@pytest.mark.parametrize("name", NAMES)
def test_none_parameters_are_documented_with_the_guide_and_tiny_values(name):
    """Every parameter the notebook resolves is None in its cell, and its comment names the tiny value."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    (cell,) = _parameters_cells(nb)
    lines = {line.split(" = ")[0]: line for line in cell.source.splitlines()}
    for parameter, (guide, tiny) in NOTEBOOK_DEFAULTS[name].items():
        line = lines[parameter]
        assert line.startswith(f"{parameter} = None  # "), line
        if tiny != guide:
            assert repr(tiny) in line and "tiny" in line, line
        if parameter in COMPANIONS and name != "05_sweep_report":
            assert repr(COMPANIONS[parameter][0]) in line, line  # the guide's checkpoint, by name
        if tiny != guide:  # the first markdown cell names what tiny models change
            assert f"`{parameter}` {tiny!r}" in nb.cells[0].source
    if name == "05_sweep_report":  # and the size a spec without height/width runs tiny models at
        assert f"runs tiny models at {TINY_SIZE}x{TINY_SIZE} px" in nb.cells[0].source


# --------------------------------------------------------------------------------------------
# executed


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Each notebook run once under papermill, offline, with only `-p model tiny/sd15` (shared by the tests).

    Two kernels at a time, each on one CPU thread: on tiny models a kernel's time is its imports
    and Python, which a second thread does not speed up, so two kernels use two cores."""
    from concurrent.futures import ThreadPoolExecutor

    import papermill

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the kernels inherit it: no hub, no downloads
    folder = tmp_path_factory.mktemp("notebooks")

    def run(name):
        path = folder / f"{name}.ipynb"
        start = time.perf_counter()
        papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(path), cwd=str(folder),
                                   parameters=_tiny_parameters(name, folder / name), progress_bar=False)
        nb = nbformat.read(path, as_version=4)
        nb.metadata["wall_s"] = time.perf_counter() - start
        return nb

    with pytest.MonkeyPatch.context() as env:  # what the kernels inherit, for this fixture only
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("MKL_NUM_THREADS", "1")
        with ThreadPoolExecutor(max_workers=2) as pool:
            return dict(zip(NAMES, pool.map(run, NAMES)))


def _outputs(nb, kind):
    found = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                raise AssertionError(f"cell {i}: {output.ename}: {output.evalue}")
            if kind in output.get("data", {}):
                found.append(i)
    return found


@pytest.mark.heavy
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless_on_tiny_models(executed, name):
    nb = executed[name]
    assert nb.metadata["papermill"]["exception"] is None
    assert len(_outputs(nb, "image/png")) >= 2  # grids and pictures render as images
    # the injected parameters follow the parameters cell and were checked
    (cell,) = _parameters_cells(nb)
    index = nb.cells.index(cell)
    assert "injected-parameters" in nb.cells[index + 1].metadata["tags"]
    assert "model" in nb.cells[index + 2].outputs[0]["data"]["text/plain"]


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["01_quickstart", "02_parameters"])
def test_sweeps_and_explorer_state_are_stored(executed, name):
    nb = executed[name]
    assert _outputs(nb, "application/vnd.jupyter.widget-view+json")
    assert "application/vnd.jupyter.widget-state+json" in nb.metadata["widgets"]


@pytest.mark.heavy
def test_02_sweeps_hold_the_guide_grid_at_tiny_sizes(executed):
    folder = Path(executed["02_parameters"].metadata["papermill"]["parameters"]["out_dir"])
    combined = lab.load_sweep(folder / "combined")
    assert len(combined.df) == 4 * 4 * 3 and set(combined.swept) == {"strength", "guidance_scale", "negative_prompt"}
    assert {"ssim", "psnr", "mean_abs_change"} <= set(combined.df.columns)
    # tiny: 4 steps at 64 px, unless the user sets them; the companion followed `model`
    assert set(combined.df["num_inference_steps"]) == {4} and set(combined.df["width"]) == {64}
    assert set(combined.df["image"]) == {"astronaut"}
    negative = lab.load_sweep(folder / "negative_prompt")
    assert set(negative.df["model"]) == {"tiny/sdxl-refiner"} and set(negative.df["strength"]) == {0.5}


@pytest.mark.heavy
def test_01_model_comparison_grid_has_no_missing_cells(executed):
    from img2img_lab.grid import grid_layout

    nb = executed["01_quickstart"]
    folder = Path(nb.metadata["papermill"]["parameters"]["out_dir"])
    comparison = lab.load_sweep(folder / "model_comparison")
    assert set(comparison.df["model"]) == {"tiny/sd15", "tiny/sdxl-refiner", "tiny/kandinsky22"}
    assert set(comparison.df["status"]) == {"ok"} and set(comparison.df["height"]) == {64}
    plot = next(c.source for c in nb.cells if "plot_grid(comparison" in c.source)
    x, y = (ast.literal_eval(kw.value) for kw in ast.parse(plot).body[0].value.keywords[:2])
    layout = grid_layout(comparison, x, y)
    assert layout.shape == (1, 1, 3) and len(layout.cells) == 3  # one row, a picture per model
    # on the guide's defaults too: SD v1.5 and Kandinsky on one image, the refiner on its own
    guide = comparison.df.assign(model=["sd15", "refiner", "kandinsky"], image=["init", "sdxl-init", "init"])
    layout = grid_layout(types.SimpleNamespace(df=guide, swept=["model", "image"]), x, y)
    assert layout.shape == (1, 1, 3) and len(layout.cells) == 3


@pytest.mark.heavy
def test_06_compares_the_families_in_one_sweep(executed):
    nb = executed["06_modern_models"]
    folder = Path(nb.metadata["papermill"]["parameters"]["out_dir"])
    comparison = lab.load_sweep(folder / "families")
    models = {"tiny/sd15", "tiny/sdxl", "tiny/sd3", "tiny/flux", "tiny/flux-kontext", "tiny/qwenimage", "tiny/z-image",
              "tiny/flux2-klein"}
    assert set(comparison.df["model"]) == models and set(comparison.df["status"]) == {"ok"}
    assert set(comparison.df["num_inference_steps"]) == {2} and set(comparison.df["width"]) == {64}
    # strength applies where a pipeline takes it, and is recorded as not applied where not
    by_model = comparison.df.groupby("model")["not_applied"].first()
    assert {m for m, v in by_model.items() if v} == {"tiny/flux-kontext", "tiny/flux2-klein"}
    assert set(by_model[["tiny/flux-kontext", "tiny/flux2-klein"]]) == {"strength"}
    # the table shows the knob columns, not the twins' own small-size options
    table = next(c for c in nb.cells if "comparison.table(" in c.source)
    html = next(o for o in table.outputs if "text/html" in o.get("data", {})).data["text/html"]
    assert "not_applied" in html and "pipeline_defaults" in html and "max_area" not in html
    # the memory table: estimated, with a verdict per card
    memory = next(c for c in nb.cells if "lab.memory_table(" in c.source)
    html = next(o for o in memory.outputs if "text/html" in o.get("data", {})).data["text/html"]
    assert "estimated from parameter counts" in html and "24 GiB" in html and "80 GiB" in html
    # nothing on stderr: no warnings, no per-call notices
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]


@pytest.mark.heavy
def test_tables_show_missing_text_as_none(executed):
    nb = executed["02_parameters"]
    negative = next(c for c in nb.cells if "by_negative.table(" in c.source)
    html = next(o for o in negative.outputs if "text/html" in o.get("data", {})).data["text/html"]
    assert "(none)" in html  # the row without a negative prompt


@pytest.mark.heavy
def test_05_in_place_takes_its_hand_edited_cell_over_the_spec(tmp_path):
    """JupyterLab: kernel cwd notebooks/, `spec = "sweeps/strength.yaml"` and the same cell's edits win."""
    import papermill

    nb = nbformat.read(ROOT / "notebooks" / "05_sweep_report.ipynb", as_version=4)
    (cell,) = _parameters_cells(nb)
    edits = {"spec": "sweeps/strength.yaml", "model": "tiny/sd15", "image": "astronaut", "seed": 3,
             "out_dir": str(tmp_path / "sweep")}
    cell.source = "\n".join(
        f"{line.split(' = ')[0]} = {edits[line.split(' = ')[0]]!r}  # edited" if line.split(" = ")[0] in edits else line
        for line in cell.source.splitlines())
    edited = tmp_path / "edited.ipynb"
    nbformat.write(nb, edited)
    papermill.execute_notebook(str(edited), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "notebooks"),
                               progress_bar=False)
    df = lab.load_sweep(tmp_path / "sweep").df
    assert set(df["model"]) == {"tiny/sd15"} and set(df["image"]) == {"astronaut"} and set(df["seed"]) == {3}
    assert sorted(df["strength"]) == [0.4, 0.6, 0.8, 1.0]  # not set in the cell: the spec's
    assert set(df["num_inference_steps"]) == {50} and set(df["width"]) == {64}  # the spec's steps; tiny size
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert printed.count("tiny models run at 64x64 px") == 1


# --------------------------------------------------------------------------------------------
# parameter validation in the notebook


def _run_failing(tmp_path, name, parameters):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out),
                                   parameters=parameters, progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    failing = next(c for c in nb.cells if c.get("execution_count") == info.value.exec_count)
    return info.value, failing, nb


@pytest.mark.heavy
def test_unknown_parameter_fails_in_the_check_cell(tmp_path):
    error, failing, nb = _run_failing(tmp_path, "02_parameters", {"model": "tiny/sd15", "strenght": 0.5})
    assert "check_parameters(globals()" in failing.source and error.ename == "ValidationError"
    assert "`strenght`" in error.evalue and "did you mean 'strength'" in error.evalue
    # nothing after it ran
    later = nb.cells[nb.cells.index(failing) + 1:]
    assert all(c.get("execution_count") is None for c in later if c.cell_type == "code")


@pytest.mark.heavy
def test_bad_value_fails_in_the_check_cell(tmp_path):
    error, failing, _ = _run_failing(tmp_path, "02_parameters", {"model": "tiny/sd15", "strength": [0.5, 1.2]})
    assert "check_parameters(globals()" in failing.source
    assert "`strength` must be in [0, 1], got 1.2" in error.evalue


def test_outputs_of_notebooks_run_in_place_are_ignored_by_git():
    """A notebook run in JupyterLab writes runs/ beside it (kernel cwd notebooks/): not for `git status`."""
    for path in ("notebooks/runs/02_parameters/results.parquet", "notebooks/runs/x/images/a.png",
                 "runs/demo/report.html"):
        run = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert run.returncode == 0, f"{path} is not ignored"
    assert subprocess.run(["git", "check-ignore", "-q", "notebooks/02_parameters.ipynb"], cwd=ROOT).returncode == 1
