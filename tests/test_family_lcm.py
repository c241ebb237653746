"""The Latent Consistency Model family: tiny/lcm loads as LatentConsistencyModelImg2ImgPipeline, its
sweep cells equal the direct call bit for bit, and it builds the same weights every time."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path

ENTRY = families.entry("lcm")
CALL = dict(num_inference_steps=2, strength=0.5, guidance_scale=8.5)


def _weights(folder: Path) -> tuple:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in files if n.endswith(".safetensors")}


@pytest.fixture(scope="module")
def pipe():
    return lab.load_pipeline(ENTRY.tiny, **ENTRY.load)


def test_the_entry_loads_as_its_pipeline_and_family(pipe):
    assert (ENTRY.key, ENTRY.mapping_key, ENTRY.single_file) == ("lcm", "lcm", False)
    assert type(pipe).__name__ == ENTRY.pipeline == "LatentConsistencyModelImg2ImgPipeline"
    assert families.family_of(pipe) is families.by_key("lcm") is families.family_of_tiny("tiny/lcm")
    assert families.family_of_class("LatentConsistencyModelPipeline").key == "lcm"
    assert pipe.unet.config.time_cond_proj_dim is not None and type(pipe.scheduler).__name__ == "LCMScheduler"
    family = families.family_of(pipe)
    assert "negative_prompt" in family.knob_hints and family.prompt_encoding(pipe) is None
    assert family.batching is None and "each cell runs as one pipeline call" in family.batching_reason


@pytest.mark.equality
def test_a_sweep_equals_the_direct_call(pipe, tmp_path):
    spec = lab.SweepSpec(model=ENTRY.tiny, prompt="a cat", image="astronaut", seed=[0, 1], **CALL, options=dict(ENTRY.load))
    result = lab.run_sweep(spec, tmp_path, progress=False, exact=True)
    df = result.df
    assert df["status"].eq("ok").all() and len(df) == 2
    # LCM's call has no height/width: the run resizes the init image to the tiny size
    init = lab.load_image("astronaut").resize((64, 64), Image.Resampling.LANCZOS)
    for i, row in df.iterrows():
        direct = pipe(prompt="a cat", image=init, **CALL,
                      generator=torch.Generator("cpu").manual_seed(int(row["seed"]))).images[0]
        np.testing.assert_array_equal(np.asarray(direct), np.asarray(result.image(i)))


def test_the_twin_builds_the_same_weights(tmp_path):
    folder = tmp_path / "lcm"
    folder.mkdir()
    with quiet_loading():
        families.by_key("lcm").build_tiny("tiny/lcm", folder)
    assert _weights(folder) == _weights(tiny_model_path("tiny/lcm"))
