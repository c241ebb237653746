"""The Stable Diffusion 3 family: tiny/sd3 loads as StableDiffusion3Img2ImgPipeline (and, with
enable_pag=True, as its PAG variant), its sizes are multiples of 16, and it builds the same weights
every time (its sweep cells equal the direct call: tests/test_family_equality.py)."""

import hashlib
from pathlib import Path

import pytest

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.errors import ValidationError
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path
from img2img_lab.validation import check_sizes


def _weights(folder: Path) -> tuple:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in files if n.endswith(".safetensors")}


@pytest.fixture(scope="module")
def pipes():
    return {key: lab.load_pipeline(families.entry(key).tiny, **families.entry(key).load) for key in ("sd3", "sd3-pag")}


def test_the_entries_load_as_their_pipelines_and_family(pipes):
    family = families.by_key("sd3")
    for key, cls, mapping in (("sd3", "StableDiffusion3Img2ImgPipeline", "stable-diffusion-3"),
                              ("sd3-pag", "StableDiffusion3PAGImg2ImgPipeline", "stable-diffusion-3-pag")):
        entry = families.entry(key)
        assert (entry.pipeline, entry.mapping_key, entry.tiny, entry.single_file) == (cls, mapping, "tiny/sd3", False)
        assert type(pipes[key]).__name__ == cls and families.family_of(pipes[key]) is family
    assert families.family_of_tiny("tiny/sd3") is family
    for cls in ("StableDiffusion3Pipeline", "StableDiffusion3InpaintPipeline", "StableDiffusion3PAGPipeline",
                "StableDiffusion3ControlNetPipeline", "StableDiffusion3ControlNetInpaintingPipeline"):
        assert families.family_of_class(cls) is family, cls
    pipe = pipes["sd3"]
    assert (pipe.vae.config.latent_channels, pipe.vae_scale_factor, pipe.transformer.config.patch_size) == (16, 8, 2)
    assert pipe.vae.config.shift_factor == 0.0609 and pipe.scheduler.config.shift == 3.0
    assert family.prompt_encoding(pipe) is None and family.batching is None


def test_sizes_are_multiples_of_the_vae_factor_times_the_patch(pipes):
    assert lab.validation.size_multiple(pipes["sd3"]) == 16
    check_sizes(pipes["sd3"], "tiny/sd3", {"height": 64, "width": 80})
    with pytest.raises(ValidationError, match=r"`height` must be a multiple of 16 .* got 72 \(use 64 or 80\)"):
        check_sizes(pipes["sd3"], "tiny/sd3", {"height": 72})


def test_controlnet_is_refused_with_the_reason():
    with pytest.raises(ValidationError, match=r"`controlnet` can't be used with the Stable Diffusion 3 pipeline"):
        lab.load_pipeline("tiny/sd3", controlnet="tiny/controlnet-sd15")


def test_the_twin_builds_the_same_weights(tmp_path):
    folder = tmp_path / "sd3"
    folder.mkdir()
    with quiet_loading():
        families.by_key("sd3").build_tiny("tiny/sd3", folder)
    assert _weights(folder) == _weights(tiny_model_path("tiny/sd3"))
