"""FLUX.1: `FluxImg2ImgPipeline`, Kontext editing, the Canny/Depth control transformers and
FLUX ControlNets.

Four image-to-image pipelines share one layout (CLIP + T5 text encoders, a 16-channel VAE whose
latents are packed 2x2 into tokens, a flow-matching transformer):

- `FluxImg2ImgPipeline` (FLUX.1-dev / schnell), `strength` as every img2img;
- `FluxKontextPipeline`: no `strength`; it edits, taking the init image as a reference;
- `FluxControlImg2ImgPipeline`: a FLUX.1 Canny/Depth checkpoint whose transformer takes the
  control image's latents concatenated to its input (`in_channels` doubled), no `controlnet`;
- `FluxControlNetImg2ImgPipeline`: FLUX.1 with `controlnet=<FluxControlNetModel>`.

Their tiny twins are `tiny/flux`, `tiny/flux-kontext` (the same parts as a Kontext folder),
`tiny/flux-control` (its doubled-input transformer), `tiny/controlnet-flux` (a
`FluxControlNetModel` folder for `tiny/flux`) and `tiny/flux-lora` (a LoRA for `tiny/flux`'s
transformer). No single files: a real FLUX `.safetensors` holds only the transformer, and
diffusers' FLUX converter reads only the 12B layout (its `inner_dim` is fixed at 3072), so no tiny
one can exist to test a loader with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import ValidationError
from . import tiny_parts as parts
from .base import Entry, Family, LoadContext, TinyModel

TEXT2IMG = "FluxPipeline"
IMG2IMG = "FluxImg2ImgPipeline"
KONTEXT = "FluxKontextPipeline"
CONTROL = "FluxControlPipeline"
CONTROL_IMG2IMG = "FluxControlImg2ImgPipeline"
CONTROLNET = "FluxControlNetPipeline"
CONTROLNET_IMG2IMG = "FluxControlNetImg2ImgPipeline"
# the pipelines whose `negative_prompt` acts only with `true_cfg_scale` > 1 (the others have neither)
TRUE_CFG = frozenset({TEXT2IMG, IMG2IMG, "FluxInpaintPipeline", KONTEXT, "FluxKontextInpaintPipeline", CONTROLNET})
# the pipelines a `controlnet=` may be loaded into (AutoPipeline then picks the ControlNet class)
TAKE_CONTROLNET = frozenset({TEXT2IMG, IMG2IMG, "FluxInpaintPipeline"})
# FLUX.1-dev's distilled guidance (its model card, FluxPipeline's default); the img2img signatures say 7.0
DEV_GUIDANCE = 3.5
# FLUX.1-Canny-dev's model card (and diffusers' example of the pipeline); FLUX.1-Depth-dev's says 10
CANNY_GUIDANCE = 30.0


# --------------------------------------------------------------------------------------------
# the tiny twins: tiny/flux, tiny/flux-kontext, tiny/flux-control, tiny/controlnet-flux, tiny/flux-lora

LATENT_CHANNELS = 16  # FLUX's VAE; packed 2x2 into 64-channel tokens
# One transformer layout, shared by every twin and the ControlNet so they stay compatible.
TRANSFORMER = dict(
    patch_size=1,
    in_channels=LATENT_CHANNELS * 4,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=parts.T5_HIDDEN,
    pooled_projection_dim=parts.TEXT_HIDDEN,
    guidance_embeds=True,  # FLUX.1-dev's distilled guidance (schnell has none)
    axes_dims_rope=(2, 2, 4),  # sums to attention_head_dim, as (16, 56, 56) to 128
)
# Keeps the T5 sequence short (the pipelines pad to 512 tokens by default).
MAX_SEQUENCE_LENGTH = 32


def vae():
    """FLUX's AutoencoderKL (16 latent channels, its scale and shift, no quant convs), scale
    factor 8 as the real one, tiny channels."""
    return parts.flow_vae(scaling_factor=0.3611, shift_factor=0.1159)


def scheduler():
    """FLUX.1-dev's FlowMatchEulerDiscreteScheduler (resolution-dependent shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )


def transformer(**overrides):
    """A seeded tiny `FluxTransformer2DModel`; `overrides` replace `TRANSFORMER` values."""
    from diffusers import FluxTransformer2DModel

    return parts.seeded(FluxTransformer2DModel, **{**TRANSFORMER, **overrides})


def components(**transformer_overrides) -> dict:
    """The parts of a FLUX.1 folder: each seeds itself, so they are the same in every twin."""
    return dict(
        scheduler=scheduler(),
        vae=vae(),
        text_encoder=parts.text_encoder(),
        tokenizer=parts.tokenizer(),
        text_encoder_2=parts.t5_encoder(),
        tokenizer_2=parts.t5_tokenizer(),
        transformer=transformer(**transformer_overrides),
    )


def build_flux(folder: Path) -> None:
    """tiny/flux: a `FluxPipeline` folder (FLUX.1-dev layout), img2img via AutoPipeline."""
    from diffusers import FluxPipeline

    parts.save(FluxPipeline(**components(), image_encoder=None, feature_extractor=None), folder)


def build_flux_kontext(folder: Path) -> None:
    """tiny/flux-kontext: tiny/flux's very parts as a `FluxKontextPipeline` folder."""
    from diffusers import FluxKontextPipeline

    parts.save(FluxKontextPipeline(**components(), image_encoder=None, feature_extractor=None), folder)


def build_flux_control(folder: Path) -> None:
    """tiny/flux-control: a `FluxControlPipeline` folder (FLUX.1-Canny-dev layout): its
    transformer reads the noisy and the control latents side by side (in_channels doubled)."""
    from diffusers import FluxControlPipeline

    in_channels = TRANSFORMER["in_channels"]
    parts.save(FluxControlPipeline(**components(in_channels=2 * in_channels, out_channels=in_channels)), folder)


def build_controlnet_flux(folder: Path) -> None:
    """tiny/controlnet-flux: a `FluxControlNetModel` on tiny/flux's transformer layout, conditioning on."""
    import torch
    from diffusers import FluxControlNetModel

    controlnet = parts.seeded(FluxControlNetModel, **TRANSFORMER)
    # it starts with zero layers (a no-op until trained); fill them, seeded, so the control image
    # and `controlnet_conditioning_scale` change the picture as a trained one does
    torch.manual_seed(parts.SEED)
    with torch.no_grad():
        for module in [*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks,
                       controlnet.controlnet_x_embedder]:
            for param in module.parameters():
                param.normal_(0.0, 0.5)
    parts.save(controlnet, folder)


# tiny/flux-lora targets the attention projections of both streams (the single blocks' have no
# to_out: their output is proj_out). Its `up` matrices times 4: tiny/flux's 64 px picture hardly
# depends on its transformer (another prompt changes it by a mean 0.006 of 1, peft's random LoRA
# by 0.016), times 4 by 0.049
FLUX_LORA_TARGETS = (*parts.ATTENTION_LORA_TARGETS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
FLUX_LORA_UP_SCALE = 4.0


def build_flux_lora(folder: Path) -> None:
    """tiny/flux-lora: a LoRA for tiny/flux's transformer, one `pytorch_lora_weights.safetensors`
    as diffusers' trainers save it."""
    from diffusers import FluxPipeline

    layers = parts.lora_layers(transformer(), FLUX_LORA_TARGETS, up_scale=FLUX_LORA_UP_SCALE)
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=layers)


# --------------------------------------------------------------------------------------------
# the family


class Flux(Family):
    key = "flux"
    title = "FLUX.1 pipeline"
    classes = frozenset({
        TEXT2IMG, IMG2IMG, "FluxInpaintPipeline", "FluxFillPipeline",
        KONTEXT, "FluxKontextInpaintPipeline",
        CONTROL, CONTROL_IMG2IMG, "FluxControlInpaintPipeline",
        CONTROLNET, CONTROLNET_IMG2IMG, "FluxControlNetInpaintPipeline",
    })
    tiny_models = (
        TinyModel("tiny/flux", "random-weight smoke model, FLUX.1-dev layout (pictures are noise, code paths real)",
                  build_flux, call={"max_sequence_length": MAX_SEQUENCE_LENGTH}),
        TinyModel("tiny/flux-kontext", "random-weight smoke model, FLUX.1 Kontext layout, tiny/flux's parts "
                                       "(pictures are noise, code paths real)", build_flux_kontext,
                  # Kontext sizes its output to ~1 MP and its reference to a preferred ~1 MP
                  # resolution: keep a 64 px picture at 64 px
                  call={"max_sequence_length": MAX_SEQUENCE_LENGTH, "max_area": 64 * 64, "_auto_resize": False}),
        TinyModel("tiny/flux-control", "random-weight smoke model, FLUX.1 Canny/Depth layout (control latents "
                                       "concatenated; pictures are noise, code paths real)", build_flux_control,
                  call={"max_sequence_length": MAX_SEQUENCE_LENGTH}),
        TinyModel("tiny/controlnet-flux", "random-weight smoke FluxControlNetModel for tiny/flux "
                                          "(pictures are noise, code paths real)", build_controlnet_flux),
        TinyModel("tiny/flux-lora", "random-weight smoke LoRA for tiny/flux, its transformer "
                                    "(pictures are noise, code paths real)", build_flux_lora),
    )
    call_pipelines = {
        IMG2IMG: "pipelines/flux/pipeline_flux_img2img.py",
        KONTEXT: "pipelines/flux/pipeline_flux_kontext.py",
        CONTROL_IMG2IMG: "pipelines/flux/pipeline_flux_control_img2img.py",
        CONTROLNET_IMG2IMG: "pipelines/flux/pipeline_flux_controlnet_image_to_image.py",
    }
    picture_args = ("control_image",)  # the control and ControlNet pipelines'
    controlnet_class = "FluxControlNetModel"
    call_defaults = {
        IMG2IMG: {"guidance_scale": DEV_GUIDANCE},
        CONTROL_IMG2IMG: {"guidance_scale": CANNY_GUIDANCE},
        CONTROLNET_IMG2IMG: {"guidance_scale": DEV_GUIDANCE},
    }
    knob_hints = {
        "strength": (f"{KONTEXT} has no `strength`: it edits, taking the image as a reference; sweep "
                     f"guidance_scale, num_inference_steps or prompt variants instead"),
        "negative_prompt": (f"{CONTROL_IMG2IMG} and {CONTROLNET_IMG2IMG} take no `negative_prompt` (FLUX.1 is "
                            f"guidance-distilled); {IMG2IMG} and {KONTEXT} read it with true_cfg_scale > 1"),
    }
    entries = (
        Entry("flux", IMG2IMG, "black-forest-labs/FLUX.1-dev", mapping_key="flux", tiny="tiny/flux",
              note="FLUX.1-schnell loads the same way; guidance_scale 3.5 where a spec is silent (the signature "
                   "says 7.0); height/width default to 1024 px whatever the init image's size (set them). No single "
                   "file: a FLUX .safetensors holds only the transformer"),
        Entry("flux-kontext", KONTEXT, "black-forest-labs/FLUX.1-Kontext-dev", mapping_key="flux-kontext",
              tiny="tiny/flux-kontext",
              note="no strength: it edits, taking the image as a reference; output ~1 MP (max_area) and the "
                   "reference resized to a preferred resolution (_auto_resize) unless told"),
        Entry("flux-control", CONTROL_IMG2IMG, "black-forest-labs/FLUX.1-Canny-dev", mapping_key="flux-control",
              tiny="tiny/flux-control",
              note="control_image required; FLUX.1-Depth-dev loads the same way (guidance_scale 10 on its card, "
                   "30 on Canny's); no controlnet and no negative_prompt"),
        Entry("flux-controlnet", CONTROLNET_IMG2IMG, "InstantX/FLUX.1-dev-Controlnet-Canny",
              mapping_key="flux-controlnet", tiny="tiny/flux", load={"controlnet": "tiny/controlnet-flux"},
              note="a FLUX.1 checkpoint with controlnet=<FluxControlNetModel>; the checkpoint id is the ControlNet's"),
    )
    batching_reason = ("FLUX packs latents into tokens and runs a flow-matching transformer; it has no batching "
                       "pieces: each cell runs as one pipeline call")

    def detect(self, class_name: str) -> bool:
        """Its classes, and any other diffusers FLUX.1 pipeline (not FLUX.2: `Flux2*`)."""
        return class_name in self.classes or (class_name.startswith("Flux") and not class_name.startswith("Flux2"))

    def load_extras(self, ctx: LoadContext) -> dict:
        """ControlNets (as `FluxControlNetModel`) into a plain FLUX.1 checkpoint only, and a VAE."""
        if ctx.options["controlnet"] is not None and ctx.class_name not in TAKE_CONTROLNET | {CONTROLNET_IMG2IMG}:
            raise ValidationError(
                f"`controlnet` can't be used with the {ctx.class_name} {ctx.name!r}: FLUX ControlNets go with a "
                f"FLUX.1-dev/schnell checkpoint ({TEXT2IMG}); a Kontext or Canny/Depth checkpoint takes none"
            )
        return super().load_extras(ctx)

    def prompt_encoding(self, pipe) -> str | None:
        return None  # CLIP pooled + T5: neither of compel's SD/SDXL encodings

    def knob_problem(self, class_name: str, call: Mapping[str, Any], config: Mapping[str, Any] | None = None
                     ) -> dict[str, str]:
        """FLUX.1 reads `negative_prompt` only with `true_cfg_scale` > 1 (real classifier-free guidance)."""
        if class_name not in TRUE_CFG:
            return {}
        true_cfg = call.get("true_cfg_scale")
        if true_cfg is not None and true_cfg > 1:
            return {}
        why = (f"{class_name} ignores negative prompts unless `true_cfg_scale` > 1 (got {true_cfg!r}): set "
               f"true_cfg_scale (e.g. 4.0) and sweep it too; it then runs the transformer twice per step")
        return {name: why for name in ("negative_prompt", "negative_prompt_2")
                if call.get(name) not in (None, "") and call.get(name) != []}


FAMILY = Flux()
