"""Reports: parameter checks, `report()` / `img2img-lab report`, and papermill on the report notebook."""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
from PIL import Image
import pytest

import img2img_lab as lab
import img2img_lab.reports as rp
from img2img_lab.errors import ValidationError

ROOT = Path(__file__).resolve().parent.parent
STRENGTH_YAML = ROOT / "sweeps" / "strength.yaml"
TINY_SET = ["num_inference_steps=4", "height=64", "width=64"]
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


# --------------------------------------------------------------------------------------------
# check_parameters, on a namespace as IPython holds it (`In` is the input history)

PARAMETERS_CELL = 'model = "tiny/sd15"  # m\nstrength = 0.8  # s\nlabel = "x"  # l\noffload = None  # o'
CHECK_CELL = "params = check_parameters(globals())"


def _namespace(injected: dict | None, **values):
    history = ["", "import img2img_lab as lab", PARAMETERS_CELL]
    ns = {"model": "tiny/sd15", "strength": 0.8, "label": "x", "offload": None, "lab": lab}
    if injected is not None:
        history.append("# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in injected.items()) + "\n")
        ns.update(injected)
    ns.update(values)
    ns["In"] = history + [CHECK_CELL]
    return ns


def test_check_parameters_without_injection_returns_the_declared_values():
    params = rp.check_parameters(_namespace(None))
    assert dict(params.values) == {"model": "tiny/sd15", "strength": 0.8, "label": "x", "offload": None}
    assert params.injected == () and params.load_options == {"offload": None}
    assert "strength" in repr(params) and "<table>" in params._repr_html_()


def test_check_parameters_accepts_declared_injected_names():
    params = rp.check_parameters(_namespace({"strength": 0.5, "label": "y"}))
    assert params["strength"] == 0.5 and params.injected == ("strength", "label")


def test_unknown_injected_parameter_is_an_error_with_a_suggestion():
    with pytest.raises(ValidationError, match=r"unknown notebook parameter `strenght`=0.5 \(did you mean 'strength'\?\)"):
        rp.check_parameters(_namespace({"strenght": 0.5}))
    # an explicit declared list works without history too
    with pytest.raises(ValidationError, match="`guidance_scale`"):
        rp.check_parameters(_namespace({"guidance_scale": 5.0}), declared=["model", "strength"])


def test_spec_keys_are_parameters_when_asked_and_values_are_checked():
    params = rp.check_parameters(_namespace({"guidance_scale": [1.0, 5.0], "name": "n"}), spec_keys=True)
    assert params["guidance_scale"] == [1.0, 5.0]
    with pytest.raises(ValidationError, match=r"`strength` must be in \[0, 1\], got 1.2"):
        rp.check_parameters(_namespace({"strength": 1.2}))
    with pytest.raises(ValidationError, match="`offload`"):
        rp.check_parameters(_namespace({"offload": "everything"}))


def test_sweep_spec_from_keys_or_from_a_file_with_passed_in_overrides():
    keys = dict(model="tiny/sd15", image="cat", prompt="a cat", strength=[0.4, 0.8], height=None, offload=None)
    spec = rp.NotebookParameters(values=keys).sweep_spec()
    assert spec.strength == (0.4, 0.8) and dict(spec.params) == {} and dict(spec.options) == {}
    # with a spec file, only the keys passed in replace its keys; the cell's defaults do not
    values = {"spec": str(STRENGTH_YAML), "model": "tiny/sd15", "strength": 0.3, "guidance_scale": 2.0}
    spec = rp.NotebookParameters(values=values, injected=("model", "guidance_scale")).sweep_spec()
    assert spec.model == ("tiny/sd15",) and spec.guidance_scale == (2.0,)
    assert spec.strength == (0.4, 0.6, 0.8, 1.0) and spec.name == "strength"


def test_report_axes_prefer_strength_and_guidance_scale():
    from types import SimpleNamespace

    df = pd.DataFrame(columns=["seed", "prompt", "model", "strength", "guidance_scale", "negative_prompt"])
    three = SimpleNamespace(df=df, swept=["negative_prompt", "guidance_scale", "strength"])
    assert rp.report_axes(three) == {"x": "strength", "y": "guidance_scale", "z": "negative_prompt"}
    assert rp.report_axes(three, x="negative_prompt") == {"x": "negative_prompt", "y": "strength", "z": "guidance_scale"}
    assert rp.report_axes(SimpleNamespace(df=df, swept=["strength"])) == {"x": "strength", "y": "seed", "z": None}
    assert rp.report_axes(SimpleNamespace(df=df, swept=[])) == {"x": "seed", "y": "prompt", "z": None}


def test_notebook_path_finds_package_notebooks_and_refuses_others():
    assert rp.notebook_path().name == "05_sweep_report.ipynb"
    assert rp.notebook_path("02_parameters").parent == rp.PACKAGE_NOTEBOOKS
    with pytest.raises(ValidationError, match="did you mean '05_sweep_report'"):
        rp.notebook_path("05_sweep_reprot")


def test_report_refuses_unknown_parameters_before_running(tmp_path):
    with pytest.raises(ValidationError, match="unknown report parameter `strenght`"):
        lab.report(STRENGTH_YAML, tmp_path / "r", model="tiny/sd15", strenght=0.5)
    with pytest.raises(ValidationError, match="strength"):
        lab.report(STRENGTH_YAML, tmp_path / "r", model="tiny/sd15", strength=1.5)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------
# a report run end to end (shared by the tests below)


def _cli(argv):
    parser = argparse.ArgumentParser()
    rp.add_report_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """`img2img-lab report sweeps/strength.yaml --model tiny/sd15 --out DIR` at tiny sizes."""
    out = tmp_path_factory.mktemp("report") / "strength"
    argv = ["report", str(STRENGTH_YAML), "--model", "tiny/sd15", "--out", str(out)]
    for item in TINY_SET:
        argv += ["--set", item]
    assert _cli(argv) == 0
    return out


def test_report_writes_notebook_html_and_table(report_dir):
    for name in ("report.ipynb", "report.html", "results.parquet", "spec.yaml", "grid.png"):
        assert (report_dir / name).is_file(), name
    with Image.open(report_dir / "grid.png") as grid:
        assert grid.width > 4 * 64  # four strengths side by side, plus labels and the init image
    df = pd.read_parquet(report_dir / "results.parquet")
    assert sorted(df["strength"]) == [0.4, 0.6, 0.8, 1.0]
    assert set(df["model"]) == {"tiny/sd15"} and set(df["status"]) == {"ok"}
    assert {"ssim", "psnr", "mean_abs_change"} <= set(df.columns)
    assert len(list((report_dir / "images").glob("*.png"))) == 4


def test_report_notebook_holds_table_grid_plots_and_explorer_state(report_dir):
    nb = nbformat.read(report_dir / "report.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"]["model"] == "tiny/sd15"
    assert WIDGET_STATE in nb.metadata["widgets"]
    kinds = [set(o.get("data", {})) for c in nb.cells for o in c.get("outputs", [])]
    assert sum("image/png" in k for k in kinds) >= 4  # grid + three trade-off plots
    assert any("text/html" in k for k in kinds)  # the table
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    assert WIDGET_STATE in html and "strength" in html


def test_offline_html_bundles_the_widget_javascript(report_dir, tmp_path):
    js = tmp_path / "js"
    js.mkdir()
    (js / "embed-amd.js").write_text("/* embed */")
    (js / "require.js").write_text("/* require */")
    page = rp.export_report_html(report_dir / "report.ipynb", tmp_path / "offline.html", offline=True, js_dir=js)
    text = page.read_text(encoding="utf-8")
    assert WIDGET_STATE in text and "unpkg.com/@jupyter-widgets" not in text
    assert any(p.name == "embed-amd.js" for p in tmp_path.rglob("*") if p.parent != js)


def test_failing_cell_names_the_cell_and_keeps_the_partial_notebook(report_dir, tmp_path):
    out = tmp_path / "failing"
    shutil.copytree(report_dir, out)  # the sweep resumes: nothing is recomputed
    with pytest.raises(rp.ReportError) as info:
        lab.report(STRENGTH_YAML, out, model="tiny/sd15", metrics=["no_such_metric"], html=False,
                   num_inference_steps=4, height=64, width=64)
    error = info.value
    assert error.ename == "ValidationError" and "no_such_metric" in error.evalue
    assert f"cell {error.cell_index}" in str(error) and error.notebook == out / "report.ipynb"
    # the partial notebook: papermill marks the error at the top and just before the failing cell
    nb = nbformat.read(error.notebook, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if c.get("execution_count") == error.exec_count)
    assert "add_metrics" in nb.cells[index].source and "In [" in nb.cells[0].source
    assert any(o.output_type == "error" for o in nb.cells[index].outputs)
    assert nb.cells[index - 3].outputs  # earlier cells ran and kept their outputs (the spec printed)


def test_papermill_cli_runs_the_report_notebook_with_a_spec_file(tmp_path):
    """`papermill notebooks/05_sweep_report.ipynb out.ipynb -f sweeps/strength.yaml -p model tiny/sd15`."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "05_sweep_report.ipynb"),
           str(tmp_path / "out.ipynb"), "-f", str(STRENGTH_YAML), "-p", "model", "tiny/sd15",
           "-p", "out_dir", str(out)]
    for item in TINY_SET:  # tiny sizes and steps, so it runs in seconds on a CPU
        key, value = item.split("=")
        cmd += ["-p", key, value]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    df = pd.read_parquet(out / "results.parquet")
    assert sorted(df["strength"]) == [0.4, 0.6, 0.8, 1.0] and set(df["num_inference_steps"]) == {4}
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"]["name"] == "strength"
