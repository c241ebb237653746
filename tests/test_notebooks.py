"""The guide's notebooks: their shape as committed, and each one run headless on the tiny models."""

import ast
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import img2img_lab as lab

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["01_quickstart", "02_parameters", "03_chaining", "04_control", "05_sweep_report"]
PATHS = [ROOT / "notebooks" / f"{n}.ipynb" for n in NAMES]
KNOBS = {"offload", "attention", "compile"}
TINY = dict(num_inference_steps=4, height=64, width=64)


def _tiny_parameters(name: str, out_dir: Path) -> dict:
    """The tiny models and sizes each notebook runs with offline (< ~60 s each on two cores)."""
    return {
        "01_quickstart": dict(model="tiny/sd15", kandinsky_model="tiny/kandinsky22", refiner_model="tiny/sdxl-refiner",
                              cat_image="cat", image="astronaut", refiner_image="astronaut",
                              prior_num_inference_steps=2, out_dir=str(out_dir), **TINY),
        "02_parameters": dict(model="tiny/sd15", refiner_model="tiny/sdxl-refiner", image="astronaut",
                              refiner_image="astronaut", strength=[0.4, 1.0], guidance_scale=[1.0, 8.0],
                              negative_prompt=[None, "jungle"], out_dir=str(out_dir),
                              **{**TINY, "num_inference_steps": 3}),
        "03_chaining": dict(model="tiny/sd15", kandinsky_model="tiny/kandinsky22", comic_model="tiny/sd15",
                            pixel_model="tiny/sd15", x2_upscaler_model="tiny/sd-x2-latent-upscaler",
                            x4_upscaler_model="tiny/sd-x4-upscaler", image="astronaut", size=64,
                            prior_num_inference_steps=2, **TINY),
        # load_pipeline takes a ControlNet as a hub id or folder: the tiny one by its folder
        "04_control": dict(model="tiny/sd15", controlnet_model=str(lab.tiny_model_path("tiny/controlnet-sd15")),
                           style_model="tiny/sd15", image="astronaut", control_image="cat", size=[64, 64],
                           num_inference_steps=3),
    }[name]


def _parameters_cells(nb):
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


# --------------------------------------------------------------------------------------------
# as committed


@pytest.mark.parametrize("path", PATHS, ids=NAMES)
def test_committed_shape(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    # exactly one parameters cell, plain assignments each with a comment, knobs included
    (cell,) = _parameters_cells(nb)
    tree = ast.parse(cell.source)
    assert all(isinstance(node, ast.Assign) for node in tree.body)
    assert all("  # " in line for line in cell.source.splitlines() if line.strip())
    names = {node.targets[0].id for node in tree.body}
    assert KNOBS <= names and "model" in names
    assert ast.literal_eval(tree.body[[n.targets[0].id for n in tree.body].index("model")].value).startswith(
        "stable-diffusion-v1-5/")
    # no outputs
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None
    # Colab: badge, then a first code cell that installs and enables the widget manager
    assert "colab.research.google.com/github/" in nb.cells[0].source and f"notebooks/{path.name}" in nb.cells[0].source
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "google.colab" in first_code.source and "pip install" in first_code.source
    assert "enable_custom_widget_manager()" in first_code.source
    # the cell right after the parameters cell checks them
    index = nb.cells.index(cell)
    assert "check_parameters(globals()" in nb.cells[index + 1].source


def test_generated_and_package_copies_are_up_to_date():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for name in NAMES:
        package = ROOT / "img2img_lab" / "notebooks" / f"{name}.ipynb"
        assert package.read_bytes() == (ROOT / "notebooks" / f"{name}.ipynb").read_bytes()


# --------------------------------------------------------------------------------------------
# executed


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Each guide notebook run once under papermill on the tiny models (shared by the tests)."""
    import papermill

    folder = tmp_path_factory.mktemp("notebooks")
    out = {}
    for name in NAMES[:4]:
        path = folder / f"{name}.ipynb"
        papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(path),
                                   parameters=_tiny_parameters(name, folder / name), progress_bar=False)
        out[name] = nbformat.read(path, as_version=4)
    return out


def _outputs(nb, kind):
    found = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                raise AssertionError(f"cell {i}: {output.ename}: {output.evalue}")
            if kind in output.get("data", {}):
                found.append(i)
    return found


@pytest.mark.parametrize("name", NAMES[:4])
def test_notebook_runs_headless_on_tiny_models(executed, name):
    nb = executed[name]
    assert nb.metadata["papermill"]["exception"] is None
    assert len(_outputs(nb, "image/png")) >= 2  # grids and pictures render as images
    # the injected parameters follow the parameters cell and were checked
    (cell,) = _parameters_cells(nb)
    index = nb.cells.index(cell)
    assert "injected-parameters" in nb.cells[index + 1].metadata["tags"]
    assert "model" in nb.cells[index + 2].outputs[0]["data"]["text/plain"]


@pytest.mark.parametrize("name", ["01_quickstart", "02_parameters"])
def test_sweeps_and_explorer_state_are_stored(executed, name):
    nb = executed[name]
    assert _outputs(nb, "application/vnd.jupyter.widget-view+json")
    assert "application/vnd.jupyter.widget-state+json" in nb.metadata["widgets"]


def test_02_sweeps_hold_the_guide_grid(executed):
    folder = Path(executed["02_parameters"].metadata["papermill"]["parameters"]["out_dir"])
    combined = lab.load_sweep(folder / "combined")
    assert len(combined.df) == 8 and set(combined.swept) == {"strength", "guidance_scale", "negative_prompt"}
    assert {"ssim", "psnr", "mean_abs_change"} <= set(combined.df.columns)
    negative = lab.load_sweep(folder / "negative_prompt")
    assert set(negative.df["model"]) == {"tiny/sdxl-refiner"} and set(negative.df["strength"]) == {0.5}


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


def test_unknown_parameter_fails_in_the_check_cell(tmp_path):
    error, failing, nb = _run_failing(tmp_path, "02_parameters", {"model": "tiny/sd15", "strenght": 0.5})
    assert "check_parameters(globals())" in failing.source and error.ename == "ValidationError"
    assert "`strenght`" in error.evalue and "did you mean 'strength'" in error.evalue
    # nothing after it ran
    later = nb.cells[nb.cells.index(failing) + 1:]
    assert all(c.get("execution_count") is None for c in later if c.cell_type == "code")


def test_bad_value_fails_in_the_check_cell(tmp_path):
    error, failing, _ = _run_failing(tmp_path, "02_parameters", {"model": "tiny/sd15", "strength": [0.5, 1.2]})
    assert "check_parameters(globals())" in failing.source
    assert "`strength` must be in [0, 1], got 1.2" in error.evalue
