"""SDXL ControlNet image-to-image: tiny/sdxl with tiny/controlnet-sdxl (plain and PAG) or
tiny/controlnet-union-sdxl loads as the entry's pipeline in the ControlNet family, its sweep cells
(control_image, control_mode) equal the direct call bit for bit, and the twins build the same
weights every time."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.control import prepare_control_image
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path

pytestmark = pytest.mark.heavy

KEYS = ("sdxl-controlnet", "sdxl-controlnet-union", "sdxl-controlnet-pag")
CALL = dict(num_inference_steps=2, strength=0.5, guidance_scale=5.0, controlnet_conditioning_scale=0.7)
EXTRA = {"sdxl-controlnet-union": {"control_mode": 1}, "sdxl-controlnet-pag": {"pag_scale": 2.0}}


def _weights(folder: Path) -> tuple:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in files if n.endswith(".safetensors")}


@pytest.fixture(scope="module")
def pipes():
    return {key: lab.load_pipeline(families.entry(key).tiny, **families.entry(key).load) for key in KEYS}


@pytest.mark.parametrize("key", KEYS)
def test_the_entry_loads_as_its_pipeline_and_family(pipes, key):
    entry, pipe = families.entry(key), pipes[key]
    assert type(pipe).__name__ == entry.pipeline and entry.tiny == "tiny/sdxl"
    assert families.family_of(pipe) is families.by_key("controlnet") is families.family_of_tiny(entry.load["controlnet"])
    assert entry.pipeline in families.call_pipelines()
    net = "ControlNetUnionModel" if key == "sdxl-controlnet-union" else "ControlNetModel"
    assert type(pipe.controlnet).__name__ == net
    # the ControlNet matches tiny/sdxl's UNet, and conditions (its zero convs are filled)
    assert pipe.controlnet.config.block_out_channels == pipe.unet.config.block_out_channels
    assert pipe.controlnet.config.cross_attention_dim == pipe.unet.config.cross_attention_dim
    assert all(p.abs().sum() > 0 for p in pipe.controlnet.controlnet_mid_block.parameters())


@pytest.mark.equality
@pytest.mark.parametrize("key", KEYS)
def test_a_sweep_equals_the_direct_call(pipes, key, tmp_path):
    entry, pipe = families.entry(key), pipes[key]
    params = {"control_image": "astronaut", **EXTRA.get(key, {})}
    spec = lab.SweepSpec(model=entry.tiny, prompt="a cat", image="astronaut", seed=[0, 1], **CALL, params=params,
                         options=dict(entry.load))
    result = lab.run_sweep(spec, tmp_path, progress=False, exact=True)
    df = result.df
    assert df["status"].eq("ok").all() and len(df) == 2, df.get("error")
    # the pipeline takes height/width: the run passes the tiny size, the control image sized like the init
    init = lab.load_image("astronaut")
    control = prepare_control_image("astronaut", init.size)
    for i, row in df.iterrows():
        direct = pipe(prompt="a cat", image=init, control_image=control, **CALL, **EXTRA.get(key, {}), height=64,
                      width=64, generator=torch.Generator("cpu").manual_seed(int(row["seed"]))).images[0]
        np.testing.assert_array_equal(np.asarray(direct), np.asarray(result.image(i)))


def test_control_mode_changes_the_union_picture(pipes):
    pipe = pipes["sdxl-controlnet-union"]
    init = lab.load_image("astronaut", size=64)
    outs = [np.asarray(pipe(prompt="a cat", image=init, control_image=init, control_mode=mode, **CALL,
                            generator=torch.Generator("cpu").manual_seed(0)).images[0]) for mode in (0, 3)]
    assert not np.array_equal(*outs)


@pytest.mark.parametrize("name", ["tiny/controlnet-sdxl", "tiny/controlnet-union-sdxl"])
def test_the_twins_build_the_same_weights(tmp_path, name):
    folder = tmp_path / "cn"
    folder.mkdir()
    with quiet_loading():
        families.by_key("controlnet").build_tiny(name, folder)
    assert _weights(folder) == _weights(tiny_model_path(name))


def test_the_sd15_twin_and_entry_stay_as_they_were():
    entry = families.entry("controlnet-sd15")
    assert (entry.pipeline, entry.tiny, dict(entry.load), entry.single_file) == (
        "StableDiffusionControlNetImg2ImgPipeline", "tiny/sd15", {"controlnet": "tiny/controlnet-sd15"}, True)
