"""Z-Image: `ZImageImg2ImgPipeline` (Tongyi-MAI/Z-Image-Turbo and the base Z-Image).

A single-stream DiT (`ZImageTransformer2DModel`) over a Qwen3 text encoder's second-to-last
hidden states (the prompt wrapped in Qwen3's chat template), FLUX.1's 16-channel AutoencoderKL
and flow-matching Euler at a fixed shift. The init image is not resized: `height`/`width` default
to its size and must equal it (diffusers fails on a shape mismatch otherwise). Turbo runs with
`guidance_scale` 0 and ~8 steps (its model card); 5.0 is the signature's default, the base
model's. Tiny twin `tiny/z-image`.
"""

from __future__ import annotations

from pathlib import Path

from . import tiny_parts as parts
from .base import Entry, Family, TinyModel

TEXT2IMG = "ZImagePipeline"
IMG2IMG = "ZImageImg2ImgPipeline"

TEXT_HIDDEN = 16  # the text encoder's hidden size: the transformer's cap_feat_dim
# Qwen3's chat template, as far as the pipeline uses it: user turns, the generation prompt, and
# the empty thinking block it adds when `enable_thinking` is False (the pipeline passes True)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
# Z-Image-Turbo's schedule (its scheduler_config.json); the base Z-Image's shift is 6
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def tokenizer():
    """Qwen3's tokenizer: byte-level, Qwen's special tokens, its chat template."""
    tok = parts.qwen2_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def text_encoder():
    """A seeded tiny `Qwen3Model` (the real checkpoint's class: the pipeline reads hidden states only)."""
    from transformers import Qwen3Config, Qwen3Model

    tok = tokenizer()
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=TEXT_HIDDEN, intermediate_size=32,
        num_hidden_layers=2,  # the pipeline reads hidden_states[-2]
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,  # grouped-query attention, as Qwen3-4B's
        max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    return parts.seeded(Qwen3Model, config).eval()


def transformer():
    """The tiny single-stream DiT: 2x2 patches of 16 channels, RoPE axes summing to its head size
    16, the real axis lengths, one noise and one context refiner layer."""
    from diffusers import ZImageTransformer2DModel

    return parts.seeded(
        ZImageTransformer2DModel, all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=TEXT_HIDDEN,
        rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[1536, 512, 512],
    )


def vae():
    """FLUX.1's AutoencoderKL layout: factor 8, 16 latent channels, its scaling and shift factors,
    no quant convs; tiny widths."""
    return parts.flow_vae(scaling_factor=0.3611, shift_factor=0.1159, sample_size=1024)


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def build_z_image(folder: Path) -> None:
    """tiny/z-image: a `ZImagePipeline` folder (as Tongyi-MAI/Z-Image-Turbo), img2img via AutoPipeline."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline(scheduler=scheduler(), vae=vae(), text_encoder=text_encoder(), tokenizer=tokenizer(),
                          transformer=transformer())
    parts.save(pipe, folder)


class ZImage(Family):
    key = "zimage"
    title = "Z-Image pipeline"
    classes = frozenset({TEXT2IMG, IMG2IMG, "ZImageInpaintPipeline", "ZImageOmniPipeline"})
    tiny_models = (
        TinyModel("tiny/z-image", "random-weight smoke model, Z-Image-Turbo layout: Qwen3 text encoder, "
                                  "single-stream DiT, 16-channel VAE (pictures are noise, code paths real)",
                  build_z_image),
    )
    options = ("vae",)  # its ControlNet pipelines are the controlnet family's
    call_pipelines = {IMG2IMG: "pipelines/z_image/pipeline_z_image_img2img.py"}
    # where a spec is silent: Z-Image-Turbo's model card values (guidance-free, 9 scheduler steps =
    # 8 transformer passes), not the signature's 5.0 and 50, which are a base model's
    call_defaults = {IMG2IMG: {"guidance_scale": 0.0, "num_inference_steps": 9}}
    entries = (
        Entry("z-image", IMG2IMG, "Tongyi-MAI/Z-Image-Turbo", mapping_key="z-image", tiny="tiny/z-image",
              note="guidance_scale 0.0 and 9 steps where a spec is silent (Turbo's card; the signature's 5.0 and 50 "
                   "are a base model's: set them for one); the pipeline "
                   "does not resize its init image (img2img_lab resizes it to height/width first, as a user must). "
                   "No single file here: diffusers' from_single_file reads only the transformer from one and "
                   "needs text_encoder and vae passed in, which load_pipeline does not do"),
    )
    sized_input = frozenset({IMG2IMG})  # it never resizes `image`: the runner gives it height x width
    batching_reason = ("Z-Image's per-prompt caption lists and single-stream patches have no batching pieces: "
                       "each cell runs as one pipeline call")


FAMILY = ZImage()
