"""Kandinsky 3 and DeepFloyd IF stage I: tiny/kandinsky3 and tiny/if load as their image-to-image
pipelines and families, their sizes are checked as the pipelines need, and they build the same
weights every time (their sweep cells equal the direct call: tests/test_family_equality.py)."""

import hashlib
from pathlib import Path

import pytest

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.errors import ValidationError
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path
from img2img_lab.validation import check_sizes, size_multiple

KEYS = ("kandinsky3", "if")
PIPELINES = {"kandinsky3": ("Kandinsky3Img2ImgPipeline", "kandinsky3"), "if": ("IFImg2ImgPipeline", "if")}


def _weights(folder: Path) -> tuple:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in files if n.endswith(".safetensors")}


@pytest.fixture(scope="module")
def pipes():
    return {key: lab.load_pipeline(families.entry(key).tiny, **families.entry(key).load) for key in KEYS}


@pytest.mark.parametrize("key", KEYS)
def test_the_entry_loads_as_its_pipeline_and_family(pipes, key):
    entry, pipe = families.entry(key), pipes[key]
    cls, family_key = PIPELINES[key]
    assert (entry.pipeline, entry.mapping_key, entry.tiny, entry.single_file) == (cls, key, f"tiny/{key}", False)
    assert type(pipe).__name__ == cls
    family = families.by_key(family_key)
    assert families.family_of(pipe) is family is families.family_of_tiny(entry.tiny)
    assert family.prompt_encoding(pipe) is None and family.batching is None
    assert type(pipe.text_encoder).__name__ == "T5EncoderModel"


def test_kandinsky3_has_a_movq_and_sizes_of_its_unet_multiple(pipes):
    pipe, family = pipes["kandinsky3"], families.by_key("kandinsky3")
    assert family.vae_component == ("movq", "VQModel") and type(pipe.movq).__name__ == "VQModel"
    assert families.family_of_class("Kandinsky3Pipeline") is family
    assert size_multiple(pipe) == 16  # MoVQ factor 8 * the UNet's one downsampling
    with pytest.raises(ValidationError, match=r"`width` must be a multiple of 16 .* got 72 \(use 64 or 80\)"):
        check_sizes(pipe, "tiny/kandinsky3", {"width": 72})


def test_if_has_no_autoencoder_and_no_size_multiple(pipes):
    pipe, family = pipes["if"], families.by_key("if")
    assert getattr(pipe, "vae", None) is None and pipe.unet.config.sample_size == 64
    assert (pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (3, 6)
    assert pipe.scheduler.config.variance_type == "learned_range" and pipe.scheduler.config.thresholding
    assert pipe.safety_checker is None and pipe.watermarker is None
    for cls in ("IFPipeline", "IFInpaintingPipeline", "IFSuperResolutionPipeline", "IFImg2ImgSuperResolutionPipeline"):
        assert families.family_of_class(cls) is family, cls
    assert size_multiple(pipe) is None
    check_sizes(pipe, "tiny/if", {"height": 72})  # nothing to check: the pipeline resizes to 64 px itself
    for option in ("vae", "controlnet"):
        with pytest.raises(ValidationError, match=rf"`{option}` can't be used with the DeepFloyd IF pipeline"):
            lab.load_pipeline("tiny/if", **{option: "tiny/sd15"})


@pytest.mark.parametrize("key", KEYS)
def test_the_twin_builds_the_same_weights(key, tmp_path):
    name = families.entry(key).tiny
    folder = tmp_path / key
    folder.mkdir()
    with quiet_loading():
        families.family_of_tiny(name).build_tiny(name, folder)
    assert _weights(folder) == _weights(tiny_model_path(name))
