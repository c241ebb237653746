"""Qwen-Image: `QwenImageImg2ImgPipeline` and the reference-editing pipelines built on its MMDiT.

Four image-to-image pipelines share one layout (a Qwen2.5-VL text encoder, the
`QwenImageTransformer2DModel`, the causal-3D `AutoencoderKLQwenImage`, flow-matching Euler):

- `QwenImageImg2ImgPipeline` (Qwen/Qwen-Image): classic img2img, `strength` and `height`/`width`;
- `QwenImageEditPipeline` (Qwen/Qwen-Image-Edit): `image` is the reference to edit, shown to the
  text encoder's vision tower and VAE-encoded beside the noise; no `strength`. It resizes its
  reference to about 1024x1024 px whatever `height`/`width` say (those size the output only);
- `QwenImageEditPlusPipeline` (Qwen/Qwen-Image-Edit-2509): several references (`image` a list),
  each resized to ~1 MP for the VAE and ~384x384 px for the vision tower (module constants);
- `QwenImageLayeredPipeline` (Qwen/Qwen-Image-Layered): decomposes `image` into `layers` RGBA
  layers at `resolution` 640 or 1024 px; one call returns a list of layers per prompt.

The three reference pipelines load a `Qwen2VLProcessor`, which transformers 5 builds only with
torchvision installed (its video processor is torchvision-backed); without it they can't load,
and `load_extras` says so before diffusers fails. Tiny twins: `tiny/qwenimage`,
`tiny/qwenimage-edit`, `tiny/qwenimage-edit-plus`, `tiny/qwenimage-layered`, built without
torchvision (the processor folder is written from its tokenizer and image processor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import ValidationError
from . import tiny_parts as parts
from .base import Entry, Family, LoadContext, TinyModel

TEXT2IMG = "QwenImagePipeline"
IMG2IMG = "QwenImageImg2ImgPipeline"
EDIT = "QwenImageEditPipeline"
EDIT_PLUS = "QwenImageEditPlusPipeline"
LAYERED = "QwenImageLayeredPipeline"
# the pipelines whose folders hold a Qwen2VLProcessor (their references go to the vision tower)
PROCESSOR_PIPELINES = frozenset({EDIT, EDIT_PLUS, LAYERED, "QwenImageEditInpaintPipeline"})
# the pipelines without `strength`: `image` is a reference, not a starting point
REFERENCE_PIPELINES = frozenset({EDIT, EDIT_PLUS, LAYERED})

# Qwen-Image's flow-matching schedule (its scheduler_config.json): resolution-dependent shift
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                        time_shift_type="exponential")
TEXT_HIDDEN = 16  # the text encoder's hidden size: the transformer's joint_attention_dim
LATENT_CHANNELS = 16  # the real VAE's z_dim (its latents_mean/latents_std are 16 values)
# the vision tower sees at most 2x2 patches of 28 px: 56x56 px, one merged token per 28x28 px
VISION_MIN_PIXELS, VISION_MAX_PIXELS = 28 * 28, 56 * 56


# --------------------------------------------------------------------------------------------
# tiny parts


def tokenizer():
    """Qwen2.5-VL's tokenizer: byte-level, with the chat and vision special tokens."""
    return parts.qwen2_tokenizer()


def text_encoder():
    """A seeded tiny `Qwen2_5_VLForConditionalGeneration` with its vision tower, whose special token
    ids are those of `tokenizer()` (the processor's `<|image_pad|>` placeholders become image tokens)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = tokenizer()
    ids = {token: tok.convert_tokens_to_ids(token) for token in parts.QWEN_SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1,  # grouped-query attention, as the real 7B's
            max_position_embeddings=2048, rms_norm_eps=1e-6,
            # multimodal RoPE: (temporal, height, width) sections of the 8-dim heads' 4 frequencies
            rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1000000.0},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_HIDDEN,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    return parts.seeded(Qwen2_5_VLForConditionalGeneration, config).eval()


def transformer(**flags):
    """The tiny MMDiT: 2x2 patches of the 16 latent channels, RoPE axes summing to its head size;
    `flags` are the layered model's (`use_additional_t_cond`, `use_layer3d_rope`)."""
    from diffusers import QwenImageTransformer2DModel

    return parts.seeded(
        QwenImageTransformer2DModel, patch_size=2, in_channels=4 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN,
        guidance_embeds=False, axes_dims_rope=(4, 6, 6), **flags,
    )


def vae(input_channels: int = 3):
    """AutoencoderKLQwenImage with the real factor 8 (three downsamplings), the real 16 latent
    channels and their mean/std, tiny widths; `input_channels=4` for the layered model's RGBA."""
    from diffusers import AutoencoderKLQwenImage

    return parts.seeded(AutoencoderKLQwenImage, base_dim=4, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 4, 4],
                        num_res_blocks=1, temperal_downsample=[False, True, True], input_channels=input_channels)


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def write_processor(folder: Path) -> None:
    """The `processor/` folder a `Qwen2VLProcessor` loads from: its tokenizer and a
    `Qwen2VLImageProcessor` with a tiny pixel budget, written without building the processor
    (which transformers 5 can't without torchvision), and named in `model_index.json`."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor_folder = folder / "processor"
    tokenizer().save_pretrained(processor_folder)
    # saved as "Qwen2VLImageProcessor", the real class, whichever backend is installed
    image_processor = Qwen2VLImageProcessorPil(min_pixels=VISION_MIN_PIXELS, max_pixels=VISION_MAX_PIXELS)
    image_processor.save_pretrained(processor_folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build(pipeline_class: str, folder: Path, layered: bool = False) -> None:
    """A `pipeline_class` folder of the tiny parts (with its processor where it has one)."""
    import diffusers

    components = dict(scheduler=scheduler(), vae=vae(4 if layered else 3), text_encoder=text_encoder(),
                      tokenizer=tokenizer(),
                      transformer=transformer(use_additional_t_cond=True, use_layer3d_rope=True) if layered
                      else transformer())
    if pipeline_class in PROCESSOR_PIPELINES:
        components["processor"] = None  # written by `write_processor` below
    parts.save(getattr(diffusers, pipeline_class)(**components), folder)
    if pipeline_class in PROCESSOR_PIPELINES:
        write_processor(folder)


def build_qwenimage(folder: Path) -> None:
    """tiny/qwenimage: a `QwenImagePipeline` folder (as Qwen/Qwen-Image), img2img via AutoPipeline."""
    build(TEXT2IMG, folder)


def build_edit(folder: Path) -> None:
    """tiny/qwenimage-edit: a `QwenImageEditPipeline` folder (as Qwen/Qwen-Image-Edit)."""
    build(EDIT, folder)


def build_edit_plus(folder: Path) -> None:
    """tiny/qwenimage-edit-plus: a `QwenImageEditPlusPipeline` folder (as Qwen/Qwen-Image-Edit-2509)."""
    build(EDIT_PLUS, folder)


def build_layered(folder: Path) -> None:
    """tiny/qwenimage-layered: a `QwenImageLayeredPipeline` folder (RGBA VAE, layer-3D RoPE)."""
    build(LAYERED, folder, layered=True)


def torchvision_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is None


# --------------------------------------------------------------------------------------------
# the family

NEEDS_TORCHVISION = ("needs torchvision: its Qwen2VLProcessor has a torchvision-backed video processor, "
                     "without which transformers 5 can't load it")
FORCED_REFERENCE = "resizes its reference to ~1024x1024 px for the VAE whatever height/width say (they size the output)"


class QwenImage(Family):
    key = "qwenimage"
    title = "Qwen-Image pipeline"
    classes = frozenset({TEXT2IMG, IMG2IMG, "QwenImageInpaintPipeline", EDIT, "QwenImageEditInpaintPipeline",
                         EDIT_PLUS, LAYERED})
    tiny_models = (
        TinyModel("tiny/qwenimage", "random-weight smoke model, Qwen-Image layout: Qwen2.5-VL text encoder, MMDiT, "
                                    "causal-3D VAE (pictures are noise, code paths real)", build_qwenimage,
                  call={"height": 64, "width": 64}),
        TinyModel("tiny/qwenimage-edit", "random-weight smoke model, Qwen-Image-Edit layout with its Qwen2VLProcessor "
                                         "(pictures are noise, code paths real)", build_edit,
                  call={"height": 64, "width": 64}),
        TinyModel("tiny/qwenimage-edit-plus", "random-weight smoke model, Qwen-Image-Edit-2509 layout: several "
                                              "references (pictures are noise, code paths real)", build_edit_plus,
                  call={"height": 64, "width": 64}),
        TinyModel("tiny/qwenimage-layered", "random-weight smoke model, Qwen-Image-Layered layout: RGBA VAE, "
                                            "layer-3D RoPE (pictures are noise, code paths real)", build_layered,
                  call={"layers": 2}),
    )
    options = ("vae",)  # its ControlNet pipelines are the controlnet family's
    call_pipelines = {IMG2IMG: "pipelines/qwenimage/pipeline_qwenimage_img2img.py",
                      EDIT: "pipelines/qwenimage/pipeline_qwenimage_edit.py",
                      EDIT_PLUS: "pipelines/qwenimage/pipeline_qwenimage_edit_plus.py",
                      LAYERED: "pipelines/qwenimage/pipeline_qwenimage_layered.py"}
    vae_component = ("vae", "AutoencoderKLQwenImage")
    knob_hints = {"strength": "Qwen-Image's edit pipelines have no strength (image is the reference to edit): "
                              "sweep true_cfg_scale (with a negative_prompt) or num_inference_steps"}
    entries = (
        Entry("qwenimage", IMG2IMG, "Qwen/Qwen-Image", mapping_key="qwenimage", tiny="tiny/qwenimage",
              note="true_cfg_scale (default 4.0) guides only with a negative_prompt; guidance_scale only on "
                   "guidance-distilled transformers"),
        Entry("qwenimage-edit", EDIT, "Qwen/Qwen-Image-Edit", mapping_key="qwenimage-edit", tiny="tiny/qwenimage-edit",
              requires=("torchvision",),
              note=f"image is the reference to edit (no strength); it {FORCED_REFERENCE}, with no argument to avoid "
                   f"it (tiny/qwenimage-edit too: a ~1 s call); {NEEDS_TORCHVISION}"),
        Entry("qwenimage-edit-plus", EDIT_PLUS, "Qwen/Qwen-Image-Edit-2509", mapping_key="qwenimage-edit-plus",
              tiny="tiny/qwenimage-edit-plus", image_list=True, requires=("torchvision",),
              note="image is one reference or a list of them (no strength); each is resized to ~1024x1024 px for "
                   "the VAE and ~384x384 px for the text encoder (module constants, no argument); "
                   f"{NEEDS_TORCHVISION}"),
        Entry("qwenimage-layered", LAYERED, "Qwen/Qwen-Image-Layered", mapping_key="qwenimage-layered",
              tiny="tiny/qwenimage-layered", requires=("torchvision",),
              note="decomposes image into `layers` RGBA layers at resolution 640 or 1024 px (no strength, no "
                   "height/width: 64 px inputs come out at 640 px); one call returns a list of layers per prompt, "
                   f"and a row's image is its first layer; {NEEDS_TORCHVISION}"),
    )
    batching_reason = ("Qwen-Image's packed latents, text masks and true-CFG renormalisation have no batching "
                       "pieces: each cell runs as one pipeline call")

    def load_extras(self, ctx: LoadContext) -> dict:
        """The default (a replacement `vae`), after checking that a processor pipeline can load here."""
        if ctx.class_name in PROCESSOR_PIPELINES and torchvision_missing():
            raise ValidationError(
                f"`model` {ctx.name!r} ({ctx.class_name}) {NEEDS_TORCHVISION}: pip install torchvision"
            )
        return super().load_extras(ctx)

    def knob_problem(self, class_name: str, call: Mapping[str, Any], config: Mapping[str, Any] | None = None
                     ) -> dict[str, str]:
        """`guidance_scale` is read only by guidance-distilled transformers (none of Qwen's own), and
        `negative_prompt` only with `true_cfg_scale` > 1: diffusers warns and runs without them."""
        out = {}
        if call.get("guidance_scale") is not None:
            out["guidance_scale"] = (f"{class_name} ignores guidance_scale for Qwen-Image checkpoints without "
                                     f"guidance embeds: use true_cfg_scale > 1 with a negative_prompt instead")
        true_cfg = call.get("true_cfg_scale")
        if call.get("negative_prompt") is not None and true_cfg is not None and true_cfg <= 1:
            out["negative_prompt"] = (f"{class_name} ignores negative_prompt when true_cfg_scale <= 1 "
                                      f"(got {true_cfg}): set true_cfg_scale > 1 to use it")
        return out


FAMILY = QwenImage()
