"""The FLUX.1 family: tiny/flux, tiny/flux-kontext, tiny/flux-control and tiny/flux with
tiny/controlnet-flux load as their four image-to-image pipelines, the control image changes the
picture, the negative-prompt knob check speaks, and every twin builds the same weights every time
(their sweep cells equal the direct call, Kontext at the twin's 64 px: tests/test_family_equality.py)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.errors import ValidationError
from img2img_lab.quiet import quiet_loading

pytestmark = pytest.mark.heavy  # builds and loads four twins, builds each twice more: ~10-15 s

FAMILY = families.by_key("flux")
KEYS = ("flux", "flux-kontext", "flux-control", "flux-controlnet")
SIZE = 64


def _weights(folder: Path) -> tuple:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in files if n.endswith(".safetensors")}


def _call(key: str) -> dict:
    """The call arguments of the tests' cells: the twin's own, a 64 px size, explicit guidance,
    `strength` where the pipeline takes it and a control image where it needs one."""
    entry = families.entry(key)
    call = dict(families.tiny_call(entry.tiny), num_inference_steps=2, guidance_scale=3.5)
    if key != "flux-kontext":
        call.update(strength=0.8, height=SIZE, width=SIZE)
    if key in ("flux-control", "flux-controlnet"):
        call["control_image"] = "astronaut"
    return call


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=SIZE)


@pytest.fixture(scope="module")
def pipes():
    return {key: lab.load_pipeline(families.entry(key).tiny, **families.entry(key).load) for key in KEYS}


@pytest.mark.parametrize("key", KEYS)
def test_each_entry_loads_as_its_pipeline_and_family(pipes, key):
    entry, pipe = families.entry(key), pipes[key]
    assert type(pipe).__name__ == entry.pipeline and families.family_of(pipe) is FAMILY
    assert FAMILY.size_multiple(pipe) == 16 and pipe.vae_scale_factor == 8  # VAE 8, packed 2x2
    assert FAMILY.prompt_encoding(pipe) is None and not entry.single_file


def test_the_key_table_and_the_lookups():
    assert [(e.key, e.pipeline, e.mapping_key, e.tiny) for e in FAMILY.entries] == [
        ("flux", "FluxImg2ImgPipeline", "flux", "tiny/flux"),
        ("flux-kontext", "FluxKontextPipeline", "flux-kontext", "tiny/flux-kontext"),
        ("flux-control", "FluxControlImg2ImgPipeline", "flux-control", "tiny/flux-control"),
        ("flux-controlnet", "FluxControlNetImg2ImgPipeline", "flux-controlnet", "tiny/flux"),
    ]
    assert families.entry("flux-controlnet").load == {"controlnet": "tiny/controlnet-flux"}
    assert FAMILY.controlnet_class == "FluxControlNetModel" and FAMILY.picture_args == ("control_image",)
    # every FLUX.1 pipeline is this family's, the ControlNet ones too; FLUX.2 is not
    for name in ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxKontextPipeline",
                 "FluxControlPipeline", "FluxControlImg2ImgPipeline", "FluxControlNetPipeline",
                 "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline", "FluxFillPipeline"):
        assert families.family_of_class(name) is FAMILY, name
    assert families.family_of_class("Flux2Pipeline") is not FAMILY
    assert families.family_of_class("StableDiffusionControlNetImg2ImgPipeline").key == "controlnet"
    # the distilled guidance where a spec is silent; what Kontext sweeps instead of strength
    assert FAMILY.call_defaults["FluxImg2ImgPipeline"] == {"guidance_scale": 3.5}
    assert "guidance_scale" in FAMILY.knob_hints["strength"]
    kontext = {"max_sequence_length": 32, "max_area": 4096, "_auto_resize": False}
    assert families.tiny_call("tiny/flux-kontext") == kontext


def test_the_control_image_changes_the_picture(pipes, init):
    for key in ("flux-control", "flux-controlnet"):
        call = _call(key)
        pictures = [np.asarray(pipes[key](prompt="a cat", image=init, **{**call, "control_image": control},
                                          generator=torch.Generator("cpu").manual_seed(0)).images[0])
                    for control in (init, lab.load_image("cat", size=SIZE))]
        assert not np.array_equal(*pictures), key


def test_negative_prompt_needs_true_cfg_scale():
    message = FAMILY.knob_problem("FluxImg2ImgPipeline", {"negative_prompt": "blurry", "true_cfg_scale": 1.0})["negative_prompt"]
    assert "ignores negative prompts unless `true_cfg_scale` > 1" in message and "4.0" in message
    assert "negative_prompt" in FAMILY.knob_problem("FluxKontextPipeline", {"negative_prompt": "blurry"})  # absent: 1.0
    assert FAMILY.knob_problem("FluxImg2ImgPipeline", {"negative_prompt": "blurry", "true_cfg_scale": 4.0}) == {}
    assert FAMILY.knob_problem("FluxImg2ImgPipeline", {"negative_prompt": "", "true_cfg_scale": 1.0}) == {}
    assert FAMILY.knob_problem("FluxImg2ImgPipeline", {"negative_prompt": None}) == {}
    # the control pipelines take no negative_prompt at all
    assert FAMILY.knob_problem("FluxControlImg2ImgPipeline", {"negative_prompt": "blurry"}) == {}


def test_a_controlnet_goes_with_a_plain_flux_checkpoint_only():
    with pytest.raises(ValidationError, match=r"`controlnet` can't be used with the FluxKontextPipeline"):
        lab.load_pipeline("tiny/flux-kontext", controlnet="tiny/controlnet-flux", cache=False)


def test_the_twins_build_the_same_weights(tmp_path):
    for model in FAMILY.tiny_models:
        builds = []
        for run in ("a", "b"):
            folder = tmp_path / run / model.name.removeprefix("tiny/")
            folder.mkdir(parents=True)
            with quiet_loading():
                FAMILY.build_tiny(model.name, folder)
            builds.append(_weights(folder))
        assert builds[0][1] and builds[0] == builds[1], model.name
