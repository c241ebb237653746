"""The Z-Image family: tiny/z-image loads as `ZImageImg2ImgPipeline`, the runner resizes its init
image, the twin builds bit for bit, and why it has no single file (its sweep cells equal the
direct call: tests/test_family_equality.py)."""

import hashlib

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.families import zimage
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path

FAMILY = zimage.FAMILY
ENTRY = families.entry("z-image")


@pytest.fixture(scope="module")
def pipe():
    return lab.load_pipeline("tiny/z-image")


def _weights(folder):
    """The file names of a tiny folder, and the hash of each weights file (as tests/test_families.py)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                   for name in files if name.endswith(".safetensors")}


def test_the_entry_and_the_family():
    assert "zimage" in families.REGISTRY
    assert families.REGISTRY.index("zimage") < families.REGISTRY.index("controlnet")
    assert (ENTRY.pipeline, ENTRY.mapping_key, ENTRY.tiny, ENTRY.checkpoint) == (
        "ZImageImg2ImgPipeline", "z-image", "tiny/z-image", "Tongyi-MAI/Z-Image-Turbo")
    assert not ENTRY.single_file and "text_encoder and vae" in ENTRY.note
    assert families.family_of_class("ZImagePipeline") is FAMILY and families.family_of_tiny("tiny/z-image") is FAMILY
    assert families.family_of_class("ZImageControlNetPipeline").key == "controlnet"


def test_tiny_z_image_loads_as_its_img2img_pipeline(pipe):
    assert type(pipe).__name__ == "ZImageImg2ImgPipeline" and families.family_of(pipe) is FAMILY
    assert type(pipe.text_encoder).__name__ == "Qwen3Model" and pipe.vae.config.latent_channels == 16
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (0.3611, 0.1159)
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True)
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"


def test_the_runner_resizes_the_init_image_it_never_resizes_itself(tmp_path, pipe):
    from PIL import Image

    assert zimage.IMG2IMG in FAMILY.sized_input
    big = lab.load_image("astronaut", size=96)  # diffusers fails on a 96 px image at height/width 64
    knobs = dict(strength=0.6, guidance_scale=5.0, height=64, width=64)
    spec = lab.SweepSpec(model="tiny/z-image", prompt="a cat", image=big, num_inference_steps=2, **knobs)
    result = lab.run_sweep(spec, tmp_path, progress=False, exact=True)
    assert result.df["status"].eq("ok").all(), result.df.get("error")
    with torch.no_grad():
        direct = pipe(prompt="a cat", image=big.resize((64, 64), Image.Resampling.LANCZOS), num_inference_steps=2,
                      **knobs, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    np.testing.assert_array_equal(np.asarray(result.image(0)), np.asarray(direct))


def test_the_twin_builds_bit_for_bit_as_the_cache_holds_it(tmp_path):
    built = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        with quiet_loading():
            FAMILY.build_tiny("tiny/z-image", folder)
        built.append(_weights(folder))
    assert built[0] == built[1] == _weights(tiny_model_path("tiny/z-image")) and built[0][1]


def test_a_single_file_holds_only_the_transformer(pipe, tmp_path):
    """Why `single_file` is False: diffusers reads the transformer from an original-layout file and
    asks for the text encoder and the VAE as objects."""
    from diffusers import ZImageImg2ImgPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError, infer_diffusers_model_type
    from safetensors.torch import save_file

    renames = {"all_final_layer.2-1.": "final_layer.", "all_x_embedder.2-1.": "x_embedder.",
               ".attention.to_out.0.": ".attention.out.", ".attention.norm_k.": ".attention.k_norm.",
               ".attention.norm_q.": ".attention.q_norm."}
    state = pipe.transformer.state_dict()
    original = {}
    for key, value in state.items():  # diffusers' convert_z_image_transformer_checkpoint_to_diffusers, reversed
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q.weight" in key:
            value = torch.cat([state[key.replace("to_q", name)] for name in ("to_q", "to_k", "to_v")])
            key = key.replace("to_q", "qkv")
        for new, old in renames.items():
            key = key.replace(new, old)
        original["model.diffusion_model." + key] = value.contiguous()
    path = tmp_path / "z_image_turbo.safetensors"
    save_file(original, path)
    assert infer_diffusers_model_type(original) == "z-image-turbo"
    config = str(tiny_model_path("tiny/z-image"))
    with pytest.raises(SingleFileComponentError, match="Qwen3Model"):
        ZImageImg2ImgPipeline.from_single_file(str(path), config=config, local_files_only=True)
    loaded = ZImageImg2ImgPipeline.from_single_file(str(path), config=config, local_files_only=True,
                                                    text_encoder=pipe.text_encoder, vae=pipe.vae)
    assert all(torch.equal(value, state[key]) for key, value in loaded.transformer.state_dict().items())
