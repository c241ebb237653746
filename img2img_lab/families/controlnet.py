"""ControlNet image-to-image: an SD 1.x or SDXL pipeline with one or more `ControlNetModel`s.

A ControlNet pipeline comes from `load_pipeline(model, controlnet=...)`: the base model's family
loads it, with the ControlNets as the `controlnet` keyword, and AutoPipeline picks the ControlNet
class. This family covers the pipelines that result: their `control_image` is a picture loaded
and sized like the init image (`picture_args`; see `control.prepare_control_image`), their
`controlnet_conditioning_scale` and guidance window are call knobs, and their output latents may
feed a next stage. The tiny twins are ControlNet folders, not pipelines: `tiny/controlnet-sd15`
(a `ControlNetModel` for `tiny/sd15`), `tiny/controlnet-sdxl` (a `ControlNetModel` for
`tiny/sdxl`) and `tiny/controlnet-union-sdxl` (a `ControlNetUnionModel` for `tiny/sdxl`, which
AutoPipeline turns into the Union pipeline: it picks that class when the `controlnet` it is given
is a `ControlNetUnionModel`; its calls take `control_mode`). Not batched: the ControlNet
residuals of each call would have to join the UNet batch.
"""

from __future__ import annotations

from pathlib import Path

from . import sdxl
from . import tiny_parts as parts
from .base import Entry, Family, TinyModel
from .sd import CONTROLNET_IMG2IMG as SD_IMG2IMG
from .sd import SD15_UNET
from .sdxl import CONTROLNET_IMG2IMG as SDXL_IMG2IMG

SDXL_UNION_IMG2IMG = "StableDiffusionXLControlNetUnionImg2ImgPipeline"
SDXL_PAG_IMG2IMG = "StableDiffusionXLControlNetPAGImg2ImgPipeline"


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


def sdxl_layout(cls) -> dict:
    """The keyword arguments of ControlNet class `cls` that tiny/sdxl's UNet config has: its down
    half, mid block and added conditioning (pooled text embeddings, six time ids), read from the
    very UNet `sdxl.build_sdxl` makes so the two stay compatible."""
    import inspect

    unet_config = sdxl.unet(text_hidden=2 * parts.TEXT_HIDDEN, num_time_ids=6).config
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in unet_config.items() if k in accepted and k not in ("self", "conditioning_channels")}


def fill_zero_convs(modules) -> None:
    """ControlNets start with zero convs (a no-op until trained); fill them, seeded, so the control
    image and `controlnet_conditioning_scale` change the picture as a trained one does."""
    import torch

    torch.manual_seed(parts.SEED)
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                param.normal_(0.0, 0.5)


def build_controlnet_sdxl(folder: Path) -> None:
    """tiny/controlnet-sdxl: a `ControlNetModel` on tiny/sdxl's UNet layout, conditioning on."""
    from diffusers import ControlNetModel

    # the control-image embedding downsamples by the VAE's factor 8 (three stride-2 convs)
    controlnet = parts.seeded(ControlNetModel, **sdxl_layout(ControlNetModel), conditioning_channels=3,
                              conditioning_embedding_out_channels=(8, 16, 16, 32))
    fill_zero_convs([*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out])
    parts.save(controlnet, folder)


def build_controlnet_union_sdxl(folder: Path) -> None:
    """tiny/controlnet-union-sdxl: a `ControlNetUnionModel` (ControlNet++: one net, six control
    types chosen by `control_mode`, fused by a small transformer) on tiny/sdxl's UNet layout."""
    from diffusers import ControlNetUnionModel

    layout = sdxl_layout(ControlNetUnionModel)
    width = layout["block_out_channels"][0]  # the fuser works on the first block's channels
    controlnet = parts.seeded(
        ControlNetUnionModel,
        **layout,
        conditioning_channels=3,
        conditioning_embedding_out_channels=(8, 16, 16, 32),
        num_control_type=6,  # xinsir/controlnet-union-sdxl-1.0's six (openpose, depth, hed, canny, normal, segment)
        num_trans_channel=width,
        num_trans_head=4,
        num_trans_layer=1,
        num_proj_channel=width,
    )
    fill_zero_convs([*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out, controlnet.spatial_ch_projs])
    parts.save(controlnet, folder)


class ControlNet(Family):
    key = "controlnet"
    title = "ControlNet pipeline"
    classes = frozenset({"StableDiffusionControlNetPipeline", SD_IMG2IMG,
                         "StableDiffusionXLControlNetPipeline", SDXL_IMG2IMG,
                         "StableDiffusionXLControlNetUnionPipeline", SDXL_UNION_IMG2IMG,
                         "StableDiffusionXLControlNetPAGPipeline", SDXL_PAG_IMG2IMG})
    tiny_models = (
        TinyModel("tiny/controlnet-sd15", "random-weight smoke ControlNetModel for tiny/sd15 "
                                          "(pictures are noise, code paths real)", build_controlnet_sd15),
        TinyModel("tiny/controlnet-sdxl", "random-weight smoke ControlNetModel for tiny/sdxl "
                                          "(pictures are noise, code paths real)", build_controlnet_sdxl),
        TinyModel("tiny/controlnet-union-sdxl", "random-weight smoke ControlNetUnionModel for tiny/sdxl "
                                                "(pictures are noise, code paths real)", build_controlnet_union_sdxl),
    )
    call_pipelines = {SD_IMG2IMG: "pipelines/controlnet/pipeline_controlnet_img2img.py",
                      SDXL_IMG2IMG: "pipelines/controlnet/pipeline_controlnet_sd_xl_img2img.py",
                      SDXL_UNION_IMG2IMG: "pipelines/controlnet/pipeline_controlnet_union_sd_xl_img2img.py",
                      SDXL_PAG_IMG2IMG: "pipelines/pag/pipeline_pag_controlnet_sd_xl_img2img.py"}
    picture_args = ("control_image",)
    entries = (
        Entry("controlnet-sd15", SD_IMG2IMG, "lllyasviel/control_v11f1p_sd15_depth", mapping_key="stable-diffusion-controlnet",
              tiny="tiny/sd15", load={"controlnet": "tiny/controlnet-sd15"}, single_file=True,
              note="an SD 1.x checkpoint with controlnet=<ControlNetModel>; the checkpoint id is the ControlNet's"),
        Entry("sdxl-controlnet", SDXL_IMG2IMG, "diffusers/controlnet-depth-sdxl-1.0",
              mapping_key="stable-diffusion-xl-controlnet", tiny="tiny/sdxl", load={"controlnet": "tiny/controlnet-sdxl"},
              note="an SDXL checkpoint with controlnet=<ControlNetModel>; the checkpoint id is the ControlNet's"),
        Entry("sdxl-controlnet-union", SDXL_UNION_IMG2IMG, "xinsir/controlnet-union-sdxl-1.0",
              mapping_key="stable-diffusion-xl-controlnet-union", tiny="tiny/sdxl",
              load={"controlnet": "tiny/controlnet-union-sdxl"},
              note="an SDXL checkpoint with controlnet=<ControlNetUnionModel> (AutoPipeline picks the Union pipeline "
                   "for that class); each call takes control_mode (0 openpose, 1 depth, 2 hed, 3 canny, 4 normal, "
                   "5 segment); the checkpoint id is the ControlNet's"),
        Entry("sdxl-controlnet-pag", SDXL_PAG_IMG2IMG, "diffusers/controlnet-depth-sdxl-1.0",
              mapping_key="stable-diffusion-xl-controlnet-pag", tiny="tiny/sdxl",
              load={"controlnet": "tiny/controlnet-sdxl", "enable_pag": True},
              note="an SDXL checkpoint with controlnet=<ControlNetModel> and enable_pag=True (pag_scale a call knob); "
                   "the checkpoint id is the ControlNet's"),
    )
    latent_input = frozenset({SD_IMG2IMG, SDXL_IMG2IMG})
    batching_reason = ("the ControlNet residuals of each call have no batching pieces: each cell runs as one "
                       "pipeline call")

    def detect(self, class_name: str) -> bool:
        """Its classes, and any other diffusers ControlNet pipeline (they all take `control_image`)."""
        return class_name in self.classes or "ControlNet" in class_name


FAMILY = ControlNet()
