"""Tiny models: each folder opens with its real diffusers class and runs an image-to-image call."""

import hashlib

import pytest
import torch
from PIL import Image

from img2img_lab.errors import ValidationError
from img2img_lab.tiny import TINY_MODELS, VERSION, kandinsky_prior_path, tiny_model_path


def _image(size):
    return Image.new("RGB", (size, size), (200, 120, 40))


def _generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def sd15_path():
    return tiny_model_path("tiny/sd15")


def test_sd15_loads_as_img2img_and_runs(sd15_path):
    from diffusers import AutoPipelineForImage2Image, StableDiffusionImg2ImgPipeline

    pipe = AutoPipelineForImage2Image.from_pretrained(sd15_path)

    assert isinstance(pipe, StableDiffusionImg2ImgPipeline)
    assert pipe.vae_scale_factor == 8
    assert pipe.safety_checker is None
    out = pipe("a cat", image=_image(128), strength=0.5, num_inference_steps=4, generator=_generator())
    assert out.images[0].size == (128, 128)


@pytest.mark.parametrize(
    ("name", "pipeline_class", "call_kwargs"),
    [
        ("tiny/sdxl", "StableDiffusionXLImg2ImgPipeline", {}),
        ("tiny/sdxl-refiner", "StableDiffusionXLImg2ImgPipeline", {"aesthetic_score": 7.0}),
    ],
)
def test_sdxl_loads_as_img2img_and_runs(name, pipeline_class, call_kwargs):
    from diffusers import AutoPipelineForImage2Image

    pipe = AutoPipelineForImage2Image.from_pretrained(tiny_model_path(name))

    assert type(pipe).__name__ == pipeline_class
    assert pipe.vae_scale_factor == 8
    if name == "tiny/sdxl-refiner":
        assert pipe.text_encoder is None and pipe.tokenizer is None
        assert pipe.config.requires_aesthetics_score
    out = pipe("a cat", image=_image(128), strength=0.5, num_inference_steps=4, generator=_generator(), **call_kwargs)
    assert out.images[0].size == (128, 128)


def test_kandinsky22_loads_with_its_prior_and_runs():
    from diffusers import AutoPipelineForImage2Image, KandinskyV22Img2ImgCombinedPipeline, KandinskyV22PriorPipeline

    assert kandinsky_prior_path() == tiny_model_path("tiny/kandinsky22") / "prior"
    prior = KandinskyV22PriorPipeline.from_pretrained(kandinsky_prior_path())
    pipe = AutoPipelineForImage2Image.from_pretrained(
        tiny_model_path("tiny/kandinsky22"), **{f"prior_{k}": v for k, v in prior.components.items()}
    )

    assert isinstance(pipe, KandinskyV22Img2ImgCombinedPipeline)
    out = pipe(
        "a cat",
        image=_image(128),
        strength=0.5,
        num_inference_steps=4,
        prior_num_inference_steps=2,
        height=128,
        width=128,
        generator=_generator(),
    )
    assert out.images[0].size == (128, 128)


def test_controlnet_fits_sd15(sd15_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    controlnet = ControlNetModel.from_pretrained(tiny_model_path("tiny/controlnet-sd15"))
    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(sd15_path, controlnet=controlnet)

    out = pipe(
        "a cat",
        image=_image(128),
        control_image=_image(128),
        strength=0.5,
        num_inference_steps=4,
        generator=_generator(),
    )
    assert out.images[0].size == (128, 128)


def test_latent_upscaler_doubles_an_image_and_sd15_latents(sd15_path):
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline, StableDiffusionLatentUpscalePipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_model_path("tiny/sd-x2-latent-upscaler"))
    assert isinstance(pipe, StableDiffusionLatentUpscalePipeline)
    out = pipe("a cat", image=_image(128), num_inference_steps=2, generator=_generator())
    assert out.images[0].size == (256, 256)

    sd15 = AutoPipelineForText2Image.from_pretrained(sd15_path)
    latents = sd15("a cat", height=128, width=128, num_inference_steps=2, output_type="latent").images
    out = pipe("a cat", image=latents, num_inference_steps=2, generator=_generator())
    assert out.images[0].size == (256, 256)


@pytest.mark.heavy
def test_x4_upscaler_quadruples():
    from diffusers import DiffusionPipeline, StableDiffusionUpscalePipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_model_path("tiny/sd-x4-upscaler"))

    assert isinstance(pipe, StableDiffusionUpscalePipeline)
    assert pipe.vae_scale_factor == 4
    out = pipe("a cat", image=_image(64), noise_level=20, num_inference_steps=2, generator=_generator())
    assert out.images[0].size == (256, 256)


def test_path_is_versioned_under_home(sd15_path):
    assert sd15_path.name == f"sd15-v{VERSION}"
    assert sd15_path.parent.name == "tiny"
    assert (sd15_path / "model_index.json").is_file()
    assert tiny_model_path("tiny/sd15") == sd15_path  # built once, then reused


def test_unknown_name_is_a_validation_error():
    with pytest.raises(ValidationError, match=r"`name`.*'tiny/nope'") as info:
        tiny_model_path("tiny/nope")
    for name in TINY_MODELS:
        assert name in str(info.value)


def _file_hashes(folder):
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_build_is_deterministic(monkeypatch, tmp_path):
    hashes = []
    for home in ("a", "b"):
        monkeypatch.setenv("IMG2IMG_LAB_HOME", str(tmp_path / home))
        hashes.append(_file_hashes(tiny_model_path("tiny/sd15")))
    assert any(name.endswith(".safetensors") for name in hashes[0])
    assert hashes[0] == hashes[1]
