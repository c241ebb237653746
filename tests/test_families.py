"""The model-family registry: every family implements the interface, builds its tiny twins bit for
bit as the cache holds them, and the loaders, the batched engine, prompts and chains ask it."""

import hashlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.batched import batch_refusal, can_batch
from img2img_lab.errors import ValidationError
from img2img_lab.families import (
    FAMILIES,
    GENERIC,
    REGISTRY,
    Family,
    StepBatching,
    by_key,
    family_of,
    family_of_checkpoint,
    family_of_class,
    family_of_tiny,
    tiny_models,
)
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import TINY_MODELS, tiny_model_path
from img2img_lab.vocab import DEFAULT_OPTIONS

FAMILY_DIR = Path(families.__file__).parent
BATCHING_PIECES = [name for name, _ in inspect.getmembers(StepBatching, inspect.isfunction) if not name.startswith("_")]
# the twins that are pipelines; the others are models or adapters loaded with a pipeline: the
# ControlNets (tested below and in their families' tests), the LoRAs and IP-Adapters
# (tests/test_tiny_adapters.py)
PIPELINE_TWINS = [n for n in TINY_MODELS if not n.startswith(("tiny/controlnet-", "tiny/controlnet_"))
                  and not n.endswith(("-lora", "-ip-adapter"))]


def _weights(folder: Path) -> tuple:
    """The file names of a tiny folder, and the hash of each weights file."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                   for name in files if name.endswith(".safetensors")}


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=64)


# --------------------------------------------------------------------------------------------
# the interface


def test_every_module_of_the_folder_is_registered_once():
    modules = sorted(p.stem for p in FAMILY_DIR.glob("*.py") if p.stem not in ("__init__", "base", "tiny_parts"))
    assert sorted(REGISTRY) == modules
    assert len({f.key for f in FAMILIES}) == len(FAMILIES) == len(REGISTRY)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.key)
def test_every_family_has_the_interface_parts(family):
    import diffusers

    assert isinstance(family, Family) and family is not GENERIC
    assert isinstance(family.key, str) and isinstance(family.title, str) and family.title
    # 1. detect: its classes are real diffusers pipelines, and each is found as this family
    assert family.classes and all(isinstance(getattr(diffusers, name), type) for name in family.classes)
    assert all(family_of_class(name) is family for name in family.classes)
    # 2. load: the loader class and the VAE slot are real diffusers classes
    for name in family.classes:
        direct = family.loader_class(name)
        assert direct is None or issubclass(getattr(diffusers, direct), diffusers.DiffusionPipeline)
    assert isinstance(getattr(diffusers, family.vae_component[1]), type)
    # 3. tiny twins: names under tiny/, described, each built by this family
    assert family.tiny_models
    for model in family.tiny_models:
        assert model.name.startswith("tiny/") and "random-weight" in model.description and callable(model.build)
        assert family_of_tiny(model.name) is family
    # 4. knobs: options load_pipeline knows; call pipelines and latent inputs among its classes;
    # picture arguments that its pipelines really take
    assert set(family.options) <= set(DEFAULT_OPTIONS)
    assert set(family.call_pipelines) <= family.classes and set(family.latent_input) <= family.classes
    for name in family.call_pipelines:
        call_args = inspect.signature(getattr(diffusers, name).__call__).parameters
        assert call_args  # a real __call__
    assert all(any(arg in inspect.signature(getattr(diffusers, name).__call__).parameters
                   for name in family.call_pipelines) for arg in family.picture_args)
    assert isinstance(family.text2img, bool)
    # 5. batching: the pieces batched.py calls, or None and the reason each call runs alone
    if family.batching is None:
        assert "each cell runs as one pipeline call" in family.batching_reason
    else:
        assert all(callable(getattr(family.batching, piece, None)) for piece in BATCHING_PIECES)
    assert BATCHING_PIECES  # the protocol lists them


def test_registry_lookups():
    assert TINY_MODELS == tiny_models() and PIPELINE_TWINS[:2] == ["tiny/sd15", "tiny/sdxl"]
    assert list(TINY_MODELS)[:3] == ["tiny/sd15", "tiny/sd15-lora", "tiny/sd15-ip-adapter"]  # a family's in order
    assert family_of_class("StableDiffusionXLImg2ImgPipeline").key == "sdxl"
    assert family_of_class("StableDiffusionXLControlNetUnionImg2ImgPipeline").key == "controlnet"  # detect: any ControlNet
    assert family_of_class("FluxControlNetImg2ImgPipeline").key == "flux"  # ... but FLUX.1's own, registered before
    assert family_of_class("NoSuchPipeline") is GENERIC and GENERIC.batching is None
    assert family_of(object()) is GENERIC
    assert family_of_checkpoint("v1").key == "sd" and family_of_checkpoint("xl_base").key == "sdxl"
    assert family_of_checkpoint("playground-v2-5").key == "sdxl" and family_of_checkpoint("flux-dev") is None
    assert by_key("kandinsky22") is family_of_tiny("tiny/kandinsky22")
    with pytest.raises(ValidationError, match=r"`key` must be one of .*'sd'.*got 'nope'"):
        by_key("nope")
    with pytest.raises(ValidationError, match=r"`name` must be one of .*got 'tiny/nope'"):
        family_of_tiny("tiny/nope")
    with pytest.raises(ValidationError, match=r"`name` must be one of the .* tiny models .*got 'tiny/sdxl'"):
        by_key("sd").build_tiny("tiny/sdxl", Path("unused"))


def test_the_registry_imports_no_torch():
    code = ("import sys, img2img_lab.families, img2img_lab.tiny, img2img_lab.loaders; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------
# tiny twins: built by their family module, bit for bit the cached folder, loaded as that family


def test_each_family_builds_its_tiny_twins_as_the_cache_holds_them(tmp_path):
    for family in FAMILIES:
        for model in family.tiny_models:
            folder = tmp_path / model.name.removeprefix("tiny/")
            folder.mkdir()
            with quiet_loading():
                family.build_tiny(model.name, folder)
            files, weights = _weights(folder)
            assert weights, model.name
            assert (files, weights) == _weights(tiny_model_path(model.name)), model.name


@pytest.mark.parametrize("name", PIPELINE_TWINS)
def test_each_tiny_pipeline_loads_as_its_family(name):
    try:
        pipe = lab.load_pipeline(name)
    except ValidationError as exc:
        if "torchvision" in str(exc):  # Qwen2-VL's processor (the Qwen-Image edit twins) needs it
            pytest.skip(str(exc)[:200])
        raise
    assert family_of(pipe) is family_of_tiny(name)


def test_the_tiny_controlnet_loads_as_the_controlnet_family():
    pipe = lab.load_pipeline("tiny/sd15", controlnet="tiny/controlnet-sd15")
    assert family_of(pipe) is family_of_tiny("tiny/controlnet-sd15")
    assert family_of(pipe).picture_args == ("control_image",)


# --------------------------------------------------------------------------------------------
# the hooks, as the rest of the package uses them


def test_an_upscaler_refuses_a_controlnet_before_loading_it(monkeypatch):
    from img2img_lab import loaders

    monkeypatch.setattr(loaders, "_load_component", lambda *a, **k: pytest.fail("loaded the ControlNet"))
    with pytest.raises(ValidationError, match=r"`controlnet` can't be used with the upscaler .*StableDiffusionUpscalePipeline"):
        lab.load_pipeline("tiny/sd-x4-upscaler", controlnet="tiny/controlnet-sd15", cache=False)


def test_a_kandinsky_decoder_without_a_prior_says_which_option(tmp_path):
    folder = tmp_path / "decoder"
    shutil.copytree(tiny_model_path("tiny/kandinsky22"), folder, ignore=shutil.ignore_patterns("prior"))
    with pytest.raises(ValidationError, match=r"`prior` is needed for the Kandinsky 2.2 decoder .*pass prior="):
        lab.load_pipeline(str(folder), cache=False)
    pipe = lab.load_pipeline(str(folder), prior=str(tiny_model_path("tiny/kandinsky22") / "prior"), cache=False)
    assert type(pipe).__name__ == "KandinskyV22Img2ImgCombinedPipeline" and pipe.prior_prior is not None


def test_batching_follows_the_family_and_says_why_not(init):
    call = {"prompt": "a cat", "image": init, "strength": 0.5, "generator": torch.Generator().manual_seed(0)}
    sd15 = lab.load_pipeline("tiny/sd15")
    assert can_batch(sd15, call) and batch_refusal(sd15, call) is None
    for name in ("tiny/sdxl", "tiny/kandinsky22", "tiny/sd-x2-latent-upscaler"):
        pipe = lab.load_pipeline(name)
        reason = batch_refusal(pipe, call)
        assert reason == f"{type(pipe).__name__}: {family_of(pipe).batching_reason}"
        assert not can_batch(pipe, call)
    assert "`clip_skip` is not a call argument" in batch_refusal(sd15, {**call, "clip_skip": 1})
    assert batch_refusal(sd15, {**call, "prompt": ["a", "b"]}).startswith("`prompt` must be a single string")


def test_prompt_encoding_and_chain_knobs_come_from_the_family():
    from img2img_lab.prompts import pipeline_kind

    assert pipeline_kind(lab.load_pipeline("tiny/sd15")) == "sd"
    assert pipeline_kind(lab.load_pipeline("tiny/sdxl")) == "sdxl"
    assert pipeline_kind(lab.load_pipeline("tiny/sdxl-refiner")) == "sdxl-refiner"
    assert by_key("kandinsky22").prompt_encoding(lab.load_pipeline("tiny/kandinsky22")) is None
    assert by_key("upscalers").text2img is False and by_key("sd").text2img is True
    assert by_key("upscalers").takes_latents("StableDiffusionLatentUpscalePipeline")
    assert not by_key("upscalers").takes_latents("StableDiffusionUpscalePipeline")
    assert not by_key("kandinsky22").takes_latents("KandinskyV22Img2ImgCombinedPipeline")


def test_the_family_modules_import_only_errors_and_each_other_at_the_top():
    import ast

    for path in sorted(FAMILY_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                assert id(node) in top, (path.name, node.module)
                if node.level == 2:  # the package: only its errors
                    assert node.module == "errors", (path.name, node.module)
