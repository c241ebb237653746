"""SDXL ControlNet image-to-image: tiny/sdxl with tiny/controlnet-sdxl (plain and PAG) or
tiny/controlnet-union-sdxl loads as the entry's pipeline in the ControlNet family, control_mode
changes the union's picture, and the twins build the same weights every time (their sweep cells
equal the direct call: tests/test_family_equality.py)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path

pytestmark = pytest.mark.heavy

KEYS = ("sdxl-controlnet", "sdxl-controlnet-union", "sdxl-controlnet-pag")
CALL = dict(num_inference_steps=2, strength=0.5, guidance_scale=5.0, controlnet_conditioning_scale=0.7)


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
