"""Stable Diffusion 1.x / 2.x: `StableDiffusionImg2ImgPipeline` and its relatives.

The one family with per-step batching pieces today (`SDBatching`, driven by `batched.py`), the
tiny twin `tiny/sd15` with its adapters `tiny/sd15-lora` (a LoRA) and `tiny/sd15-ip-adapter` (an
IP-Adapter and its image encoder), and the single-file layouts diffusers calls "v1" and "v2".
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ..errors import ValidationError
from . import tiny_parts as parts
from .base import Entry, Family, TinyModel

IMG2IMG = "StableDiffusionImg2ImgPipeline"
CONTROLNET_IMG2IMG = "StableDiffusionControlNetImg2ImgPipeline"
PAG_IMG2IMG = "StableDiffusionPAGImg2ImgPipeline"

# One SD 1.x UNet layout, shared by tiny/sd15 and its ControlNet so they stay compatible.
SD15_UNET = dict(
    sample_size=32,  # 32 latent pixels * VAE factor 8 = 256 px default
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=parts.TEXT_HIDDEN,
    attention_head_dim=8,
    norm_num_groups=8,
)


def build_sd15(folder: Path) -> None:
    """tiny/sd15: a `StableDiffusionPipeline` folder (PNDM, no safety checker), img2img via AutoPipeline."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    scheduler = PNDMScheduler(
        **parts.sd_scheduler_kwargs(), set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=parts.vae(),
        text_encoder=parts.text_encoder(),
        tokenizer=parts.tokenizer(),
        unet=parts.seeded(UNet2DConditionModel, **SD15_UNET),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    parts.save(pipe, folder)


# tiny/sd15-lora's `up` matrices, doubled: peft's random ones change tiny/sd15's 64 px picture
# (strength 0.6, 4 steps) by a mean 0.034 of 1, about what another prompt does (0.028), doubled by 0.049
SD15_LORA_UP_SCALE = 2.0


def build_sd15_lora(folder: Path) -> None:
    """tiny/sd15-lora: a LoRA for tiny/sd15 (the UNet's and the CLIP text encoder's attention
    projections), one `pytorch_lora_weights.safetensors` as diffusers' trainers save it."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=parts.lora_layers(parts.seeded(UNet2DConditionModel, **SD15_UNET),
                                           parts.ATTENTION_LORA_TARGETS, up_scale=SD15_LORA_UP_SCALE),
        text_encoder_lora_layers=parts.lora_layers(parts.text_encoder(), parts.CLIP_LORA_TARGETS,
                                                   up_scale=SD15_LORA_UP_SCALE),
    )


def build_sd15_ip_adapter(folder: Path) -> None:
    """tiny/sd15-ip-adapter: an IP-Adapter for tiny/sd15 (`ip_adapter.safetensors`, its CLIP image
    encoder in `image_encoder/`), as h94/IP-Adapter's `models/` folder holds one."""
    from diffusers import UNet2DConditionModel

    parts.save_ip_adapter(parts.seeded(UNet2DConditionModel, **SD15_UNET), folder)


class SDBatching:
    """`StableDiffusionImg2ImgPipeline.__call__`, step by step, for `batched.py` (see `StepBatching`)."""

    def unsupported(self, pipe) -> str | None:
        if type(pipe).__name__ != IMG2IMG:
            return f"{type(pipe).__name__} is not {IMG2IMG}: only image-to-image calls are batched"
        unet_config = pipe.unet.config
        if unet_config.time_cond_proj_dim is not None:
            return "its UNet takes a guidance embedding (time_cond_proj_dim)"
        if unet_config.addition_embed_type is not None or unet_config.class_embed_type is not None:
            return "its UNet takes added conditioning (addition_embed_type / class_embed_type)"
        if getattr(pipe.unet, "encoder_hid_proj", None) is not None:
            return "its UNet has an IP-Adapter or image projection (encoder_hid_proj)"
        return None

    def check_call(self, pipe, call: dict) -> None:
        pipe.check_inputs(call["prompt"], call["strength"], None, negative_prompt=call["negative_prompt"])

    def timesteps(self, pipe, scheduler, steps: int, strength: float, device):
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_timesteps

        retrieve_timesteps(scheduler, steps, device)
        # the pipeline's own get_timesteps, applied to this scheduler copy
        timesteps, _ = type(pipe).get_timesteps(SimpleNamespace(scheduler=scheduler), steps, strength, device)
        return timesteps

    def text_owner(self, pipe):
        return pipe.text_encoder

    def encode_prompt(self, pipe, text: str, device) -> dict:
        # a negative prompt is encoded exactly like a prompt (same padding, same encoder)
        return {"encoder_hidden_states": pipe.encode_prompt(text, device, 1, False)[0]}

    def dtype(self, pipe):
        return pipe.text_encoder.dtype  # the dtype of prompt_embeds in a direct call

    def encode_image(self, pipe, pixels, device, dtype):
        return pipe.vae.encode(pixels.to(device=device, dtype=dtype))

    def noisy_latents(self, pipe, encoded, generator, scheduler, timestep, device, dtype):
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents
        from diffusers.utils.torch_utils import randn_tensor

        init = pipe.vae.config.scaling_factor * retrieve_latents(encoded, generator=generator)
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        return scheduler.add_noise(init, noise, timestep)

    def predict_noise(self, pipe, sample, timestep, conditioning: dict):
        return pipe.unet(sample, timestep, **conditioning, return_dict=False)[0]

    def decode(self, pipe, latents):
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]

    def safety_check(self, pipe, image, device, dtype):
        return pipe.run_safety_checker(image, device, dtype)


class StableDiffusion(Family):
    key = "sd"
    title = "Stable Diffusion 1.x/2.x pipeline"
    classes = frozenset({"StableDiffusionPipeline", IMG2IMG, "StableDiffusionInpaintPipeline", PAG_IMG2IMG})
    checkpoint_types = ("v1", "v2")
    tiny_models = (
        TinyModel("tiny/sd15", "random-weight smoke model, Stable Diffusion 1.5 layout (pictures are noise, code paths real)",
                  build_sd15),
        TinyModel("tiny/sd15-lora", "random-weight smoke LoRA for tiny/sd15, UNet and text encoder "
                                    "(pictures are noise, code paths real)", build_sd15_lora),
        TinyModel("tiny/sd15-ip-adapter", "random-weight smoke IP-Adapter for tiny/sd15, with its image encoder "
                                          "(pictures are noise, code paths real)", build_sd15_ip_adapter),
    )
    call_pipelines = {IMG2IMG: "pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py",
                      PAG_IMG2IMG: "pipelines/pag/pipeline_pag_sd_img2img.py"}
    entries = (
        Entry("sd15", IMG2IMG, "stable-diffusion-v1-5/stable-diffusion-v1-5", mapping_key="stable-diffusion",
              tiny="tiny/sd15", single_file=True, note="SD 2.x checkpoints load the same way"),
        Entry("sd-pag", PAG_IMG2IMG, "stable-diffusion-v1-5/stable-diffusion-v1-5", mapping_key="stable-diffusion-pag",
              tiny="tiny/sd15", load={"enable_pag": True},
              note="an SD 1.x checkpoint with enable_pag=True (pag_applied_layers to choose layers): shares tiny/sd15"),
    )
    latent_input = frozenset({IMG2IMG})
    batching = SDBatching()
    batching_reason = ""

    def speed_path(self, class_name: str) -> str:
        if class_name == IMG2IMG:
            return "batched"
        return f"per cell: {class_name} is not {IMG2IMG}: its guidance has no batching pieces"

    def single_file_class(self, path: str, model_type: str, keys, controlnet: bool) -> str | None:
        if not model_type.startswith(self.checkpoint_types):
            return None
        # diffusers answers "v1" for any file it does not recognise; a real SD checkpoint has a UNet
        if not any(k.startswith("model.diffusion_model.") for k in keys):
            raise ValidationError(
                f"`model` {path!r} is not a Stable Diffusion checkpoint of a known layout (no "
                f"'model.diffusion_model.*' UNet tensors among its {len(keys)} tensors)"
            )
        return CONTROLNET_IMG2IMG if controlnet else IMG2IMG


FAMILY = StableDiffusion()
