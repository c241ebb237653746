"""The modern families' sweep specs in `sweeps/` (FLUX.1-dev img2img, FLUX.1 Kontext, SD 3.5,
Qwen-Image-Edit): each parses, its knobs pass against its real checkpoint's pipeline class
(without loading it), the report notebook's `-f` path builds the same sweep as the API, and each
runs on its tiny twin at 2 steps, a few cells, storing its swept columns and the knob columns.

Qwen-Image-Edit's twin loads a `Qwen2VLProcessor`, which transformers 5 builds only with
torchvision: without it, its run is skipped (as in tests/test_family_qwenimage.py).
"""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import img2img_lab as lab
from img2img_lab import knobs
from img2img_lab.cli import main
from img2img_lab.errors import ValidationError
from img2img_lab.families import entry
from img2img_lab.reports import check_parameters
from img2img_lab.spec import SweepSpec

ROOT = Path(__file__).resolve().parent.parent
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# spec file -> (its key-table entry: real checkpoint, pipeline class and tiny twin; its swept axes)
SPECS = {
    "flux_img2img": ("flux", ("strength", "guidance_scale")),
    "flux_kontext": ("flux-kontext", ("prompt", "guidance_scale")),
    "sd35_strength_guidance_negative": ("sd3", ("strength", "guidance_scale", "negative_prompt")),
    "qwenimage_edit": ("qwenimage-edit", ("true_cfg_scale", "num_inference_steps")),
}
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION,
                                       reason="Qwen2VLProcessor needs torchvision in transformers 5")
RUNS = [pytest.param(name, marks=needs_torchvision) if name == "qwenimage_edit" else name for name in SPECS]


def _path(name: str) -> Path:
    return ROOT / "sweeps" / f"{name}.yaml"


def _axes(spec: SweepSpec) -> dict:
    """The spec's swept axes (more than one value) and their values."""
    values = {**spec.to_dict(), **spec.params}
    return {k: v for k, v in values.items() if isinstance(v, (list, tuple)) and len(v) > 1 and k != "model"}


def _tiny(name: str) -> SweepSpec:
    """The spec on its tiny twin, 2 cells: an offline sample image, its main axis cut to its first
    and last value, the other axes left silent (so the twin runs with its pipeline's defaults and
    records them), 2 steps."""
    real = SweepSpec.from_yaml(_path(name))
    main_axis, *others = SPECS[name][1]
    values = _axes(real)[main_axis]
    cut = {main_axis: [values[0], values[-1]], **{k: None for k in others}, "num_inference_steps": 2}
    return real.replace(model=entry(SPECS[name][0]).tiny, image="astronaut", **cut)


@pytest.mark.parametrize("name", SPECS)
def test_each_spec_parses_names_itself_and_sweeps_its_axes(name):
    spec = SweepSpec.from_yaml(_path(name))
    key, swept = SPECS[name]
    assert spec.name == name and spec.model == (entry(key).checkpoint,)
    assert sorted(_axes(spec)) == sorted(swept)
    assert SweepSpec.from_yaml(spec.to_yaml()) == spec  # round trip: the sweep folder's spec.yaml
    assert _path(name).read_text().startswith("# ")  # a comment header, as the guide's specs


@pytest.mark.parametrize("name", SPECS)
def test_each_spec_passes_the_knob_check_of_its_real_pipeline_class(name):
    """No loading: the real checkpoint's class comes from the key table, its keywords from diffusers."""
    spec = SweepSpec.from_yaml(_path(name))
    listed = entry(SPECS[name][0])
    calls = [dict(c.call) for c in spec.cells()]
    assert knobs.check_knobs({listed.checkpoint: (listed.pipeline, calls)}) == {listed.checkpoint: set()}
    accepted = knobs.taken(listed.pipeline) | knobs.ALWAYS_TAKEN
    assert {k for call in calls for k, v in call.items() if v is not None} <= accepted
    assert all("height" not in call for call in calls)  # each runs at its pipeline's own size


def test_the_knob_check_refuses_what_these_pipelines_ignore_or_lack():
    """What the specs leave out on purpose: a FLUX.1 negative prompt without true CFG, a strength
    for Kontext or Qwen-Image-Edit, and guidance_scale on Qwen-Image-Edit."""
    def check(name, **override):
        listed = entry(SPECS[name][0])
        spec = SweepSpec.from_yaml(_path(name), **override)
        knobs.check_knobs({listed.checkpoint: (listed.pipeline, [dict(c.call) for c in spec.cells()])})

    with pytest.raises(ValidationError, match=r"`negative_prompt`='blurry'.*FluxImg2ImgPipeline.*true_cfg_scale"):
        check("flux_img2img", negative_prompt="blurry")
    check("flux_img2img", negative_prompt="blurry", true_cfg_scale=4.0)
    for name, cls in (("flux_kontext", "FluxKontextPipeline"), ("qwenimage_edit", "QwenImageEditPipeline")):
        with pytest.raises(ValidationError, match=rf"`strength`=0.8 is not an argument.*{cls}.*no.*strength"):
            check(name, strength=0.8)
    with pytest.raises(ValidationError, match=r"`guidance_scale`=3.5.*ignores guidance_scale.*true_cfg_scale"):
        check("qwenimage_edit", guidance_scale=3.5)


def _papermill_spec(name: str, **passed) -> SweepSpec:
    """The sweep `papermill notebooks/05_sweep_report.ipynb out.ipynb -f sweeps/<name>.yaml -p ...`
    builds: the notebook's parameters cell, papermill's injected cell (the file's keys, then the -p
    ones), run as IPython would, and the notebook's check cell."""
    notebook = json.loads((ROOT / "notebooks" / "05_sweep_report.ipynb").read_text())
    parameters = next("".join(c["source"]) for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    injected = {**yaml.safe_load(_path(name).read_text()), **passed}
    injected_cell = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in injected.items())
    namespace: dict = {}
    exec(parameters, namespace)
    namespace.update(injected)
    namespace["In"] = ["", parameters, injected_cell, "params = check_parameters(globals(), spec_keys=True)"]
    return check_parameters(namespace, spec_keys=True).sweep_spec()


@pytest.mark.parametrize("name", SPECS)
def test_papermill_f_builds_the_same_sweep_as_the_api(name):
    """No notebook default (strength 0.8, guidance_scale 7.5, 50 steps) slips into a spec that is
    silent or null about it: Kontext and Qwen-Image-Edit take no strength."""
    spec = SweepSpec.from_yaml(_path(name))
    twin = spec.replace(model=entry(SPECS[name][0]).tiny, image="astronaut")
    for built, expected in ((_papermill_spec(name), spec),
                            (_papermill_spec(name, model=twin.model[0], image="astronaut"), twin)):
        assert built.options == {"compile": False}  # the notebook's own parameter: diffusers' default
        assert built.replace(options={}) == expected
        assert [c.key("h") for c in built.cells()] == [c.key("h") for c in expected.cells()]  # the same stored cells


# per spec on its twin (`_tiny`): the defaults its pipeline ran with where the cut spec is silent (FLUX.1's
# distilled 3.5 from its family, not FluxImg2ImgPipeline's signature 7.0) and, per cell, what it ignored
RECORDED = {
    "flux_img2img": ({"guidance_scale": 3.5}, ["", ""]),
    "flux_kontext": ({"guidance_scale": 3.5}, ["", ""]),
    "sd35_strength_guidance_negative": ({"guidance_scale": 7.0}, ["", ""]),
    "qwenimage_edit": ({}, ["negative_prompt", ""]),  # true CFG off at 1.0: its negative prompt unread
}


@pytest.mark.parametrize("name", RUNS)
def test_each_spec_runs_on_its_tiny_twin(name, tmp_path, capsys):
    spec = _tiny(name)
    main_axis = SPECS[name][1][0]
    assert len(spec) == 2
    result = lab.run_sweep(spec, tmp_path / name, progress=False)
    df = result.df
    assert df["status"].eq("ok").all() and len(df) == 2, df.get("error")
    assert result.swept == [main_axis] and df[main_axis].tolist() == list(_axes(spec)[main_axis])
    assert (df["model"] == entry(SPECS[name][0]).tiny).all() and result.image(0).size == (64, 64)
    # every axis of the full spec is a column; the silent ones hold the pipeline's defaults, named
    defaults, not_applied = RECORDED[name]
    assert set(SPECS[name][1]) <= set(df.columns)
    assert df["pipeline_defaults"].eq(",".join(sorted(defaults))).all()
    for column, value in defaults.items():
        assert df[column].eq(value).all(), column
    assert df["not_applied"].tolist() == not_applied
    assert df["effective_steps"].ge(1).all()
    assert "tiny models run at 64x64 px" in capsys.readouterr().out  # said once per sweep


def test_the_cli_runs_a_modern_spec_on_its_twin(tmp_path, capsys):
    out = tmp_path / "flux"
    rc = main(["sweep", str(_path("flux_img2img")), "--model", "tiny/flux", "--out", str(out), "--quiet",
               "--set", "image=astronaut", "--set", "num_inference_steps=2", "--set", "strength=[0.6,0.95]",
               "--set", "guidance_scale=5.0"])
    assert rc == 0, capsys.readouterr().err
    df = pd.read_parquet(out / "results.parquet")
    assert sorted(df["strength"]) == [0.6, 0.95] and set(df["guidance_scale"]) == {5.0}
    assert set(df["model"]) == {"tiny/flux"} and df["status"].eq("ok").all()


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed: the run above covers it")
def test_without_torchvision_the_qwen_edit_spec_stops_with_a_clear_error(tmp_path):
    with pytest.raises(ValidationError, match=r"QwenImageEditPipeline.*torchvision"):
        lab.run_sweep(_tiny("qwenimage_edit"), tmp_path / "q", progress=False)
