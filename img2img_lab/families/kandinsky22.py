"""Kandinsky 2.2: a decoder (`KandinskyV22Pipeline` layout) that needs its prior to run.

`AutoPipelineForImage2Image` turns a decoder repo into `KandinskyV22Img2ImgCombinedPipeline`,
which also needs the prior's components, passed in with a `prior_` prefix: from the `prior`
option, from the prior the hub decoder is known to go with (`HUB_PRIORS`), or, for the tiny twin,
from its `prior/` subfolder. The autoencoder is a MoVQ (`movq`, a `VQModel`), so `vae=` replaces
that one, and the decoder can't take SD latents.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ValidationError
from . import tiny_parts as parts
from .base import Entry, Family, LoadContext, TinyModel

COMBINED_IMG2IMG = "KandinskyV22Img2ImgCombinedPipeline"
# Decoder classes that load together with a prior's components.
DECODERS = frozenset({"KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline", COMBINED_IMG2IMG})
# Hub decoders and the prior each goes with (AutoPipeline would otherwise fetch one from the hub).
HUB_PRIORS = {"kandinsky-community/kandinsky-2-2-decoder": "kandinsky-community/kandinsky-2-2-prior"}
# The tiny twin keeps its prior in this subfolder of its own folder.
PRIOR_SUBFOLDER = "prior"
EMBED_DIM = parts.TEXT_HIDDEN  # CLIP image embedding: prior output, decoder condition


# --------------------------------------------------------------------------------------------
# the tiny twin, tiny/kandinsky22: decoder in the folder, prior in prior/


def decoder_unet():
    """The decoder's UNet: image-embedding conditioned, epsilon + learned variance out."""
    from diffusers import UNet2DConditionModel

    return parts.seeded(
        UNet2DConditionModel,
        sample_size=32,
        in_channels=4,
        out_channels=8,  # epsilon + learned variance, like the real decoder
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=EMBED_DIM,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        norm_num_groups=8,
    )


def movq():
    """The MoVQ autoencoder (scale factor 8, as the real one; SpatialNorm needs 32 groups)."""
    from diffusers import VQModel

    return parts.seeded(
        VQModel,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=16,
        vq_embed_dim=4,
    )


def decoder_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )


def prior_transformer():
    """The prior's `PriorTransformer`, with `clip_std` at one (it starts at zero, which would
    make every image embedding the mean)."""
    import torch
    from diffusers import PriorTransformer

    prior = parts.seeded(PriorTransformer, num_attention_heads=2, attention_head_dim=16, embedding_dim=EMBED_DIM,
                         num_layers=1)
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    return prior


def image_encoder():
    """The prior's CLIP vision tower (224 px, patch 14), projecting to the image embedding."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        projection_dim=EMBED_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=1,
        num_channels=3,
        image_size=224,
        patch_size=14,
    )
    return parts.seeded(CLIPVisionModelWithProjection, config)


def image_processor():
    """CLIP's 224 px image processor (OpenAI's mean and std)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        crop_size=224,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        size=224,
    )


def prior_scheduler():
    from diffusers import UnCLIPScheduler

    return UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )


def name_real_image_processor(prior_folder: Path) -> None:
    """Record the image processor class a real checkpoint names in `model_index.json`.

    Without torchvision, transformers 5 hands out CLIPImageProcessorPil for CLIPImageProcessor;
    naming the real class keeps the folder the same on every machine.
    """
    index_path = prior_folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_kandinsky22(folder: Path) -> None:
    """tiny/kandinsky22: the decoder into `folder`, its prior into `folder/prior`."""
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    # 1. decoder (each part seeds itself: its weights do not depend on the order of the parts)
    parts.save(KandinskyV22Pipeline(unet=decoder_unet(), scheduler=decoder_scheduler(), movq=movq()), folder)
    # 2. prior, in prior/
    prior_folder = folder / PRIOR_SUBFOLDER
    prior_pipe = KandinskyV22PriorPipeline(
        prior=prior_transformer(),
        image_encoder=image_encoder(),
        text_encoder=parts.text_encoder_with_projection(projection_dim=EMBED_DIM),
        tokenizer=parts.tokenizer(),
        scheduler=prior_scheduler(),
        image_processor=image_processor(),
    )
    parts.save(prior_pipe, prior_folder)
    # 3. the image processor's class as a real checkpoint names it
    name_real_image_processor(prior_folder)


# --------------------------------------------------------------------------------------------
# the family


class Kandinsky22(Family):
    key = "kandinsky22"
    title = "Kandinsky 2.2 pipeline"
    classes = DECODERS | {"KandinskyV22CombinedPipeline", "KandinskyV22InpaintCombinedPipeline"}
    tiny_models = (
        TinyModel("tiny/kandinsky22", "random-weight smoke model, Kandinsky 2.2 decoder with its prior in prior/ "
                                      "(pictures are noise, code paths real)", build_kandinsky22),
    )
    options = ("controlnet", "vae", "prior")
    call_pipelines = {COMBINED_IMG2IMG: "pipelines/kandinsky2_2/pipeline_kandinsky2_2_combined.py"}
    vae_component = ("movq", "VQModel")
    # the prior a decoder loads with: its diffusers class, the hub decoders' known priors, the
    # version the error names and the prior it suggests
    decoders = DECODERS
    prior_pipeline = "KandinskyV22PriorPipeline"
    hub_priors = HUB_PRIORS
    version = "2.2"
    example_prior = "kandinsky-community/kandinsky-2-2-prior"
    entries = (
        Entry("kandinsky22", COMBINED_IMG2IMG, "kandinsky-community/kandinsky-2-2-decoder", mapping_key="kandinsky22",
              tiny="tiny/kandinsky22", note="its prior loads beside it (`prior` option; the tiny one from prior/)"),
    )
    batching_reason = ("Kandinsky 2.2 runs its prior before the decoder and encodes with a MoVQ; it has no "
                       "batching pieces: each cell runs as one pipeline call")

    def load_extras(self, ctx: LoadContext) -> dict:
        """ControlNet and `movq` as the default, plus the prior's components for a decoder."""
        extra = super().load_extras(ctx)
        if ctx.class_name in self.decoders:
            prior_pipe = ctx.load_pipeline(self.prior_for(ctx), self.prior_pipeline, "prior")
            extra.update({f"prior_{name}": component for name, component in prior_pipe.components.items()})
        return extra

    def prior_for(self, ctx: LoadContext):
        """The prior to load with a decoder: the option, the tiny twin's, or the hub decoder's own."""
        prior = ctx.options["prior"]
        if prior is None and ctx.tiny is not None:
            prior = str(Path(ctx.source) / PRIOR_SUBFOLDER)
        prior = prior or self.hub_priors.get(ctx.source)
        if prior is None:
            raise ValidationError(
                f"`prior` is needed for the Kandinsky {self.version} decoder {ctx.name!r}: pass prior=<hub id or "
                f"folder> (e.g. {self.example_prior!r})"
            )
        return prior

    def prompt_encoding(self, pipe) -> str | None:
        return None  # its text encoder is the prior's, a CLIP projection compel can't weight

    def size_multiple(self, pipe) -> int | None:
        """The MoVQ factor times the UNet's downsampling: its resnet up-blocks double the latent
        size and can't match an odd one (64 px for the real decoder, 16 for the tiny twin)."""
        factor = super().size_multiple(pipe)
        unet = getattr(pipe, "unet", None) or getattr(getattr(pipe, "decoder_pipe", None), "unet", None)
        blocks = getattr(getattr(unet, "config", None), "block_out_channels", None)
        if factor is None or not isinstance(blocks, (list, tuple)) or not blocks:
            return factor
        return factor * 2 ** (len(blocks) - 1)


FAMILY = Kandinsky22()
