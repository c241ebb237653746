"""The FLUX.2 family: tiny/flux2 and tiny/flux2-klein load as `Flux2Pipeline` and
`Flux2KleinPipeline`, they take several references (their sweep cells equal the direct call
at 64 px: tests/test_family_equality.py), and each twin builds the same weights every time. FLUX.2-dev itself (its
tokenizer a PixtralProcessor) is a clear error without torchvision."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.errors import ValidationError
from img2img_lab.families import flux2
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path

FAMILY = flux2.FAMILY
KEYS = ("flux2", "flux2-klein")
SIZE = 64
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def _weights(folder: Path) -> tuple:
    """The file names of a tiny folder, and the hash of each weights file (as tests/test_families.py)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                   for n in files if n.endswith(".safetensors")}


def _call(key: str) -> dict:
    """The tests' call arguments: the twin's own, explicit guidance (the distilled [klein] 4B's
    model card says 1.0: it ignores more, with a warning), a 64 px output."""
    return dict(families.tiny_call(families.entry(key).tiny), num_inference_steps=2,
                guidance_scale=4.0 if key == "flux2" else 1.0, height=SIZE, width=SIZE)


def _direct(pipe, init, seed: int, **call):
    return pipe(prompt="a cat", image=init, **call, generator=torch.Generator("cpu").manual_seed(seed)).images[0]


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=SIZE)


@pytest.fixture(scope="module")
def pipes():
    return {key: lab.load_pipeline(families.entry(key).tiny, **families.entry(key).load) for key in KEYS}


# --------------------------------------------------------------------------------------------
# the key table


def test_the_key_table_and_the_lookups():
    assert "flux2" in families.REGISTRY
    assert families.REGISTRY.index("flux2") < families.REGISTRY.index("controlnet")
    assert [(e.key, e.pipeline, e.mapping_key, e.tiny, e.checkpoint) for e in FAMILY.entries] == [
        ("flux2", "Flux2Pipeline", "flux2", "tiny/flux2", "black-forest-labs/FLUX.2-dev"),
        ("flux2-klein", "Flux2KleinPipeline", "flux2-klein", "tiny/flux2-klein", "black-forest-labs/FLUX.2-klein-4B"),
    ]
    for entry in FAMILY.entries:
        assert entry.image_list and not entry.single_file and entry.pipeline in FAMILY.call_pipelines
        assert families.entry(entry.key) is entry and families.family_of_tiny(entry.tiny) is FAMILY
    # every FLUX.2 pipeline is this family's; FLUX.1's are not
    for name in ("Flux2Pipeline", "Flux2KleinPipeline", "Flux2KleinInpaintPipeline", "Flux2KleinKVPipeline",
                 "Flux2ModularPipeline", "Flux2KleinModularPipeline", "Flux2KleinBaseModularPipeline"):
        assert families.family_of_class(name) is FAMILY, name
    assert families.family_of_class("FluxKontextPipeline").key == "flux"
    assert FAMILY.vae_component == ("vae", "AutoencoderKLFlux2")
    assert "guidance_scale" in FAMILY.knob_hints["strength"]
    assert families.tiny_call("tiny/flux2") == {"text_encoder_out_layers": (1, 2, 3), "max_sequence_length": 256}


def test_every_entry_maps_to_its_pipeline_in_diffusers():
    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING

    for entry in FAMILY.entries:
        assert AUTO_IMAGE2IMAGE_PIPELINES_MAPPING[entry.mapping_key].__name__ == entry.pipeline


# --------------------------------------------------------------------------------------------
# the twins


@pytest.mark.parametrize("key", KEYS)
def test_each_entry_loads_as_its_pipeline_and_family(pipes, key):
    entry, pipe = families.entry(key), pipes[key]
    assert type(pipe).__name__ == entry.pipeline and families.family_of(pipe) is FAMILY
    assert pipe.vae_scale_factor == 8 and FAMILY.size_multiple(pipe) == 16  # VAE 8, latents patchified 2x2
    assert FAMILY.prompt_encoding(pipe) is None
    assert type(pipe.text_encoder).__name__ == {"flux2": "Mistral3ForConditionalGeneration",
                                                "flux2-klein": "Qwen3ForCausalLM"}[key]


def test_the_prompt_and_several_references_change_the_picture(pipes, init):
    other = lab.load_image("cat", size=(SIZE, SIZE))
    for key in KEYS:
        pipe, call = pipes[key], _call(key)
        one = np.asarray(_direct(pipe, init, 0, **call))
        dog = np.asarray(pipe(prompt="a dog", image=init, **call,
                              generator=torch.Generator("cpu").manual_seed(0)).images[0])
        two = np.asarray(_direct(pipe, [init, other], 0, **call))
        assert two.shape == one.shape == (SIZE, SIZE, 3)
        assert not np.array_equal(one, dog) and not np.array_equal(one, two), key


def test_the_twins_build_the_same_weights(tmp_path):
    for model in FAMILY.tiny_models:
        builds = []
        for run in ("a", "b"):
            folder = tmp_path / run / model.name.removeprefix("tiny/")
            folder.mkdir(parents=True)
            with quiet_loading():
                FAMILY.build_tiny(model.name, folder)
            builds.append(_weights(folder))
        assert builds[0][1] and builds[0] == builds[1] == _weights(tiny_model_path(model.name)), model.name
    tokenizer = tiny_model_path("tiny/flux2") / "tokenizer"
    assert json.loads((tokenizer / "processor_config.json").read_text())["processor_class"] == "PixtralProcessor"
    assert (tokenizer / "preprocessor_config.json").is_file() and (tokenizer / "chat_template.jinja").is_file()


# --------------------------------------------------------------------------------------------
# FLUX.2-dev's PixtralProcessor


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
def test_without_torchvision_a_processor_checkpoint_is_a_clear_error(tmp_path):
    folder = tmp_path / "flux2-dev-layout"
    folder.mkdir()
    index = json.loads((tiny_model_path("tiny/flux2") / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "tokenizer": ["transformers", "PixtralProcessor"]}))
    with pytest.raises(ValidationError, match=r"Flux2Pipeline.*torchvision"):
        lab.load_pipeline(str(folder))


def test_a_distilled_klein_ignores_guidance_scale_which_is_refused_or_recorded_as_not_applied(tmp_path):
    """FLUX.2 [klein] 4B/9B (`is_distilled`) ignore guidance_scale: a sweep of it on klein alone is an
    error saying what to sweep instead; beside FLUX.2-dev (which takes it) klein's rows record it."""
    base = dict(prompt="a cat", image="astronaut", num_inference_steps=2, guidance_scale=[1.0, 8.0])
    with pytest.raises(ValidationError, match=r"`guidance_scale`=1\.0: Flux2KleinPipeline .*is_distilled.*Base"):
        lab.run_sweep(dict(base, model="tiny/flux2-klein"), tmp_path / "klein", progress=False)
    assert not (tmp_path / "klein" / "results.parquet").exists()
    result = lab.run_sweep(dict(base, model=["tiny/flux2", "tiny/flux2-klein"]), tmp_path / "both", progress=False)
    by_model = {m: rows for m, rows in result.df.groupby("model")}
    assert set(by_model["tiny/flux2-klein"]["not_applied"]) == {"guidance_scale"}
    assert set(by_model["tiny/flux2"]["not_applied"]) == {""}
    klein = [np.asarray(result.image(i)) for i in by_model["tiny/flux2-klein"].index]
    assert np.array_equal(*klein)  # ignored indeed: the same picture at 1.0 and 8.0
