"""A mixed-family sweep: one sweep over tiny/sd15, tiny/sdxl, tiny/flux and tiny/sd3 runs, stores its
table (results.parquet; a re-run computes nothing) and plots, with the arguments only some of its
models take applied there and recorded as `not_applied` for the others; an argument none takes is
refused before anything runs, naming the axis, the value and each model's family."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import img2img_lab as lab
from img2img_lab.errors import ValidationError
from img2img_lab.knobs import taken

MODELS = ["tiny/sd15", "tiny/sdxl", "tiny/flux", "tiny/sd3"]
CLASSES = {"tiny/sd15": "StableDiffusionImg2ImgPipeline", "tiny/sdxl": "StableDiffusionXLImg2ImgPipeline",
           "tiny/flux": "FluxImg2ImgPipeline", "tiny/sd3": "StableDiffusion3Img2ImgPipeline"}
# true_cfg_scale: FLUX.1 only (its true CFG runs the negative prompt when > 1); prompt_3: SD3 only
PARTIAL = {"true_cfg_scale": [1.0, 2.0], "prompt_3": "a cat, a photo"}


def _spec(**params):
    return lab.SweepSpec(model=MODELS, prompt="a cat", image=lab.load_image("astronaut", size=64), seed=0,
                         num_inference_steps=2, strength=0.6, negative_prompt="blurry", params=params)


def _names(text) -> set:
    return set(filter(None, str(text).split(",")))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    return lab.run_sweep(_spec(**PARTIAL), out, progress=False), out


def test_the_partial_axes_are_taken_by_some_models_only():
    """What the sweep below relies on, from the pipelines' own signatures."""
    takers = {name: sorted(m for m in MODELS if name in taken(CLASSES[m])) for name in PARTIAL}
    assert takers == {"true_cfg_scale": ["tiny/flux"], "prompt_3": ["tiny/sd3"]}


def test_one_sweep_runs_every_family(swept):
    result, _ = swept
    df = result.df
    assert len(df) == 8 and df["status"].eq("ok").all(), df["error"].tolist()
    assert dict(zip(df["model"], df["pipeline_class"])) == CLASSES
    assert sorted(df.groupby("model")["true_cfg_scale"].apply(sorted).tolist()) == [[1.0, 2.0]] * 4
    assert df["prompt_3"].eq(PARTIAL["prompt_3"]).all()  # recorded on every row, as the spec set it


def test_an_axis_applies_where_taken_and_is_recorded_as_not_applied_elsewhere(swept):
    result, _ = swept
    df = result.df
    for i, row in df.iterrows():
        expected = {"true_cfg_scale", "prompt_3"} - taken(CLASSES[row["model"]])
        if row["model"] == "tiny/flux" and row["true_cfg_scale"] == 1.0:
            expected.add("negative_prompt")  # FLUX.1 ignores it without true CFG: that cell says so
        assert _names(row["not_applied"]) == expected, (row["model"], row["true_cfg_scale"], row["not_applied"])
    # applied: FLUX's true CFG changes its picture; elsewhere the value changes nothing
    for model in MODELS:
        rows = df[df["model"] == model].sort_values("true_cfg_scale").index
        one, two = (np.asarray(result.image(i)) for i in rows)
        assert np.array_equal(one, two) == (model != "tiny/flux"), model


def test_the_table_is_stored_and_a_rerun_computes_nothing(swept):
    result, out = swept
    stored = pd.read_parquet(out / "results.parquet")
    assert sorted(stored["key"]) == sorted(result.df["key"])
    assert list(stored.set_index("key").loc[result.df["key"], "not_applied"]) == list(result.df["not_applied"])
    again = lab.run_sweep(_spec(**PARTIAL), out, progress=False)
    run = again.meta["runs"][-1]
    assert (run["computed"], run["skipped"]) == (0, 8)
    assert again.df.set_index("key")["image_hash"].equals(result.df.set_index("key")["image_hash"])
    assert sorted(lab.load_sweep(out).df["key"]) == sorted(result.df["key"])


def test_the_sweep_plots_as_a_model_by_axis_grid(swept, tmp_path):
    result, _ = swept
    fig = lab.plot_grid(result, x="model", y="true_cfg_scale", show_init=False)
    fig.savefig(tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as png:
        picture = np.asarray(png.convert("RGB"))
    assert picture.shape[0] > 64 and picture.shape[1] > 4 * 64 and picture.std() > 0


def test_an_axis_no_model_takes_is_refused_before_running(tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(ValidationError) as error:
        lab.run_sweep(_spec(max_area=[4096, 16384]), out, progress=False)
    message = str(error.value)
    assert "`max_area`=4096 is not an argument of any model of this sweep" in message
    for model, cls in CLASSES.items():
        assert f"{model!r}" in message and cls in message, model
    for title in ("Stable Diffusion", "FLUX"):
        assert title in message
    assert not (out / "results.parquet").exists()
