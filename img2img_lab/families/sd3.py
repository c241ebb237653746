"""Stable Diffusion 3 / 3.5: `StableDiffusion3Img2ImgPipeline` and its PAG variant.

An MMDiT (`SD3Transformer2DModel`) on the latents of a 16-channel AutoencoderKL (scale factor 8,
with a shift factor), three text encoders (two CLIPs with projection, a T5), flow matching
(`FlowMatchEulerDiscreteScheduler`). Sizes must be multiples of the VAE factor times the
transformer's patch size (16: the pipeline refuses others). The tiny twin `tiny/sd3` has
SD 3.5 Medium's layout (dual-attention first block, RMS q/k norm); with `enable_pag=True` it
loads as `StableDiffusion3PAGImg2ImgPipeline`.

No single-file loading here: diffusers recognises an original SD3 file by real-size tensors (a
9216-wide adaLN bias, a 36864- or 147456-long position table), which no tiny twin can have, so
the path can't be built or tested offline; such a file is refused with its model type.

SD3's ControlNets (`SD3ControlNetModel`) exist in diffusers for text-to-image and inpainting
only: there is no SD3 ControlNet image-to-image pipeline, so `controlnet=` is refused.
"""

from __future__ import annotations

from pathlib import Path

from . import tiny_parts as parts
from .base import Entry, Family, TinyModel

IMG2IMG = "StableDiffusion3Img2ImgPipeline"
PAG_IMG2IMG = "StableDiffusion3PAGImg2ImgPipeline"

# the tiny twin's text sizes: CLIP projections (pooled) and the T5 width (the joint attention's)
CLIP_HIDDEN = parts.TEXT_HIDDEN
T5_HIDDEN = 4 * CLIP_HIDDEN  # wider than the two CLIPs side by side (64), which SD3 pads to it, as 4096 > 2048


def transformer():
    """The tiny MMDiT: SD 3.5 Medium's layout (patch 2, 16 channels, dual attention in the first
    block, RMS q/k norm), two blocks (the last is context-pre-only; PAG's default layer is
    `blocks.1`), 8 latent pixels = 64 px by default, positions for up to 512 px."""
    from diffusers import SD3Transformer2DModel

    heads, head_dim = 2, 8
    return parts.seeded(
        SD3Transformer2DModel,
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=T5_HIDDEN,
        caption_projection_dim=heads * head_dim,  # the context stream's width is the image stream's
        pooled_projection_dim=2 * CLIP_HIDDEN,  # both CLIP projections, concatenated
        out_channels=16,
        pos_embed_max_size=32,  # 32 patches * 2 * 8 = 512 px at most
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def vae():
    """SD3's AutoencoderKL: 16 latent channels, no quant convs, its scaling and shift factors,
    four blocks (scale factor 8) with tiny channels."""
    return parts.flow_vae(scaling_factor=1.5305, shift_factor=0.0609)


def scheduler():
    """SD 3.5's flow-matching schedule (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def build_sd3(folder: Path) -> None:
    """tiny/sd3: a `StableDiffusion3Pipeline` folder (three text encoders, no IP-Adapter parts)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer(),
        scheduler=scheduler(),
        vae=vae(),
        text_encoder=parts.text_encoder_with_projection(),
        tokenizer=parts.tokenizer(),
        text_encoder_2=parts.text_encoder_with_projection(),
        tokenizer_2=parts.tokenizer(pad_token="!"),
        text_encoder_3=parts.t5_encoder(hidden=T5_HIDDEN),
        tokenizer_3=parts.t5_tokenizer(),
    )
    parts.save(pipe, folder)


class StableDiffusion3(Family):
    key = "sd3"
    title = "Stable Diffusion 3 pipeline"
    classes = frozenset({
        "StableDiffusion3Pipeline", IMG2IMG, "StableDiffusion3InpaintPipeline",
        "StableDiffusion3PAGPipeline", PAG_IMG2IMG,
        "StableDiffusion3ControlNetPipeline", "StableDiffusion3ControlNetInpaintingPipeline",
    })
    tiny_models = (
        TinyModel("tiny/sd3", "random-weight smoke model, Stable Diffusion 3.5 Medium layout (MMDiT, two CLIPs "
                              "and a T5, flow matching; pictures are noise, code paths real)", build_sd3),
    )
    options = ("vae",)  # no SD3 ControlNet image-to-image pipeline in diffusers
    controlnet_class = "SD3ControlNetModel"
    call_pipelines = {IMG2IMG: "pipelines/stable_diffusion_3/pipeline_stable_diffusion_3_img2img.py",
                      PAG_IMG2IMG: "pipelines/pag/pipeline_pag_sd_3_img2img.py"}
    entries = (
        Entry("sd3", IMG2IMG, "stabilityai/stable-diffusion-3.5-medium", mapping_key="stable-diffusion-3",
              tiny="tiny/sd3",
              note="SD 3 and 3.5 (Medium, Large) load the same way; sizes are multiples of 16; no single-file "
                   "loading here (diffusers tells an SD3 file by real-size tensors a tiny twin can't have)"),
        Entry("sd3-pag", PAG_IMG2IMG, "stabilityai/stable-diffusion-3.5-medium", mapping_key="stable-diffusion-3-pag",
              tiny="tiny/sd3", load={"enable_pag": True},
              note="an SD3 checkpoint with enable_pag=True (pag_applied_layers to choose blocks, default blocks.1): "
                   "shares tiny/sd3"),
    )
    latent_input = frozenset({IMG2IMG})
    batching_reason = ("SD3's MMDiT (three text encoders, pooled projections, flow matching) has no batching "
                       "pieces yet: each cell runs as one pipeline call")

    def size_multiple(self, pipe) -> int | None:
        """The VAE factor times the transformer's patch size (16 for SD3: the pipeline refuses others)."""
        factor = super().size_multiple(pipe)
        patch = getattr(getattr(getattr(pipe, "transformer", None), "config", None), "patch_size", None)
        if factor is None or isinstance(patch, bool) or not isinstance(patch, int) or patch <= 1:
            return factor
        return factor * patch

    def prompt_encoding(self, pipe) -> str | None:
        return None  # three encoders with a T5: none of compel's SD/SDXL encodings


FAMILY = StableDiffusion3()
