"""FLUX.2: `Flux2Pipeline` (black-forest-labs/FLUX.2-dev) and `Flux2KleinPipeline` ([klein] 4B/9B).

Both edit from reference images: `image` is one picture or a list of them, each VAE-encoded (cropped
to a multiple of 16 px, shrunk to ~1 MP only when larger) and attended beside the noise; there is
no `strength`, and `height`/`width` (default: the first reference's size) size the output. The
prompt's embedding stacks fixed hidden layers of the text encoder (`text_encoder_out_layers`: 10,
20, 30 of FLUX.2 [dev]'s Mistral Small 3.1; 9, 18, 27 of [klein]'s Qwen3). Shared parts: the
`Flux2Transformer2DModel`, the 32-channel `AutoencoderKLFlux2` (factor 8, latents patchified 2x2
and normalised by its batch-norm statistics), flow-matching Euler with an empirical shift.

FLUX.2-dev's `tokenizer` is a `PixtralProcessor` (its `tokenizer/` folder), which transformers 5
builds only with torchvision (its Pixtral image processor module imports torchvision), and diffusers
refuses a tokenizer passed in its place (it can't check it against the processor class then): so
without torchvision FLUX.2-dev can't load, and `load_extras` says so before diffusers fails. The
tiny twin `tiny/flux2` names the processor's tokenizer instead (`TokenizersBackend`, the class
PixtralProcessor loads it with; the processor's configs lie beside it), so it loads anywhere: the
pipeline encodes prompts with `apply_chat_template` only, which gives the same ids either way;
caption upsampling (`caption_upsample_temperature`) needs the processor. Tiny twins: `tiny/flux2`,
`tiny/flux2-klein`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import ValidationError
from . import tiny_parts as parts
from . import zimage
from .base import Entry, Family, LoadContext, TinyModel

DEV = "Flux2Pipeline"
KLEIN = "Flux2KleinPipeline"
# the pipelines whose `tokenizer` is a PixtralProcessor (FLUX.2 [dev]'s, Mistral Small 3.1's)
PROCESSOR_PIPELINES = frozenset({DEV})

# FLUX.2's flow-matching schedule (its scheduler_config.json); the pipelines pass the shift `mu`
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
                        time_shift_type="exponential")
TEXT_HIDDEN = 16  # the tiny text encoders' hidden size
# the tiny encoders have three layers; the pipelines stack the hidden states of these three
# (the real ones stack 10/20/30 and 9/18/27 of 40 and 36)
OUT_LAYERS = (1, 2, 3)
LATENT_CHANNELS = 32  # the real VAE's: the transformer sees 4 * 32 after the 2x2 patchify
# FLUX.2 [dev]'s prompt is its 168-character system message plus the prompt in Mistral's chat
# format; the tiny byte-level tokenizer spends one token a byte, so 256 keeps ~75 characters of prompt
DEV_MAX_SEQUENCE = 256
KLEIN_MAX_SEQUENCE = 64  # [klein]'s template wraps the prompt only

# Mistral's special tokens, as far as the processor and the chat template use them
MISTRAL_SPECIAL = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                   "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")
# Mistral Small 3.1's chat template, as far as FLUX.2 uses it: a system prompt, user turns whose
# content is text or a list of text and image blocks (an image is its [IMG] placeholder, which the
# processor expands), assistant turns
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = namespace(v='') %}"
    "{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{%- set text.v = text.v + block['text'] %}"
    "{%- elif block['type'] == 'image' %}{%- set text.v = text.v + '[IMG]' %}{%- endif %}"
    "{%- endfor %}{%- set text = text.v %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
# the Pixtral vision tower's patches and the processor's sizes (tiny: 56 px images at most)
PATCH_SIZE, SPATIAL_MERGE, LONGEST_EDGE = 14, 2, 56


# --------------------------------------------------------------------------------------------
# tiny parts


def mistral_tokenizer():
    """Mistral's tokenizer as the processor loads it (`TokenizersBackend`): a byte-level BPE with
    Mistral's special tokens first, then the 256 byte characters, no merges; its chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import TokenizersBackend

    chars = list(parts.bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(MISTRAL_SPECIAL + tuple(chars))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MISTRAL_SPECIAL])
    tok = TokenizersBackend(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", model_max_length=131072)
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    tok.init_kwargs["processor_class"] = "PixtralProcessor"  # as FLUX.2-dev's tokenizer_config.json says
    return tok


def mistral_encoder():
    """A seeded tiny `Mistral3ForConditionalGeneration` (Mistral Small 3.1): a three-layer Mistral
    text model over `mistral_tokenizer()`'s vocabulary, its Pixtral vision tower and projector."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tok = mistral_tokenizer()
    ids = {token: tok.convert_tokens_to_ids(token) for token in MISTRAL_SPECIAL}
    config = Mistral3Config(
        text_config=dict(
            model_type="mistral", vocab_size=len(tok), hidden_size=TEXT_HIDDEN, intermediate_size=32,
            num_hidden_layers=len(OUT_LAYERS), num_attention_heads=2, num_key_value_heads=1,  # grouped-query
            head_dim=8, max_position_embeddings=1024, rms_norm_eps=1e-5, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0},
            bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
        ),
        vision_config=dict(
            model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            head_dim=8, image_size=LONGEST_EDGE, patch_size=PATCH_SIZE, num_channels=3,
        ),
        image_token_index=ids["[IMG]"], spatial_merge_size=SPATIAL_MERGE, vision_feature_layer=-1,
        projector_hidden_act="gelu", multimodal_projector_bias=False,
    )
    return parts.seeded(Mistral3ForConditionalGeneration, config).eval()


def write_processor_configs(folder: Path) -> None:
    """The rest of a `PixtralProcessor` folder beside the tokenizer in `folder/tokenizer`, as
    FLUX.2-dev's tokenizer/ has it: a `PixtralImageProcessor` config and the processor's own config,
    written without building the processor (transformers 5 can't without torchvision). The twin's
    `model_index.json` still names the tokenizer (`TokenizersBackend`), which loads without
    torchvision; with it, `AutoProcessor.from_pretrained(<twin>/tokenizer)` gives the processor."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    processor_folder = folder / "tokenizer"
    # saved as "PixtralImageProcessor", the real class, whichever backend is installed
    image_processor = PixtralImageProcessorPil(size={"longest_edge": LONGEST_EDGE},
                                               patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE})
    image_processor.save_pretrained(processor_folder)
    config = {"image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]", "image_token": "[IMG]",
              "patch_size": PATCH_SIZE, "processor_class": "PixtralProcessor", "spatial_merge_size": SPATIAL_MERGE}
    (processor_folder / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def qwen3_tokenizer():
    """[klein]'s Qwen3 tokenizer: byte-level, Qwen's special tokens, Qwen3's chat template."""
    return zimage.tokenizer()


def qwen3_encoder():
    """A seeded tiny `Qwen3ForCausalLM` (FLUX.2 [klein]'s text encoder class), three layers."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = qwen3_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=len(OUT_LAYERS),
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,  # grouped-query attention, as Qwen3-4B's
        max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    return parts.seeded(Qwen3ForCausalLM, config).eval()


def transformer(guidance_embeds: bool):
    """The tiny FLUX.2 DiT: one double- and one single-stream block over the 4 * 32 patchified
    latent channels, text features of three stacked layers, RoPE axes summing to its head size;
    `guidance_embeds` as [dev]'s (guidance-distilled) or not as [klein]'s."""
    from diffusers import Flux2Transformer2DModel

    return parts.seeded(
        Flux2Transformer2DModel, patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=len(OUT_LAYERS) * TEXT_HIDDEN,
        timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=guidance_embeds,
    )


def vae():
    """AutoencoderKLFlux2 with the real factor 8 (four blocks), the real 32 latent channels and
    2x2 patch batch norm; tiny widths."""
    from diffusers import AutoencoderKLFlux2

    return parts.seeded(
        AutoencoderKLFlux2, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=8, sample_size=1024,
    )


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def build_flux2(folder: Path) -> None:
    """tiny/flux2: a `Flux2Pipeline` folder (as black-forest-labs/FLUX.2-dev) whose `tokenizer` is
    the processor's tokenizer (see `write_processor_configs`)."""
    from diffusers import Flux2Pipeline

    pipe = Flux2Pipeline(scheduler=scheduler(), vae=vae(), text_encoder=mistral_encoder(),
                         tokenizer=mistral_tokenizer(), transformer=transformer(guidance_embeds=True))
    parts.save(pipe, folder)
    write_processor_configs(folder)


def build_flux2_klein(folder: Path) -> None:
    """tiny/flux2-klein: a `Flux2KleinPipeline` folder (as black-forest-labs/FLUX.2-klein-4B:
    step-distilled, `is_distilled`)."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline(scheduler=scheduler(), vae=vae(), text_encoder=qwen3_encoder(),
                              tokenizer=qwen3_tokenizer(), transformer=transformer(guidance_embeds=False),
                              is_distilled=True)
    parts.save(pipe, folder)


def torchvision_missing() -> bool:
    return importlib.util.find_spec("torchvision") is None


def names_processor(ctx: LoadContext) -> bool:
    """Whether the checkpoint's `tokenizer` is a PixtralProcessor: as its `model_index.json` says
    (a folder's, or a hub id's in the local Hugging Face cache; the tiny twin's names its tokenizer),
    else as FLUX.2-dev's."""
    index_path = Path(ctx.source) / "model_index.json"
    if not index_path.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ctx.source, "model_index.json") if "/" in ctx.source else None
        if not isinstance(cached, str):
            return True
        index_path = Path(cached)
    tokenizer = json.loads(index_path.read_text()).get("tokenizer") or [None, None]
    return tokenizer[-1] == "PixtralProcessor"


# --------------------------------------------------------------------------------------------
# the family

NEEDS_TORCHVISION = ("needs torchvision: its tokenizer is a PixtralProcessor, whose Pixtral image processor "
                     "transformers 5 builds only with torchvision")
REFERENCES = ("image is one reference picture or a list of them (no strength; PIL images, at least 64 px a side): "
              "each is cropped to a multiple of 16 px and shrunk to ~1 MP only when larger; height/width "
              "(default: the first reference's size) size the output")


class Flux2(Family):
    key = "flux2"
    title = "FLUX.2 pipeline"
    classes = frozenset({DEV, KLEIN, "Flux2KleinInpaintPipeline", "Flux2KleinKVPipeline", "Flux2ModularPipeline",
                         "Flux2KleinModularPipeline", "Flux2KleinBaseModularPipeline"})
    tiny_models = (
        TinyModel("tiny/flux2", "random-weight smoke model, FLUX.2 [dev] layout: Mistral3 text encoder with its "
                                "Pixtral vision tower, its PixtralProcessor's tokenizer, FLUX.2 DiT, "
                                "AutoencoderKLFlux2 (pictures are noise, code paths real)", build_flux2,
                  call={"text_encoder_out_layers": OUT_LAYERS, "max_sequence_length": DEV_MAX_SEQUENCE}),
        TinyModel("tiny/flux2-klein", "random-weight smoke model, FLUX.2 [klein] 4B layout: Qwen3 text encoder, "
                                      "FLUX.2 DiT without guidance embeds, AutoencoderKLFlux2 (pictures are noise, "
                                      "code paths real)", build_flux2_klein,
                  call={"text_encoder_out_layers": OUT_LAYERS, "max_sequence_length": KLEIN_MAX_SEQUENCE}),
    )
    options = ("vae",)  # no FLUX.2 ControlNet pipelines in diffusers
    call_pipelines = {DEV: "pipelines/flux2/pipeline_flux2.py", KLEIN: "pipelines/flux2/pipeline_flux2_klein.py"}
    vae_component = ("vae", "AutoencoderKLFlux2")
    knob_hints = {"strength": "FLUX.2 edits from reference images with no strength: sweep guidance_scale, "
                              "num_inference_steps or the reference images"}
    def knob_problem(self, class_name: str, call: Mapping[str, Any], config: Mapping[str, Any] | None = None
                     ) -> dict[str, str]:
        """A step-distilled FLUX.2 [klein] (`is_distilled` in its config: klein-4B/9B) ignores `guidance_scale`."""
        if class_name != KLEIN or not (config or {}).get("is_distilled") or call.get("guidance_scale") is None:
            return {}
        return {"guidance_scale": (f"{class_name} of a step-distilled checkpoint (is_distilled) ignores guidance_scale "
                                   f"(got {call['guidance_scale']!r}): sweep num_inference_steps or the prompt, or load "
                                   f"a Base checkpoint (black-forest-labs/FLUX.2-klein-base-4B) to use it")}

    entries = (
        Entry("flux2", DEV, "black-forest-labs/FLUX.2-dev", mapping_key="flux2", tiny="tiny/flux2", image_list=True,
              requires=("torchvision",),  # the real checkpoint's PixtralProcessor; the twin loads without it
              note=f"{REFERENCES}; guidance_scale is distilled guidance (4.0). FLUX.2-dev {NEEDS_TORCHVISION}. "
                   "tiny/flux2 names the processor's tokenizer instead (TokenizersBackend, the processor's "
                   "files beside it in tokenizer/), so it loads without torchvision: prompts encode the same "
                   "(the pipeline only applies the chat template), but caption_upsample_temperature needs the "
                   "processor. It stacks text layers 1-3 of its three (text_encoder_out_layers)"),
        Entry("flux2-klein", KLEIN, "black-forest-labs/FLUX.2-klein-4B", mapping_key="flux2-klein",
              tiny="tiny/flux2-klein", image_list=True,
              note=f"{REFERENCES}; the step-distilled [klein] 4B/9B (is_distilled) ignore guidance_scale and run "
                   "~4 steps; the Base checkpoints (FLUX.2-klein-base-4B) use it as classifier-free guidance. "
                   "The tiny twin is distilled, as FLUX.2-klein-4B"),
    )
    batching_reason = ("FLUX.2's reference tokens, packed latents and position ids have no batching pieces: "
                       "each cell runs as one pipeline call")

    def detect(self, class_name: str) -> bool:
        """Its classes, and any other diffusers FLUX.2 pipeline (`Flux2*Pipeline`)."""
        return class_name in self.classes or (class_name.startswith("Flux2") and class_name.endswith("Pipeline"))

    def load_extras(self, ctx: LoadContext) -> dict:
        """The default (a replacement `vae`), after checking that a checkpoint whose `tokenizer` is a
        PixtralProcessor (FLUX.2-dev's) can load here."""
        if ctx.class_name in PROCESSOR_PIPELINES and torchvision_missing() and names_processor(ctx):
            raise ValidationError(
                f"`model` {ctx.name!r} ({ctx.class_name}) {NEEDS_TORCHVISION}: pip install torchvision"
            )
        return super().load_extras(ctx)

    def prompt_encoding(self, pipe) -> str | None:
        return None  # a Mistral / Qwen3 chat-template encoder: compel can't weight it


FAMILY = Flux2()
