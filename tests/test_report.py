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
from img2img_lab import cli
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


# 05's spec keys, all None in its parameters cell: "the spec's value, else the notebook's default"
UNSET = dict(model=None, image=None, prompt=None, negative_prompt=None, strength=None, guidance_scale=None,
             num_inference_steps=None, seed=None, name=None)


def test_sweep_spec_from_keys_or_from_a_file_with_passed_in_overrides():
    keys = dict(model="tiny/sd15", image="cat", prompt="a cat", strength=[0.4, 0.8], height=None, offload=None)
    spec = rp.NotebookParameters(values=keys).sweep_spec()
    assert spec.strength == (0.4, 0.8) and dict(spec.params) == {} and dict(spec.options) == {}
    # with a spec file, the keys passed in replace its keys
    values = {**UNSET, "spec": str(STRENGTH_YAML), "model": "tiny/sd15", "guidance_scale": 2.0}
    spec = rp.NotebookParameters(values=values, injected=("model", "guidance_scale")).sweep_spec()
    assert spec.model == ("tiny/sd15",) and spec.guidance_scale == (2.0,)
    assert spec.strength == (0.4, 0.6, 0.8, 1.0) and spec.name == "strength"


def test_sweep_spec_hand_edited_cell_values_win_over_the_spec():
    """JupyterLab: nothing is injected; the values typed into the parameters cell still replace the spec's."""
    values = {**UNSET, "spec": str(STRENGTH_YAML), "model": "tiny/sd15", "image": "astronaut", "seed": [1, 2]}
    spec = rp.NotebookParameters(values=values).sweep_spec()
    assert (spec.model, spec.image, spec.seed) == (("tiny/sd15",), ("astronaut",), (1, 2))
    # the keys left None take the spec's values: its strengths, steps and prompt
    assert spec.strength == (0.4, 0.6, 0.8, 1.0) and spec.num_inference_steps == (50,) and spec.name == "strength"
    assert spec.prompt == ("Astronaut in a jungle, cold color palette, muted colors, detailed, 8k",)
    # injected values win too, a None among them included (`-p negative_prompt None`)
    negative = STRENGTH_YAML.parent / "negative_prompt.yaml"
    values = {**UNSET, "spec": str(negative), "model": "tiny/sdxl-refiner", "negative_prompt": None}
    assert rp.NotebookParameters(values=values).sweep_spec().negative_prompt == (
        None, "ugly, deformed, disfigured, poor details, bad anatomy", "jungle")
    assert rp.NotebookParameters(values=values, injected=("negative_prompt",)).sweep_spec().negative_prompt == (None,)


def test_sweep_spec_keys_the_spec_leaves_unset_take_the_notebook_defaults():
    # combined.yaml sets no steps: the pipeline's own default (None), or 4 for a tiny model
    combined = STRENGTH_YAML.parent / "combined.yaml"
    real = rp.NotebookParameters(values={**UNSET, "spec": str(combined)}).sweep_spec()
    assert real.num_inference_steps == (None,) and real.model == (rp.SD15,)
    tiny = rp.NotebookParameters(values={**UNSET, "spec": str(combined), "model": "tiny/sd15"}).sweep_spec()
    assert tiny.num_inference_steps == (4,) and len(tiny) == 48
    # no spec at all: the documented defaults, tiny-aware; strength and guidance the pipeline's own
    spec = rp.NotebookParameters(values={**UNSET, "spec": None, "model": "tiny/sd15"}).sweep_spec()
    assert (spec.image, spec.strength, spec.guidance_scale, spec.num_inference_steps, spec.seed) == (
        ("astronaut",), (None,), (None,), (4,), (0,))
    spec = rp.NotebookParameters(values={**UNSET, "spec": None}).sweep_spec()
    assert spec.model == (rp.SD15,) and spec.image == (f"{rp.DOCS}/img2img-init.png",) and spec.num_inference_steps == (None,)


def test_spec_paths_resolve_from_the_repo_root_and_from_notebooks(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert rp.resolve_spec_path("sweeps/strength.yaml") == STRENGTH_YAML
    monkeypatch.chdir(ROOT / "notebooks")  # JupyterLab's kernel cwd
    assert rp.resolve_spec_path("sweeps/strength.yaml") == STRENGTH_YAML
    assert rp.resolve_spec_path("../sweeps/strength.yaml") == STRENGTH_YAML
    values = {**UNSET, "spec": "sweeps/strength.yaml", "model": "tiny/sd15"}
    assert rp.NotebookParameters(values=values).sweep_spec().name == "strength"
    # elsewhere: the source checkout's sweeps/ (this package runs from one)
    monkeypatch.chdir(tmp_path)
    assert rp.resolve_spec_path("sweeps/strength.yaml") == STRENGTH_YAML
    # a file beside the current folder comes first
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "strength.yaml").write_text(STRENGTH_YAML.read_text())
    assert rp.resolve_spec_path("sweeps/strength.yaml") == tmp_path / "sweeps" / "strength.yaml"
    with pytest.raises(ValidationError) as info:
        rp.resolve_spec_path("sweeps/nope.yaml")
    message = str(info.value)
    assert "`spec` 'sweeps/nope.yaml' not found; tried" in message
    assert str(tmp_path / "sweeps" / "nope.yaml") in message and str(ROOT / "sweeps" / "nope.yaml") in message
    with pytest.raises(ValidationError, match="`spec` must be the path"):
        rp.resolve_spec_path(3)


def test_notebook_defaults_follow_the_main_model():
    """Companions are the guide's checkpoints, or their tiny twins when `model` is a tiny model."""
    real = rp.notebook_defaults("02_parameters", rp.SD15)
    assert real["refiner_model"] == "stabilityai/stable-diffusion-xl-refiner-1.0"
    assert real["num_inference_steps"] == 50 and real["height"] is None
    tiny = rp.notebook_defaults("02_parameters", "tiny/sd15")
    assert tiny["refiner_model"] == "tiny/sdxl-refiner" and tiny["num_inference_steps"] == 4
    assert (tiny["height"], tiny["width"], tiny["image"]) == (64, 64, "astronaut")
    chain = rp.notebook_defaults("03_chaining", "tiny/sd15")
    assert (chain["x2_upscaler_model"], chain["x4_upscaler_model"]) == ("tiny/sd-x2-latent-upscaler", "tiny/sd-x4-upscaler")
    assert rp.notebook_defaults("04_control", "tiny/sd15")["controlnet_model"] == "tiny/controlnet-sd15"
    assert rp.notebook_defaults("04_control", rp.SD15)["size"] == [958, 960]
    # every tiny twin is an embedded tiny model
    assert {tiny for _, tiny in rp.COMPANIONS.values()} <= set(lab.TINY_MODELS)
    with pytest.raises(ValidationError, match="`notebook` must be one of"):
        rp.notebook_defaults("06_nope", "tiny/sd15")


def test_check_parameters_resolves_none_parameters_for_the_notebook():
    ns = _namespace(None)
    ns.update(model="tiny/sd15", refiner_model=None, num_inference_steps=None, strength=0.8)
    ns["In"] = ["", "import img2img_lab as lab",
                'model = "tiny/sd15"  # m\nrefiner_model = None  # r\nnum_inference_steps = None  # n\nstrength = 0.8  # s',
                CHECK_CELL]
    params = rp.check_parameters(ns, notebook="02_parameters")
    assert params.resolved == {"refiner_model": "tiny/sdxl-refiner", "num_inference_steps": 4}
    assert params["refiner_model"] == "tiny/sdxl-refiner" and "(None: resolved)" in repr(params)
    # a value set by hand is kept, and the namespace itself is not changed here
    ns.update(num_inference_steps=10)
    params = rp.check_parameters(ns, notebook="02_parameters")
    assert params["num_inference_steps"] == 10 and "num_inference_steps" not in params.resolved
    assert ns["refiner_model"] is None
    # a real model keeps the guide's
    ns.update(model=rp.SD15, num_inference_steps=None)
    assert rp.check_parameters(ns, notebook="02_parameters").resolved["refiner_model"] == rp.COMPANIONS["refiner_model"][0]


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
    assert rp.notebook_path("02_parameters").parent == rp.notebook_folder()  # a wheel: tests/test_packaging.py
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
    cli.add_report_command(parser.add_subparsers(dest="command", required=True))
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


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_report_notebook_holds_table_grid_plots_and_explorer_state(report_dir):
    nb = nbformat.read(report_dir / "report.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"]["model"] == "tiny/sd15"
    assert WIDGET_STATE in nb.metadata["widgets"]
    kinds = [set(o.get("data", {})) for c in nb.cells for o in c.get("outputs", [])]
    assert sum("image/png" in k for k in kinds) >= 4  # grid + three trade-off plots
    assert any("text/html" in k for k in kinds)  # the table
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    assert WIDGET_STATE in html and "strength" in html


@pytest.mark.heavy
def test_offline_html_bundles_the_widget_javascript(report_dir, tmp_path):
    js = tmp_path / "js"
    js.mkdir()
    (js / "embed-amd.js").write_text("/* embed */")
    (js / "require.js").write_text("/* require */")
    page = rp.export_report_html(report_dir / "report.ipynb", tmp_path / "offline.html", offline=True, js_dir=js)
    text = page.read_text(encoding="utf-8")
    assert WIDGET_STATE in text and "unpkg.com/@jupyter-widgets" not in text
    assert any(p.name == "embed-amd.js" for p in tmp_path.rglob("*") if p.parent != js)


@pytest.mark.heavy
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


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_report_on_a_tiny_model_runs_small_says_so_once_and_keeps_the_kernel_quiet(tmp_path, capfd):
    """`img2img-lab report sweeps/strength.yaml --model tiny/sd15`: 64 px (the spec sets no size), one
    line saying so, and no "Kernel is running over TCP without encryption" from the report's kernel."""
    out = tmp_path / "tiny"
    lab.report(STRENGTH_YAML, out, model="tiny/sd15", html=False)
    captured = capfd.readouterr()
    assert captured.out.count("tiny models run at 64x64 px (the spec sets no height/width): 4 cells") == 1
    assert "without encryption" not in captured.err
    df = pd.read_parquet(out / "results.parquet")
    assert set(df["width"]) == {64} and set(df["height"]) == {64} and set(df["num_inference_steps"]) == {50}
    nb = nbformat.read(out / "report.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert printed.count("tiny models run at 64x64 px") == 1  # the notebook says it too, once


def test_kernel_stderr_filter_drops_only_the_tcp_warning():
    import os

    source_r, source_w = os.pipe()
    target_r, target_w = os.pipe()
    os.write(source_w, b"[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All ...\n"
                       b"something the kernel really says\n")
    os.close(source_w)
    rp._forward_kernel_stderr(source_r, target_fd=target_w)
    os.close(target_w)
    with os.fdopen(target_r, "rb") as forwarded:
        assert forwarded.read() == b"something the kernel really says\n"
