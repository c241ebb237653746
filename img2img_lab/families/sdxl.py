"""SDXL base and refiner: `StableDiffusionXLImg2ImgPipeline` (two text encoders, or the second only).

Tiny twins `tiny/sdxl` (base) and `tiny/sdxl-refiner` (aesthetic-score conditioning), and the base's
adapters `tiny/sdxl-lora` (a LoRA) and `tiny/sdxl-ip-adapter` (an IP-Adapter and its image encoder); the
single-file layouts diffusers calls "xl*" and "playground*". No per-step batching pieces yet: the
UNet's added conditioning (pooled text embeddings, time ids) is not batched by `batched.py`.
"""

from __future__ import annotations

from pathlib import Path

from . import tiny_parts as parts
from .base import Entry, Family, TinyModel

IMG2IMG = "StableDiffusionXLImg2ImgPipeline"
PAG_IMG2IMG = "StableDiffusionXLPAGImg2ImgPipeline"
CONTROLNET_IMG2IMG = "StableDiffusionXLControlNetImg2ImgPipeline"


def unet(text_hidden: int, num_time_ids: int):
    """The tiny SDXL UNet: micro-conditioning of `num_time_ids` time ids (6 base, 5 refiner)."""
    from diffusers import UNet2DConditionModel

    return parts.seeded(
        UNet2DConditionModel,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=text_hidden,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        # time ids (original size, crop, target size or aesthetic score) * 8 + pooled text embeds
        projection_class_embeddings_input_dim=num_time_ids * 8 + parts.TEXT_HIDDEN,
        norm_num_groups=8,
    )


def scheduler():
    """SDXL's Euler schedule (leading spacing, epsilon prediction)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        **parts.sd_scheduler_kwargs(),
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
        prediction_type="epsilon",
    )


def build_sdxl(folder: Path) -> None:
    """tiny/sdxl: a `StableDiffusionXLPipeline` folder with both text encoders."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=parts.vae(scaling_factor=0.13025),
        text_encoder=parts.text_encoder(),
        text_encoder_2=parts.text_encoder_with_projection(),
        tokenizer=parts.tokenizer(),
        tokenizer_2=parts.tokenizer(pad_token="!"),
        unet=unet(text_hidden=2 * parts.TEXT_HIDDEN, num_time_ids=6),
        scheduler=scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    parts.save(pipe, folder)


def build_sdxl_refiner(folder: Path) -> None:
    """tiny/sdxl-refiner: a `StableDiffusionXLImg2ImgPipeline` folder, second text encoder only."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=parts.vae(scaling_factor=0.13025),
        text_encoder=None,
        text_encoder_2=parts.text_encoder_with_projection(),
        tokenizer=None,
        tokenizer_2=parts.tokenizer(pad_token="!"),
        unet=unet(text_hidden=parts.TEXT_HIDDEN, num_time_ids=5),
        scheduler=scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    parts.save(pipe, folder)


def build_sdxl_lora(folder: Path) -> None:
    """tiny/sdxl-lora: a LoRA for tiny/sdxl (the UNet's and both text encoders' attention
    projections), one `pytorch_lora_weights.safetensors` as diffusers' trainers save it. peft's
    random matrices as they are: they change tiny/sdxl's picture clearly."""
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline.save_lora_weights(
        folder,
        unet_lora_layers=parts.lora_layers(unet(text_hidden=2 * parts.TEXT_HIDDEN, num_time_ids=6),
                                           parts.ATTENTION_LORA_TARGETS),
        text_encoder_lora_layers=parts.lora_layers(parts.text_encoder(), parts.CLIP_LORA_TARGETS),
        text_encoder_2_lora_layers=parts.lora_layers(parts.text_encoder_with_projection(), parts.CLIP_LORA_TARGETS),
    )


def build_sdxl_ip_adapter(folder: Path) -> None:
    """tiny/sdxl-ip-adapter: an IP-Adapter for tiny/sdxl (`ip_adapter.safetensors`, its CLIP image
    encoder in `image_encoder/`), as h94/IP-Adapter's `sdxl_models/` folder holds one."""
    parts.save_ip_adapter(unet(text_hidden=2 * parts.TEXT_HIDDEN, num_time_ids=6), folder)


class StableDiffusionXL(Family):
    key = "sdxl"
    title = "SDXL pipeline"
    classes = frozenset({"StableDiffusionXLPipeline", IMG2IMG, "StableDiffusionXLInpaintPipeline", PAG_IMG2IMG})
    checkpoint_types = ("xl", "playground")
    tiny_models = (
        TinyModel("tiny/sdxl", "random-weight smoke model, SDXL base layout with two text encoders "
                               "(pictures are noise, code paths real)", build_sdxl),
        TinyModel("tiny/sdxl-refiner", "random-weight smoke model, SDXL refiner layout with aesthetic score "
                                       "(pictures are noise, code paths real)", build_sdxl_refiner),
        TinyModel("tiny/sdxl-lora", "random-weight smoke LoRA for tiny/sdxl, UNet and both text "
                                    "encoders (pictures are noise, code paths real)", build_sdxl_lora),
        TinyModel("tiny/sdxl-ip-adapter", "random-weight smoke IP-Adapter for tiny/sdxl, with its image "
                                          "encoder (pictures are noise, code paths real)", build_sdxl_ip_adapter),
    )
    call_pipelines = {IMG2IMG: "pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl_img2img.py",
                      PAG_IMG2IMG: "pipelines/pag/pipeline_pag_sd_xl_img2img.py"}
    entries = (
        Entry("sdxl", IMG2IMG, "stabilityai/stable-diffusion-xl-base-1.0", mapping_key="stable-diffusion-xl",
              tiny="tiny/sdxl", single_file=True),
        Entry("sdxl-refiner", IMG2IMG, "stabilityai/stable-diffusion-xl-refiner-1.0", mapping_key="stable-diffusion-xl",
              tiny="tiny/sdxl-refiner", single_file=True, note="the refiner: second text encoder only, aesthetic score"),
        Entry("sdxl-pag", PAG_IMG2IMG, "stabilityai/stable-diffusion-xl-base-1.0", mapping_key="stable-diffusion-xl-pag",
              tiny="tiny/sdxl", load={"enable_pag": True},
              note="an SDXL checkpoint with enable_pag=True (pag_applied_layers to choose layers): shares tiny/sdxl"),
    )
    latent_input = frozenset({IMG2IMG})
    batching_reason = ("SDXL's added conditioning (pooled text embeddings, time ids) has no batching "
                       "pieces yet: each cell runs as one pipeline call")

    def single_file_class(self, path: str, model_type: str, keys, controlnet: bool) -> str | None:
        if not model_type.startswith(self.checkpoint_types):
            return None
        return CONTROLNET_IMG2IMG if controlnet else IMG2IMG


FAMILY = StableDiffusionXL()
