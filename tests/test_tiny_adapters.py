"""The tiny LoRAs and IP-Adapters: each loads into its base twin with diffusers' own calls
(`load_lora_weights`, `load_ip_adapter`), changes the picture at full weight, and gives the base
picture back bit for bit at weight 0 and once unloaded; each rebuilds bit for bit."""

import hashlib

import numpy as np
import pytest
import torch
from safetensors import safe_open

import img2img_lab as lab
from img2img_lab.families import family_of_tiny, tiny_call
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import TINY_MODELS, tiny_model_path

SIZE = 64
# The least mean absolute change (pixel values in [0, 1]) an adapter at full weight makes to its
# base's picture here. Measured at 1 thread: tiny/sd15-lora 0.049, tiny/sdxl-lora 0.096,
# tiny/flux-lora 0.049, tiny/sd15-ip-adapter 0.040 (0.026 at scale 0.6), tiny/sdxl-ip-adapter
# 0.079 (0.058 at scale 0.6); "a dog" instead of "a cat" changes tiny/sd15's picture by 0.028,
# tiny/sdxl's by 0.034, tiny/flux's by 0.006.
CLEAR_CHANGE = 0.02
LORAS = {"tiny/sd15-lora": "tiny/sd15", "tiny/sdxl-lora": "tiny/sdxl", "tiny/flux-lora": "tiny/flux"}
# the parts of its base each LoRA reaches (the prefixes of its keys, diffusers' get_list_adapters)
LORA_PARTS = {"tiny/sd15-lora": {"unet", "text_encoder"},
              "tiny/sdxl-lora": {"unet", "text_encoder", "text_encoder_2"},
              "tiny/flux-lora": {"transformer"}}
IP_ADAPTERS = {"tiny/sd15-ip-adapter": "tiny/sd15", "tiny/sdxl-ip-adapter": "tiny/sdxl"}
# FLUX.1's img2img makes 1024 px pictures unless told
SIZED = {"tiny/flux": {"height": SIZE, "width": SIZE}}


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=SIZE)


@pytest.fixture(scope="module")
def reference():
    return lab.load_image("coffee", size=SIZE)  # the IP-Adapter's image prompt


def _picture(pipe, base: str, init, **kwargs) -> np.ndarray:
    return pipe("a cat", image=init, strength=0.6, num_inference_steps=4, output_type="np",
                generator=torch.Generator("cpu").manual_seed(0), **tiny_call(base), **SIZED.get(base, {}),
                **kwargs).images


@pytest.fixture(scope="module")
def bases(init):
    """`bases(name)`: base twin `name` loaded for this module alone (the adapters change it; each
    test unloads its own), and its picture without adapters."""
    loaded = {}

    def get(name):
        if name not in loaded:
            pipe = lab.load_pipeline(name, cache=False)
            pipe.set_progress_bar_config(disable=True)
            loaded[name] = pipe, _picture(pipe, name, init)
        return loaded[name]

    return get


def _change(picture, base) -> float:
    return float(np.abs(picture - base).mean())


def _keys(path) -> dict:
    with safe_open(path, framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def test_the_adapter_twins_are_listed_and_described():
    for name, base in {**LORAS, **IP_ADAPTERS}.items():
        kind = "LoRA" if name in LORAS else "IP-Adapter"
        assert TINY_MODELS[name].startswith(f"random-weight smoke {kind} for {base}")
        assert family_of_tiny(name) is family_of_tiny(base)


# --------------------------------------------------------------------------------------------
# LoRAs


@pytest.mark.parametrize("name", LORAS)
def test_a_tiny_lora_is_one_file_in_diffusers_layout(name):
    folder = tiny_model_path(name)
    assert sorted(p.name for p in folder.iterdir()) == ["pytorch_lora_weights.safetensors", "tiny_model.json"]
    keys = _keys(folder / "pytorch_lora_weights.safetensors")
    assert {key.split(".")[0] for key in keys} == LORA_PARTS[name]
    assert all(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in keys)
    assert {shape[0] for key, shape in keys.items() if key.endswith(".lora_A.weight")} == {4}  # rank 4


@pytest.mark.parametrize("name", LORAS)
def test_a_tiny_lora_changes_its_base_at_weight_1_and_not_at_0(name, bases, init):
    base_name = LORAS[name]
    pipe, base = bases(base_name)
    with quiet_loading():
        pipe.load_lora_weights(tiny_model_path(name), adapter_name="x")
    try:
        reached = {part for part, names in pipe.get_list_adapters().items() if "x" in names}
        pipe.set_adapters(["x"], [0.0])
        off = _picture(pipe, base_name, init)
        pipe.set_adapters(["x"], [1.0])
        full = _picture(pipe, base_name, init)
    finally:
        pipe.unload_lora_weights()
    unloaded = _picture(pipe, base_name, init)

    assert reached == LORA_PARTS[name]
    assert np.array_equal(off, base)
    assert np.isfinite(full).all() and _change(full, base) > CLEAR_CHANGE, _change(full, base)
    assert np.array_equal(unloaded, base)


def test_the_text_encoder_loras_change_the_prompt_embeddings(bases):
    pipe, _ = bases("tiny/sdxl")

    def embeds():
        prompt, _, pooled, _ = pipe.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=False)
        width = pipe.text_encoder.config.hidden_size
        return prompt[..., :width], prompt[..., width:], pooled  # the first encoder's, the second's, its pooled

    before = embeds()
    with quiet_loading():
        pipe.load_lora_weights(tiny_model_path("tiny/sdxl-lora"), adapter_name="x")
    try:
        after = embeds()
    finally:
        pipe.unload_lora_weights()
    for old, new in zip(before, after):
        assert torch.isfinite(new).all() and (new - old).abs().mean() > 0.05


# --------------------------------------------------------------------------------------------
# IP-Adapters


@pytest.mark.parametrize("name", IP_ADAPTERS)
def test_a_tiny_ip_adapter_is_weights_and_an_image_encoder(name, bases):
    folder = tiny_model_path(name)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["image_encoder/config.json", "image_encoder/model.safetensors", "ip_adapter.safetensors",
                     "tiny_model.json"]
    keys = _keys(folder / "ip_adapter.safetensors")
    unet = bases(IP_ADAPTERS[name])[0].unet
    cross = [n for n in unet.attn_processors if not n.endswith("attn1.processor")]
    width = unet.config.cross_attention_dim
    assert {k: v for k, v in keys.items() if k.startswith("image_proj.")} == {
        "image_proj.proj.weight": (4 * width, 16), "image_proj.proj.bias": (4 * width,),
        "image_proj.norm.weight": (width,), "image_proj.norm.bias": (width,)}
    assert sorted(k for k in keys if k.startswith("ip_adapter.")) == sorted(
        f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(cross)) for kv in "kv")


@pytest.mark.parametrize("name", IP_ADAPTERS)
def test_a_tiny_ip_adapter_changes_its_base_at_scale_1_and_not_at_0(name, bases, init, reference):
    base_name = IP_ADAPTERS[name]
    pipe, base = bases(base_name)
    with quiet_loading():
        pipe.load_ip_adapter(str(tiny_model_path(name)), subfolder="", weight_name="ip_adapter.safetensors",
                             image_encoder_folder="image_encoder")
    try:
        encoder, processor = type(pipe.image_encoder).__name__, pipe.feature_extractor
        pictures = {}
        for scale in (0.0, 0.6, 1.0):
            pipe.set_ip_adapter_scale(scale)
            pictures[scale] = _picture(pipe, base_name, init, ip_adapter_image=reference)
    finally:
        pipe.unload_ip_adapter()
    unloaded = _picture(pipe, base_name, init)

    # the encoder from the folder; the image processor diffusers makes for it (the base has none)
    assert encoder == "CLIPVisionModelWithProjection" and processor.crop_size["height"] == 32
    assert np.array_equal(pictures[0.0], base)  # scale 0: the image tokens add nothing
    for scale in (0.6, 1.0):
        assert np.isfinite(pictures[scale]).all() and _change(pictures[scale], base) > CLEAR_CHANGE, scale
    assert _change(pictures[1.0], base) > _change(pictures[0.6], base)
    assert pipe.image_encoder is None and np.array_equal(unloaded, base)


# --------------------------------------------------------------------------------------------
# building


def _hashes(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "tiny_model.json"}


@pytest.mark.parametrize("name", ["tiny/sd15-lora", "tiny/sd15-ip-adapter"])
def test_an_adapter_twin_rebuilds_bit_for_bit(name, tmp_path):
    builds = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        with quiet_loading():
            family_of_tiny(name).build_tiny(name, folder)
        builds.append(_hashes(folder))
    assert any(file.endswith(".safetensors") for file in builds[0])
    assert builds[0] == builds[1] == _hashes(tiny_model_path(name))
