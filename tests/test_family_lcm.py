"""The Latent Consistency Model family: tiny/lcm loads as LatentConsistencyModelImg2ImgPipeline and
builds the same weights every time (its sweep cells equal the direct call: tests/test_family_equality.py)."""

import hashlib
from pathlib import Path

import pytest

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path

ENTRY = families.entry("lcm")


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


def test_the_twin_builds_the_same_weights(tmp_path):
    folder = tmp_path / "lcm"
    folder.mkdir()
    with quiet_loading():
        families.by_key("lcm").build_tiny("tiny/lcm", folder)
    assert _weights(folder) == _weights(tiny_model_path("tiny/lcm"))
