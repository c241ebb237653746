"""ControlNet image-to-image: an SD 1.x or SDXL pipeline with one or more `ControlNetModel`s.

A ControlNet pipeline comes from `load_pipeline(model, controlnet=...)`: the base model's family
loads it, with the ControlNets as the `controlnet` keyword, and AutoPipeline picks the ControlNet
class. This family covers the pipelines that result: their `control_image` is a picture loaded
and sized like the init image (`picture_args`; see `control.prepare_control_image`), their
`controlnet_conditioning_scale` and guidance window are call knobs, and their output latents may
feed a next stage. The tiny twin `tiny/controlnet-sd15` is a `ControlNetModel` folder for
`tiny/sd15` (not a pipeline). Not batched: the ControlNet residuals of each call would have to
join the UNet batch.
"""

from __future__ import annotations

from pathlib import Path

from . import tiny_parts as parts
from .base import Entry, Family, TinyModel
from .sd import CONTROLNET_IMG2IMG as SD_IMG2IMG
from .sd import SD15_UNET
from .sdxl import CONTROLNET_IMG2IMG as SDXL_IMG2IMG


def build_controlnet_sd15(folder: Path) -> None:
    """tiny/controlnet-sd15: a `ControlNetModel` on tiny/sd15's UNet layout, conditioning on."""
    import torch
    from diffusers import ControlNetModel

    # 1. the UNet's down half, with a control-image embedding downsampling by the VAE's factor 8
    unet_kwargs = {k: v for k, v in SD15_UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")}
    controlnet = parts.seeded(
        ControlNetModel,
        **unet_kwargs,
        conditioning_channels=3,
        conditioning_embedding_out_channels=(8, 16, 16, 32),  # three stride-2 convs
    )
    # 2. ControlNet starts with zero convs (a no-op until trained); fill them, seeded, so the
    # control image and `controlnet_conditioning_scale` change the picture as a trained one does
    torch.manual_seed(parts.SEED)
    with torch.no_grad():
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]
        for module in zero_convs:
            for param in module.parameters():
                param.normal_(0.0, 0.5)
    parts.save(controlnet, folder)


class ControlNet(Family):
    key = "controlnet"
    title = "ControlNet pipeline"
    classes = frozenset({"StableDiffusionControlNetPipeline", SD_IMG2IMG,
                         "StableDiffusionXLControlNetPipeline", SDXL_IMG2IMG})
    tiny_models = (
        TinyModel("tiny/controlnet-sd15", "random-weight smoke ControlNetModel for tiny/sd15 "
                                          "(pictures are noise, code paths real)", build_controlnet_sd15),
    )
    call_pipelines = {SD_IMG2IMG: "pipelines/controlnet/pipeline_controlnet_img2img.py"}
    picture_args = ("control_image",)
    entries = (
        Entry("controlnet-sd15", SD_IMG2IMG, "lllyasviel/control_v11f1p_sd15_depth", mapping_key="stable-diffusion-controlnet",
              tiny="tiny/sd15", load={"controlnet": "tiny/controlnet-sd15"}, single_file=True,
              note="an SD 1.x checkpoint with controlnet=<ControlNetModel>; the checkpoint id is the ControlNet's"),
    )
    latent_input = frozenset({SD_IMG2IMG, SDXL_IMG2IMG})
    batching_reason = ("the ControlNet residuals of each call have no batching pieces: each cell runs as one "
                       "pipeline call")

    def detect(self, class_name: str) -> bool:
        """Its classes, and any other diffusers ControlNet pipeline (they all take `control_image`)."""
        return class_name in self.classes or "ControlNet" in class_name


FAMILY = ControlNet()
