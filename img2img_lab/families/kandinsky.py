"""Kandinsky 2.1: a decoder (`KandinskyPipeline` layout, with its own multilingual text encoder)
that needs its prior to run.

As for Kandinsky 2.2 (`kandinsky22`, which this family follows): `AutoPipelineForImage2Image`
turns a decoder repo into `KandinskyImg2ImgCombinedPipeline`, which also needs the prior's
components, passed in with a `prior_` prefix: from the `prior` option, from the prior the hub
decoder is known to go with (`HUB_PRIORS`), or, for the tiny twin, from its `prior/` subfolder.
The autoencoder is a MoVQ (`movq`, a `VQModel`). Unlike 2.2, the decoder reads the prompt too:
diffusers' `MultilingualCLIP` (an XLM-RoBERTa model with a linear projection) with an
`XLMRobertaTokenizer`, and its UNet takes text and image embeddings (`text_image`).
"""

from __future__ import annotations

from pathlib import Path

from . import kandinsky22 as k22
from . import tiny_parts as parts
from .base import Entry, TinyModel

COMBINED_IMG2IMG = "KandinskyImg2ImgCombinedPipeline"
PRIOR_PIPELINE = "KandinskyPriorPipeline"
# Decoder classes that load together with a prior's components.
DECODERS = frozenset({"KandinskyPipeline", "KandinskyImg2ImgPipeline", COMBINED_IMG2IMG})
# Hub decoders and the prior each goes with (AutoPipeline would otherwise fetch one from the hub).
HUB_PRIORS = {"kandinsky-community/kandinsky-2-1": "kandinsky-community/kandinsky-2-1-prior"}
PRIOR_SUBFOLDER = k22.PRIOR_SUBFOLDER
EMBED_DIM = k22.EMBED_DIM  # CLIP image embedding: the prior's output, the decoder's condition
MCLIP_HIDDEN = 32  # the XLM-RoBERTa hidden size (1024 in the real text encoder)


# --------------------------------------------------------------------------------------------
# the tiny twin, tiny/kandinsky: decoder (with its text encoder) in the folder, prior in prior/


def xlm_roberta_tokenizer():
    """A real `XLMRobertaTokenizer` (sentencepiece-style Unigram, built with `tokenizers`), offline.

    XLM-R's special tokens where it has them (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>`
    last), then the word boundary `▁`, the printable ASCII characters and `▁a`..`▁z`: every text
    tokenizes, one token per character mostly. The class's own pre-tokenizer, decoder and
    `<s> ... </s>` template are kept; only the vocabulary is small.
    """
    from transformers import XLMRobertaTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(chr(c), -2.0) for c in range(32, 127)] + [("▁" + chr(c), -1.5) for c in range(97, 123)]
    vocab += [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=512)


XLM_VOCAB = 5 + 95 + 26 + 1  # the size of `xlm_roberta_tokenizer()`'s vocabulary


def text_encoder():
    """diffusers' `MultilingualCLIP`: a tiny XLM-RoBERTa, its mean-pooled output projected to the
    image embedding (`numDims`), over `xlm_roberta_tokenizer()`'s vocabulary."""
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    config = MCLIPConfig(
        transformerDimSize=MCLIP_HIDDEN,
        imageDimSize=EMBED_DIM,
        vocab_size=XLM_VOCAB,
        hidden_size=MCLIP_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=80,  # 77 tokens after XLM-R's position offset (pad id + 1)
        type_vocab_size=1,
        layer_norm_eps=1e-5,  # XLM-RoBERTa large's, the real encoder's base
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    return parts.seeded(MultilingualCLIP, config).eval()


def decoder_unet():
    """The decoder's UNet: text + image embedding conditioned (`text_image`), epsilon + learned
    variance out."""
    from diffusers import UNet2DConditionModel

    return parts.seeded(
        UNet2DConditionModel,
        sample_size=32,
        in_channels=4,
        out_channels=8,  # epsilon + learned variance, like the real decoder
        addition_embed_type="text_image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=MCLIP_HIDDEN,
        encoder_hid_dim_type="text_image_proj",
        cross_attention_dim=EMBED_DIM,  # the image embedding's size, as diffusers requires for text_image
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        norm_num_groups=8,
    )


def build_kandinsky(folder: Path) -> None:
    """tiny/kandinsky: the decoder into `folder`, its prior into `folder/prior`."""
    from diffusers import KandinskyPipeline, KandinskyPriorPipeline

    # 1. decoder (each part seeds itself: its weights do not depend on the order of the parts)
    decoder = KandinskyPipeline(text_encoder=text_encoder(), tokenizer=xlm_roberta_tokenizer(), unet=decoder_unet(),
                                scheduler=k22.decoder_scheduler(), movq=k22.movq())
    parts.save(decoder, folder)
    # 2. prior, in prior/ (the Kandinsky 2.2 twin's parts: the same classes and layout)
    prior_folder = folder / PRIOR_SUBFOLDER
    prior_pipe = KandinskyPriorPipeline(
        prior=k22.prior_transformer(),
        image_encoder=k22.image_encoder(),
        text_encoder=parts.text_encoder_with_projection(projection_dim=EMBED_DIM),
        tokenizer=parts.tokenizer(),
        scheduler=k22.prior_scheduler(),
        image_processor=k22.image_processor(),
    )
    parts.save(prior_pipe, prior_folder)
    # 3. the image processor's class as a real checkpoint names it
    k22.name_real_image_processor(prior_folder)


# --------------------------------------------------------------------------------------------
# the family


class Kandinsky(k22.Kandinsky22):
    """Kandinsky 2.1: Kandinsky 2.2's loading (a prior beside the decoder) and knobs, its own classes."""

    key = "kandinsky"
    title = "Kandinsky 2.1 pipeline"
    classes = DECODERS | {"KandinskyCombinedPipeline", "KandinskyInpaintCombinedPipeline"}
    tiny_models = (
        TinyModel("tiny/kandinsky", "random-weight smoke model, Kandinsky 2.1 decoder (multilingual CLIP text "
                                    "encoder) with its prior in prior/ (pictures are noise, code paths real)",
                  build_kandinsky),
    )
    call_pipelines = {COMBINED_IMG2IMG: "pipelines/kandinsky/pipeline_kandinsky_combined.py"}
    entries = (
        Entry("kandinsky", COMBINED_IMG2IMG, "kandinsky-community/kandinsky-2-1", mapping_key="kandinsky",
              tiny="tiny/kandinsky",
              note="its prior loads beside it (`prior` option; the tiny one from prior/); sizes are multiples of 64 px"),
    )
    decoders = DECODERS
    prior_pipeline = PRIOR_PIPELINE
    hub_priors = HUB_PRIORS
    version = "2.1"
    example_prior = "kandinsky-community/kandinsky-2-1-prior"
    batching_reason = ("Kandinsky 2.1 runs its prior before the decoder and encodes with a MoVQ; it has no "
                       "batching pieces: each cell runs as one pipeline call")

    def size_multiple(self, pipe) -> int | None:
        """The MoVQ factor squared (64 px): Kandinsky 2.1 sizes its noise as ceil(size / factor**2) * factor
        latent pixels and refuses init latents of another size."""
        factor = super(k22.Kandinsky22, self).size_multiple(pipe)
        return None if factor is None else factor * factor


FAMILY = Kandinsky()
