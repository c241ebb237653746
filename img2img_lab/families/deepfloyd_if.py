"""DeepFloyd IF, stage I: `IFImg2ImgPipeline`, a T5-conditioned UNet in pixel space.

No autoencoder: the UNet denoises 64 px RGB pictures directly (3 channels in, 6 out: epsilon and
a learned variance range), with DDPM and dynamic thresholding. Its `__call__` takes no
`height`/`width` and resizes every init image to its UNet's `sample_size` on the shorter side
(64 px, the other side a multiple of 8): stage I's output is 64 px whatever size a cell asks
(run_sweep resizes the init image first, then the pipeline resizes it again). Stages II and III
(`IFImg2ImgSuperResolutionPipeline`, the x4 upscaler) are super-resolution pipelines that take
stage I's picture as well as the original: not image-to-image pipelines of the key table.

The tiny twin `tiny/if` has no safety checker and no watermarker (both optional in diffusers).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ValidationError
from . import tiny_parts as parts
from .base import Entry, Family, LoadContext, TinyModel

IMG2IMG = "IFImg2ImgPipeline"
STAGE_I_SIZE = 64  # the real stage I UNet's sample_size, and the tiny twin's


def unet():
    """Stage I's UNet, tiny: pixel space (3 in, 6 out), T5 text embedding added to the time
    embedding and projected into cross-attention, simple cross-attention blocks, scale-shift norm."""
    from diffusers import UNet2DConditionModel

    return parts.seeded(
        UNet2DConditionModel,
        sample_size=STAGE_I_SIZE,
        in_channels=3,
        out_channels=6,  # epsilon + learned variance range
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32,
        encoder_hid_dim=parts.T5_HIDDEN,
        encoder_hid_dim_type="text_proj",  # what diffusers infers from encoder_hid_dim, said explicitly
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=8,
    )


def scheduler():
    """Stage I's DDPM, as diffusers' conversion script builds it: cosine betas, learned variance
    range, dynamic thresholding (ratio 0.95, max 1.5)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        prediction_type="epsilon",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
    )


def build_if(folder: Path) -> None:
    """tiny/if: an `IFPipeline` folder (stage I) without safety checker and watermarker."""
    from diffusers import IFPipeline

    pipe = IFPipeline(
        tokenizer=parts.t5_tokenizer(),
        text_encoder=parts.t5_encoder(),
        unet=unet(),
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    parts.save(pipe, folder)


class DeepFloydIF(Family):
    key = "if"
    title = "DeepFloyd IF pipeline"
    classes = frozenset({"IFPipeline", IMG2IMG, "IFInpaintingPipeline", "IFSuperResolutionPipeline",
                         "IFImg2ImgSuperResolutionPipeline", "IFInpaintingSuperResolutionPipeline"})
    tiny_models = (
        TinyModel("tiny/if", "random-weight smoke model, DeepFloyd IF stage I layout (T5 encoder, pixel-space "
                             "UNet, 64 px; pictures are noise, code paths real)", build_if),
    )
    options = ()  # no VAE to replace, no ControlNet
    call_pipelines = {IMG2IMG: "pipelines/deepfloyd_if/pipeline_if_img2img.py"}
    entries = (
        Entry("if", IMG2IMG, "DeepFloyd/IF-I-XL-v1.0", mapping_key="if", tiny="tiny/if",
              note="pixel-space stage I: 64 px on the shorter side out, whatever size is asked (the rows record "
                   "it); stages II/III are super-resolution pipelines; the real checkpoints are gated (accept the "
                   "license on the hub)"),
    )
    batching_reason = ("DeepFloyd IF denoises pixels with a learned variance and dynamic thresholding; it has no "
                       "batching pieces: each cell runs as one pipeline call")

    def load_extras(self, ctx: LoadContext) -> dict:
        """Nothing to add; `vae=` and `controlnet=` are refused (IF has neither)."""
        for name in ("vae", "controlnet"):
            if ctx.options.get(name) is not None:
                raise ValidationError(
                    f"`{name}` can't be used with the {self.title} {ctx.name!r} ({ctx.class_name}): "
                    f"it denoises pixels, with no {'autoencoder' if name == 'vae' else 'ControlNet'}"
                )
        return {}

    def prompt_encoding(self, pipe) -> str | None:
        return None  # a T5 encoder: none of compel's SD/SDXL encodings

    def size_multiple(self, pipe) -> int | None:
        """None: no size multiple to check; the pipeline resizes every init image to its UNet's
        `sample_size` (64 px on the shorter side) itself."""
        return None


FAMILY = DeepFloydIF()
