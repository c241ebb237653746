"""Kandinsky 3: `Kandinsky3Img2ImgPipeline`, a T5-conditioned `Kandinsky3UNet` on MoVQ latents.

Unlike Kandinsky 2.2 it has no prior: one text encoder (a T5 encoder; FLAN-UL2's in the real
checkpoint), the UNet, a MoVQ autoencoder (`movq`, a `VQModel`, scale factor 8) and DDPM. Its
`__call__` takes no `height`/`width`: the output has the init image's size (run_sweep resizes the
init image to a cell's size), which must be a multiple of the MoVQ factor times the UNet's
downsampling (64 px for the real model, 16 for the tiny twin `tiny/kandinsky3`).
"""

from __future__ import annotations

from pathlib import Path

from . import kandinsky22
from . import tiny_parts as parts
from .base import Entry, Family, TinyModel

IMG2IMG = "Kandinsky3Img2ImgPipeline"


def unet():
    """The tiny `Kandinsky3UNet`: two levels (the second with cross- and self-attention), T5 width in."""
    from diffusers import Kandinsky3UNet

    return parts.seeded(
        Kandinsky3UNet,
        in_channels=4,
        time_embedding_dim=32,
        groups=8,
        attention_head_dim=8,
        layers_per_block=2,  # the least that works: with 1, diffusers' up blocks mismatch their channels
        block_out_channels=(32, 64),
        cross_attention_dim=32,
        encoder_hid_dim=parts.T5_HIDDEN,
    )


def scheduler():
    """Kandinsky 3's DDPM schedule: the original's linear betas 1e-4..0.02 over 1000 steps, x0
    clipped to [-1, 1], epsilon prediction (DDPMScheduler's defaults, as the hub config has them)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        variance_type="fixed_small",
        clip_sample=True,
        clip_sample_range=1.0,
        prediction_type="epsilon",
        thresholding=False,
        timestep_spacing="leading",
        steps_offset=0,
    )


def build_kandinsky3(folder: Path) -> None:
    """tiny/kandinsky3: a `Kandinsky3Pipeline` folder (T5 encoder, UNet, MoVQ, DDPM)."""
    from diffusers import Kandinsky3Pipeline

    pipe = Kandinsky3Pipeline(
        tokenizer=parts.t5_tokenizer(),
        text_encoder=parts.t5_encoder(),
        unet=unet(),
        scheduler=scheduler(),
        movq=kandinsky22.movq(),  # the MoVQ layout Kandinsky 2.2 and 3 share (the very same tiny weights)
    )
    parts.save(pipe, folder)


class Kandinsky3(Family):
    key = "kandinsky3"
    title = "Kandinsky 3 pipeline"
    classes = frozenset({"Kandinsky3Pipeline", IMG2IMG})
    tiny_models = (
        TinyModel("tiny/kandinsky3", "random-weight smoke model, Kandinsky 3 layout (T5 encoder, Kandinsky3UNet, "
                                     "MoVQ; pictures are noise, code paths real)", build_kandinsky3),
    )
    options = ("vae",)  # `vae=` replaces the MoVQ; no ControlNet
    vae_component = ("movq", "VQModel")
    call_pipelines = {IMG2IMG: "pipelines/kandinsky3/pipeline_kandinsky3_img2img.py"}
    entries = (
        Entry("kandinsky3", IMG2IMG, "kandinsky-community/kandinsky-3", mapping_key="kandinsky3",
              tiny="tiny/kandinsky3",
              note="no prior (unlike 2.2); output size = init image size, a multiple of 64 px (16 for the tiny twin)"),
    )
    batching_reason = ("Kandinsky 3 encodes with a MoVQ and masks its T5 context; it has no batching pieces: "
                       "each cell runs as one pipeline call")

    def prompt_encoding(self, pipe) -> str | None:
        return None  # a T5 encoder: none of compel's SD/SDXL encodings

    def size_multiple(self, pipe) -> int | None:
        """The MoVQ factor times the UNet's downsampling (it halves the latents at every level but
        the last and can't match an odd size on the way up)."""
        factor = super().size_multiple(pipe)
        blocks = getattr(getattr(getattr(pipe, "unet", None), "config", None), "block_out_channels", None)
        if factor is None or not isinstance(blocks, (list, tuple)) or not blocks:
            return factor
        return factor * 2 ** (len(blocks) - 1)


FAMILY = Kandinsky3()
