"""The parts every tiny twin is built from: seeded construction, a byte-level CLIP tokenizer, tiny
CLIP text encoders, a tiny AutoencoderKL, the SD training schedule, saving, and the parts of the
adapter twins (seeded LoRA layers, an IP-Adapter and its CLIP image encoder).

Each part seeds torch itself (`seeded`), so a component's weights depend only on its own code:
two families that build "the same" part (tiny/sd15's VAE and the x2 latent upscaler's) get the
very same weights. Changing any value here changes tiny weights: bump `tiny.VERSION` with it.
torch, diffusers and transformers are imported inside the functions.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

SEED = 0
# Text encoders: tiny, with the byte-level vocabulary written by `tokenizer()`.
TEXT_HIDDEN = 32
VOCAB_SIZE = 2 * 256 + 2
BOS_ID, EOS_ID = 512, 513


def seeded(cls, *args, **kwargs):
    """`cls(*args, **kwargs)` right after `torch.manual_seed(SEED)`: weights that depend on the code only."""
    import torch

    torch.manual_seed(SEED)
    return cls(*args, **kwargs)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (also CLIP's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer(pad_token: str = "<|endoftext|>"):
    """A real CLIPTokenizer on a byte-level vocabulary with no merges (one token per byte).

    ``pad_token="!"`` mimics SDXL's second tokenizer.
    """
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE and vocab["<|startoftext|>"] == BOS_ID
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        # local_files_only: a local folder; said explicitly, so the saved tokenizer_config.json is the
        # same whether or not HF_HUB_OFFLINE is set while building (transformers records the flag)
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77, pad_token=pad_token, local_files_only=True)


def text_config(**overrides):
    """A tiny `CLIPTextConfig` over the byte vocabulary; `overrides` replace its values."""
    from transformers import CLIPTextConfig

    config = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,  # SDXL reads hidden_states[-2]
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        layer_norm_eps=1e-5,
        hidden_act="quick_gelu",
        projection_dim=TEXT_HIDDEN,
    )
    config.update(overrides)
    return CLIPTextConfig(**config)


def text_encoder(**overrides):
    """A seeded tiny `CLIPTextModel` (SD 1.x's text encoder, SDXL's first)."""
    from transformers import CLIPTextModel

    return seeded(CLIPTextModel, text_config(**overrides))


def text_encoder_with_projection(**overrides):
    """A seeded tiny `CLIPTextModelWithProjection` (SDXL's second text encoder, Kandinsky's prior's)."""
    from transformers import CLIPTextModelWithProjection

    return seeded(CLIPTextModelWithProjection, text_config(**overrides))


def vae(num_blocks: int = 4, scaling_factor: float = 0.18215, force_upcast: bool = True):
    """AutoencoderKL with the real scale factor ``2 ** (num_blocks - 1)`` and tiny channels."""
    from diffusers import AutoencoderKL

    channels = (8, 16, 32, 32)[-num_blocks:]
    return seeded(
        AutoencoderKL,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * num_blocks,
        up_block_types=("UpDecoderBlock2D",) * num_blocks,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def flow_vae(scaling_factor: float, shift_factor: float, sample_size: int = 256):
    """The 16-channel AutoencoderKL of FLUX.1, SD3 and Z-Image: scale factor 8 as the real ones,
    no quant convs, the model's own scaling and shift factors, tiny channels."""
    from diffusers import AutoencoderKL

    return seeded(
        AutoencoderKL,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )


def sd_scheduler_kwargs() -> dict:
    """The SD 1.x / SDXL training schedule, as scheduler keyword arguments."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def save(model, folder: Path) -> None:
    """`save_pretrained` in safetensors: a pipeline or a single model, as a downloaded checkpoint has it."""
    model.save_pretrained(folder, safe_serialization=True)


# --------------------------------------------------------------------------------------------
# T5 (FLUX's and SD3's second/third text encoder, DeepFloyd IF's and Kandinsky 3's only one)

T5_HIDDEN = 32


def t5_tokenizer(model_max_length: int = 512):
    """A real T5 tokenizer (sentencepiece-style Unigram, built with `tokenizers`), offline.

    Its vocabulary: `<pad>` 0, `</s>` 1, `<unk>` 2 as T5's, the word boundary `▁`, the printable
    ASCII characters and `▁a`..`▁z`: every text tokenizes, one token per character mostly.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(chr(c), -2.0) for c in range(32, 127)] + [("▁" + chr(c), -1.5) for c in range(97, 123)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=model_max_length)


T5_VOCAB = 4 + 95 + 26  # the size of `t5_tokenizer()`'s vocabulary


def t5_encoder(hidden: int = T5_HIDDEN, **overrides):
    """A seeded tiny `T5EncoderModel` over `t5_tokenizer()`'s vocabulary."""
    from transformers import T5Config, T5EncoderModel

    config = dict(vocab_size=T5_VOCAB, d_model=hidden, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    config.update(overrides)
    return seeded(T5EncoderModel, T5Config(**config))


# --------------------------------------------------------------------------------------------
# Qwen2 byte-level BPE (Qwen-Image's, Z-Image's and FLUX.2 [klein]'s tokenizers)

QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")


def qwen2_tokenizer(extra_special: tuple = ()):
    """A real `Qwen2Tokenizer`: the 256 byte characters, no merges, then Qwen's special tokens
    (chat markers and the vision placeholders Qwen2.5-VL's processor inserts) and `extra_special`.
    Returns the tokenizer; its vocabulary size is `len(tokenizer)`."""
    from transformers import Qwen2Tokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        tok = Qwen2Tokenizer.from_pretrained(folder, local_files_only=True, unk_token=None,
                                             bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                             errors="replace")
        tok.add_special_tokens({"additional_special_tokens": [t for t in QWEN_SPECIAL + tuple(extra_special)
                                                              if t != "<|endoftext|>"]})
        return tok


# --------------------------------------------------------------------------------------------
# Adapters: the tiny LoRAs and IP-Adapters, made for a twin's UNet, transformer and text encoders

LORA_RANK = 4
# What diffusers' LoRA trainers target: a UNet's (and FLUX's image stream's) attention
# projections, and CLIP's
ATTENTION_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
IP_ADAPTER_WEIGHTS = "ip_adapter.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"  # beside the weights, where `load_ip_adapter` looks by default
IP_IMAGE_TOKENS = 4  # the original IP-Adapter's: one image embedding -> 4 extra context tokens


def lora_layers(model, target_modules, up_scale: float = 1.0) -> dict:
    """A seeded rank-4 LoRA (alpha 4) on `model`'s `target_modules`, in peft's layout (the state
    dict the pipelines' `save_lora_weights` takes).

    peft's `init_lora_weights=False` draws both matrices at random (a trained LoRA's `up` matrix is
    not zero either), so the LoRA changes the picture at once; `up_scale` multiplies the `up`
    (lora_B) matrices where a twin's pictures need a stronger change to show. `model` gets the
    LoRA layers injected: pass one built for the purpose.
    """
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights=False,
                        target_modules=list(target_modules))
    torch.manual_seed(SEED)
    layers = get_peft_model_state_dict(inject_adapter_in_model(config, model))
    return {k: v * up_scale if k.endswith(".lora_B.weight") else v for k, v in layers.items()}


def image_encoder():
    """A seeded tiny `CLIPVisionModelWithProjection`, an IP-Adapter's image encoder: 32 px pictures
    in 8 px patches, image embeddings of 16 (`projection_dim`), a width unlike either tiny UNet's
    cross-attention (as ViT-H's 1024 is unlike SD 1.5's 768)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5)
    return seeded(CLIPVisionModelWithProjection, config)


def ip_adapter_weights(unet, image_embed_dim: int) -> dict:
    """A seeded IP-Adapter for `unet`, in the original IP-Adapter's layout that diffusers'
    `load_ip_adapter` reads from one `.safetensors`:

    - `image_proj.proj.*`, `image_proj.norm.*`: an `ImageProjection` (image embedding of
      `image_embed_dim` -> 4 tokens of the UNet's cross-attention width);
    - `ip_adapter.<n>.to_k_ip.weight`, `ip_adapter.<n>.to_v_ip.weight`: the image tokens' key and
      value projections of each cross-attention, numbered 1, 3, 5, ... in `unet.attn_processors`
      order (each self-attention before it takes the even number), as diffusers counts them.

    Both parts keep their modules' own (seeded) initialisation, which changes the picture clearly.
    """
    import torch
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection

    torch.manual_seed(SEED)
    projection = ImageProjection(cross_attention_dim=unet.config.cross_attention_dim,
                                 image_embed_dim=image_embed_dim, num_image_text_embeds=IP_IMAGE_TOKENS).state_dict()
    weights = {"image_proj.proj.weight": projection["image_embeds.weight"],
               "image_proj.proj.bias": projection["image_embeds.bias"],
               "image_proj.norm.weight": projection["norm.weight"],
               "image_proj.norm.bias": projection["norm.bias"]}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):  # self-attention: no image tokens
            continue
        to_k = unet.get_submodule(name.removesuffix(".processor")).to_k
        processor = IPAdapterAttnProcessor(hidden_size=to_k.out_features, cross_attention_dim=to_k.in_features,
                                           num_tokens=IP_IMAGE_TOKENS).state_dict()
        weights[f"ip_adapter.{key_id}.to_k_ip.weight"] = processor["to_k_ip.0.weight"]
        weights[f"ip_adapter.{key_id}.to_v_ip.weight"] = processor["to_v_ip.0.weight"]
        key_id += 2
    return weights


def save_ip_adapter(unet, folder: Path) -> None:
    """An IP-Adapter folder for `unet`: `ip_adapter.safetensors` and its `image_encoder/`."""
    from safetensors.torch import save_file

    encoder = image_encoder()
    save(encoder, Path(folder) / IMAGE_ENCODER_FOLDER)
    save_file(ip_adapter_weights(unet, encoder.config.projection_dim), Path(folder) / IP_ADAPTER_WEIGHTS,
              metadata={"format": "pt"})
