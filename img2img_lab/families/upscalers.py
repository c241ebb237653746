"""The SD upscalers: `StableDiffusionLatentUpscalePipeline` (x2, in latent space) and
`StableDiffusionUpscalePipeline` (x4, from pixels, with a `noise_level`).

`AutoPipelineForImage2Image` does not map them (they are not image-to-image pipelines to it), so
they load with their own class (`loader_class`); they take no `strength`, no ControlNet and have
no text-to-image relative. The x2 upscaler takes latents of an SD 1.x VAE as `image`: its tiny
twin shares tiny/sd15's VAE, so a tiny chain can hand latents over. Not batched.
"""

from __future__ import annotations

from pathlib import Path

from . import tiny_parts as parts
from .base import Entry, Family, TinyModel

LATENT_X2 = "StableDiffusionLatentUpscalePipeline"
X4 = "StableDiffusionUpscalePipeline"


def build_sd_x2_latent_upscaler(folder: Path) -> None:
    """tiny/sd-x2-latent-upscaler: K-diffusion blocks on noisy + low-res latents, Euler schedule."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel

    unet = parts.seeded(
        UNet2DConditionModel,
        sample_size=32,
        act_fn="gelu",
        attention_head_dim=8,
        norm_num_groups=None,
        block_out_channels=(32, 32, 64, 64),
        # noise level embedding (2 * 64) + pooled text embedding
        time_cond_proj_dim=128 + parts.TEXT_HIDDEN,
        conv_in_kernel=1,
        conv_out_kernel=1,
        cross_attention_dim=parts.TEXT_HIDDEN,
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
        in_channels=8,  # noisy latents + low-res latents
        out_channels=5,
        mid_block_type=None,
        only_cross_attention=False,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
        layers_per_block=1,
    )
    scheduler = EulerDiscreteScheduler(**parts.sd_scheduler_kwargs(), prediction_type="sample")
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=parts.vae(),  # the same weights as tiny/sd15's VAE, so sd15 latents decode here too
        text_encoder=parts.text_encoder(),
        tokenizer=parts.tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )
    parts.save(pipe, folder)


def build_sd_x4_upscaler(folder: Path) -> None:
    """tiny/sd-x4-upscaler: a UNet on noisy latents + the low-res RGB image, VAE factor 4."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    unet = parts.seeded(
        UNet2DConditionModel,
        sample_size=32,
        in_channels=7,  # noisy latents + the low-res RGB image
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=parts.TEXT_HIDDEN,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=1000,  # class embedding of the noise level
        norm_num_groups=8,
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=parts.vae(num_blocks=3, scaling_factor=0.08333, force_upcast=True),  # scale factor 4
        text_encoder=parts.text_encoder(hidden_act="gelu"),
        tokenizer=parts.tokenizer(),
        unet=unet,
        low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0001,
                                        beta_end=0.02),
        scheduler=DDIMScheduler(
            **parts.sd_scheduler_kwargs(), clip_sample=False, set_alpha_to_one=False, steps_offset=1,
            prediction_type="v_prediction",
        ),
        max_noise_level=350,
    )
    parts.save(pipe, folder)


class Upscalers(Family):
    key = "upscalers"
    title = "upscaler"
    classes = frozenset({LATENT_X2, X4})
    tiny_models = (
        TinyModel("tiny/sd-x2-latent-upscaler", "random-weight smoke model, SD x2 latent upscaler layout, VAE shared "
                                                "with tiny/sd15 (pictures are noise, code paths real)",
                  build_sd_x2_latent_upscaler),
        TinyModel("tiny/sd-x4-upscaler", "random-weight smoke model, SD x4 upscaler layout (pictures are noise, code "
                                         "paths real)", build_sd_x4_upscaler),
    )
    options = ("vae",)  # no ControlNet
    call_pipelines = {
        LATENT_X2: "pipelines/stable_diffusion/pipeline_stable_diffusion_latent_upscale.py",
        X4: "pipelines/stable_diffusion/pipeline_stable_diffusion_upscale.py",
    }
    latent_input = frozenset({LATENT_X2})
    entries = (
        Entry("sd-x2-latent-upscaler", LATENT_X2, "stabilityai/sd-x2-latent-upscaler", tiny="tiny/sd-x2-latent-upscaler",
              note="takes SD latents or pixels, no strength: a chain's second stage"),
        Entry("sd-x4-upscaler", X4, "stabilityai/stable-diffusion-x4-upscaler", tiny="tiny/sd-x4-upscaler",
              note="pixels in, 4x pixels out, no strength (noise_level instead)"),
    )
    text2img = False
    batching_reason = "upscalers take no strength and have no batching pieces: each cell runs as one pipeline call"

    def loader_class(self, class_name: str) -> str | None:
        return class_name  # DiffusionPipeline subclasses AutoPipelineForImage2Image does not map


FAMILY = Upscalers()
