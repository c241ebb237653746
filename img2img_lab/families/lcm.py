"""Latent Consistency Models: `LatentConsistencyModelImg2ImgPipeline` (an SD 1.5 UNet distilled to
take its guidance scale as an embedding, `time_cond_proj_dim`, and an `LCMScheduler`).

A checkpoint such as SimianLuo/LCM_Dreamshaper_v7 is a `LatentConsistencyModelPipeline` folder,
which `AutoPipelineForImage2Image` maps ("lcm") to the img2img class. Its call differs from SD's:
4 steps and guidance 8.5 by default, the guidance scale goes into the UNet (no classifier-free
guidance batch) and there is no negative prompt. LCM-LoRA, the other way to LCM, is an SD/SDXL
checkpoint with a LoRA and the "lcm" scheduler: those pipelines stay in their own families.
"""

from __future__ import annotations

from pathlib import Path

from . import tiny_parts as parts
from .base import Entry, Family, TinyModel
from .sd import SD15_UNET

TEXT2IMG = "LatentConsistencyModelPipeline"
IMG2IMG = "LatentConsistencyModelImg2ImgPipeline"
GUIDANCE_EMBED_DIM = 32  # the UNet's time_cond_proj_dim (256 in the real checkpoint)


def scheduler():
    """LCM_Dreamshaper_v7's LCMScheduler: SD's training schedule, 50 original steps, leading spacing."""
    from diffusers import LCMScheduler

    return LCMScheduler(
        **parts.sd_scheduler_kwargs(),
        original_inference_steps=50,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
        timestep_scaling=10.0,
    )


def build_lcm(folder: Path) -> None:
    """tiny/lcm: a `LatentConsistencyModelPipeline` folder on tiny/sd15's layout, with a guidance
    embedding in its UNet (no safety checker)."""
    from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel

    pipe = LatentConsistencyModelPipeline(
        vae=parts.vae(),
        text_encoder=parts.text_encoder(),
        tokenizer=parts.tokenizer(),
        unet=parts.seeded(UNet2DConditionModel, **SD15_UNET, time_cond_proj_dim=GUIDANCE_EMBED_DIM),
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    parts.save(pipe, folder)


class LatentConsistency(Family):
    key = "lcm"
    title = "Latent Consistency Model pipeline"
    classes = frozenset({TEXT2IMG, IMG2IMG})
    tiny_models = (
        TinyModel("tiny/lcm", "random-weight smoke model, Latent Consistency Model (SD 1.5 layout, guidance "
                              "embedding, LCMScheduler; pictures are noise, code paths real)", build_lcm),
    )
    call_pipelines = {IMG2IMG: "pipelines/latent_consistency_models/pipeline_latent_consistency_img2img.py"}
    knob_hints = {"negative_prompt": "LCM takes no negative prompt (guidance is embedded): sweep guidance_scale"}
    entries = (
        Entry("lcm", IMG2IMG, "SimianLuo/LCM_Dreamshaper_v7", mapping_key="lcm", tiny="tiny/lcm",
              note="4 steps and guidance 8.5 (an embedding, no negative prompt) by default. LCM-LoRA on an "
                   "SD/SDXL checkpoint is the other way: a LoRA and scheduler 'lcm' on that family's pipeline. "
                   "No single file: diffusers' from_single_file takes this class, but an SD 1.5-layout file "
                   "is inferred as 'v1' and loads as the SD family's pipeline"),
    )
    latent_input = frozenset({IMG2IMG})
    batching_reason = ("its UNet takes the guidance scale as an embedding (time_cond_proj_dim) and LCMScheduler's "
                       "steps have no batching pieces: each cell runs as one pipeline call")

    def prompt_encoding(self, pipe) -> str | None:
        return None  # compel hands negative_prompt_embeds, which an LCM call does not take


FAMILY = LatentConsistency()
