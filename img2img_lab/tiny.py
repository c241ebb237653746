"""Offline random-weight smoke models, built with the real diffusers/transformers classes.

Each tiny model has the same layout as its full-size checkpoint (same pipeline class, same
component classes, same scheduler configuration, the same VAE scale factor), only with a handful
of channels and random weights. Pictures are noise; every code path is real. A model is built
deterministically on first use, saved with ``save_pretrained(..., safe_serialization=True)`` into
``$IMG2IMG_LAB_HOME/tiny/<x>-v<VERSION>`` (default ``~/.cache/img2img_lab``), and then opened by
the ordinary ``from_pretrained`` path, exactly like a downloaded checkpoint.

How each folder loads (all in float32 on CPU in about a second per image-to-image call):

- ``tiny/sd15``, ``tiny/sdxl``, ``tiny/sdxl-refiner``:
  ``AutoPipelineForImage2Image.from_pretrained(path)``.
- ``tiny/kandinsky22``: the folder is the decoder (``KandinskyV22Pipeline`` layout) and its prior
  lies in the ``prior/`` subfolder (``KandinskyV22PriorPipeline`` layout), see
  :func:`kandinsky_prior_path`. The combined image-to-image pipeline needs the prior's components
  passed in with a ``prior_`` prefix, because locally there is no model card naming the prior::

      prior = KandinskyV22PriorPipeline.from_pretrained(kandinsky_prior_path())
      pipe = AutoPipelineForImage2Image.from_pretrained(
          tiny_model_path("tiny/kandinsky22"),
          **{f"prior_{k}": v for k, v in prior.components.items()})

- ``tiny/controlnet-sd15``: a ``ControlNetModel`` folder for ``tiny/sd15``::

      controlnet = ControlNetModel.from_pretrained(tiny_model_path("tiny/controlnet-sd15"))
      pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
          tiny_model_path("tiny/sd15"), controlnet=controlnet)

- ``tiny/sd-x2-latent-upscaler`` (``StableDiffusionLatentUpscalePipeline``, shares the VAE of
  ``tiny/sd15`` so an sd15 ``output_type="latent"`` result can feed it) and
  ``tiny/sd-x4-upscaler`` (``StableDiffusionUpscalePipeline``): ``DiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ValidationError
from .vocab import TINY_SIZE  # noqa: F401 - re-exported: the size a tiny model runs at without height/width

# Bump when any tiny model's layout or weights change, so every cache rebuilds.
VERSION = 2  # 2: the tiny ControlNet's zero-initialised output convs are filled (it conditions)

TINY_MODELS = {
    "tiny/sd15": "random-weight smoke model, Stable Diffusion 1.5 layout (pictures are noise, code paths real)",
    "tiny/sdxl": "random-weight smoke model, SDXL base layout with two text encoders (pictures are noise, code paths real)",
    "tiny/sdxl-refiner": "random-weight smoke model, SDXL refiner layout with aesthetic score (pictures are noise, code paths real)",
    "tiny/kandinsky22": "random-weight smoke model, Kandinsky 2.2 decoder with its prior in prior/ (pictures are noise, code paths real)",
    "tiny/controlnet-sd15": "random-weight smoke ControlNetModel for tiny/sd15 (pictures are noise, code paths real)",
    "tiny/sd-x2-latent-upscaler": "random-weight smoke model, SD x2 latent upscaler layout, VAE shared with tiny/sd15 (pictures are noise, code paths real)",
    "tiny/sd-x4-upscaler": "random-weight smoke model, SD x4 upscaler layout (pictures are noise, code paths real)",
}


_SEED = 0
# Text encoders: tiny, with the byte-level vocabulary written by _tokenizer().
_TEXT_HIDDEN = 32
_VOCAB_SIZE = 2 * 256 + 2
_BOS_ID, _EOS_ID = 512, 513
# One SD 1.x UNet layout, shared by tiny/sd15 and its ControlNet so they stay compatible.
_SD15_UNET = dict(
    sample_size=32,  # 32 latent pixels * VAE factor 8 = 256 px default
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=_TEXT_HIDDEN,
    attention_head_dim=8,
    norm_num_groups=8,
)


def tiny_model_path(name: str) -> Path:
    """Return the folder of tiny model ``name``, building it on first use.

    The folder holds an ordinary diffusers checkpoint (``model_index.json`` or ``config.json`` and
    ``*.safetensors``). Building is deterministic, atomic (a temporary folder beside the target,
    then ``os.replace``) and guarded by a file lock, so concurrent processes are safe.

    Args:
        name: one of :data:`TINY_MODELS`, e.g. ``"tiny/sd15"``.

    Returns:
        ``$IMG2IMG_LAB_HOME/tiny/<x>-v<VERSION>`` as a :class:`pathlib.Path`.

    Raises:
        ValidationError: ``name`` is not a tiny model.

    Example:
        >>> from diffusers import AutoPipelineForImage2Image
        >>> pipe = AutoPipelineForImage2Image.from_pretrained(tiny_model_path("tiny/sd15"))
    """
    if not isinstance(name, str) or name not in TINY_MODELS:
        raise ValidationError(f"`name` must be one of {sorted(TINY_MODELS)}, got {name!r}")
    target = _cache_root() / "tiny" / f"{name.removeprefix('tiny/')}-v{VERSION}"
    if (target / _MARKER).is_file():
        return target

    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _MARKER).is_file():  # another process built it while we waited
            return target
        from .loaders import quiet_loading

        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            with quiet_loading():  # no "Writing model shards" bars: building is an implementation detail
                _BUILDERS[name](tmp)
            (tmp / _MARKER).write_text(json.dumps({"name": name, "version": VERSION}) + "\n")
            if target.exists():  # an incomplete leftover without the marker
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def kandinsky_prior_path() -> Path:
    """Return the folder of the prior that goes with ``tiny/kandinsky22`` (its ``prior/`` subfolder).

    It is a ``KandinskyV22PriorPipeline`` checkpoint; pass its components to the combined pipeline
    with a ``prior_`` prefix.

    Example:
        >>> from diffusers import AutoPipelineForImage2Image, KandinskyV22PriorPipeline
        >>> prior = KandinskyV22PriorPipeline.from_pretrained(kandinsky_prior_path())
        >>> pipe = AutoPipelineForImage2Image.from_pretrained(
        ...     tiny_model_path("tiny/kandinsky22"),
        ...     **{f"prior_{k}": v for k, v in prior.components.items()})
    """
    return tiny_model_path("tiny/kandinsky22") / "prior"


# Written last into a built folder: a folder without it is incomplete.
_MARKER = "tiny_model.json"


def _cache_root() -> Path:
    return Path(os.environ.get("IMG2IMG_LAB_HOME") or Path.home() / ".cache" / "img2img_lab").expanduser()


# ---------------------------------------------------------------------------------------------
# Components. Each builder seeds torch itself, so a component's weights depend only on its code.


def _seeded(cls, *args, **kwargs):
    import torch

    torch.manual_seed(_SEED)
    return cls(*args, **kwargs)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (also CLIP's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _tokenizer(pad_token: str = "<|endoftext|>"):
    """A real CLIPTokenizer on a byte-level vocabulary with no merges (one token per byte).

    ``pad_token="!"`` mimics SDXL's second tokenizer.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == _VOCAB_SIZE and vocab["<|startoftext|>"] == _BOS_ID
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77, pad_token=pad_token)


def _text_config(**overrides):
    from transformers import CLIPTextConfig

    config = dict(
        vocab_size=_VOCAB_SIZE,
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,  # SDXL reads hidden_states[-2]
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=_BOS_ID,
        eos_token_id=_EOS_ID,
        pad_token_id=_EOS_ID,
        layer_norm_eps=1e-5,
        hidden_act="quick_gelu",
        projection_dim=_TEXT_HIDDEN,
    )
    config.update(overrides)
    return CLIPTextConfig(**config)


def _text_encoder(**overrides):
    from transformers import CLIPTextModel

    return _seeded(CLIPTextModel, _text_config(**overrides))


def _text_encoder_with_projection(**overrides):
    from transformers import CLIPTextModelWithProjection

    return _seeded(CLIPTextModelWithProjection, _text_config(**overrides))


def _vae(num_blocks: int = 4, scaling_factor: float = 0.18215, force_upcast: bool = True):
    """AutoencoderKL with the real scale factor ``2 ** (num_blocks - 1)`` and tiny channels."""
    from diffusers import AutoencoderKL

    channels = (8, 16, 32, 32)[-num_blocks:]
    return _seeded(
        AutoencoderKL,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * num_blocks,
        up_block_types=("UpDecoderBlock2D",) * num_blocks,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _sd_scheduler_kwargs():
    # SD 1.x / SDXL training schedule
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# ---------------------------------------------------------------------------------------------
# Models


def _save(pipe, folder: Path) -> None:
    pipe.save_pretrained(folder, safe_serialization=True)


def _build_sd15(folder: Path) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    scheduler = PNDMScheduler(
        **_sd_scheduler_kwargs(), set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(),
        tokenizer=_tokenizer(),
        unet=_seeded(UNet2DConditionModel, **_SD15_UNET),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save(pipe, folder)


def _sdxl_unet(text_hidden: int, num_time_ids: int):
    from diffusers import UNet2DConditionModel

    return _seeded(
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
        projection_class_embeddings_input_dim=num_time_ids * 8 + _TEXT_HIDDEN,
        norm_num_groups=8,
    )


def _sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        **_sd_scheduler_kwargs(),
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
        prediction_type="epsilon",
    )


def _build_sdxl(folder: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025),
        text_encoder=_text_encoder(),
        text_encoder_2=_text_encoder_with_projection(),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(pad_token="!"),
        unet=_sdxl_unet(text_hidden=2 * _TEXT_HIDDEN, num_time_ids=6),
        scheduler=_sdxl_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    _save(pipe, folder)


def _build_sdxl_refiner(folder: Path) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(scaling_factor=0.13025),
        text_encoder=None,
        text_encoder_2=_text_encoder_with_projection(),
        tokenizer=None,
        tokenizer_2=_tokenizer(pad_token="!"),
        unet=_sdxl_unet(text_hidden=_TEXT_HIDDEN, num_time_ids=5),
        scheduler=_sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    _save(pipe, folder)


def _build_kandinsky22(folder: Path) -> None:
    import torch
    from diffusers import (
        DDIMScheduler,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
        PriorTransformer,
        UNet2DConditionModel,
        UnCLIPScheduler,
        VQModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    embed_dim = _TEXT_HIDDEN  # CLIP image embedding: prior output, decoder condition
    # 1. decoder
    unet = _seeded(
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
        encoder_hid_dim=embed_dim,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        norm_num_groups=8,
    )
    movq = _seeded(
        VQModel,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 32, 32),  # movq scale factor 8, as the real one; SpatialNorm needs 32 groups
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=16,
        vq_embed_dim=4,
    )
    scheduler = DDIMScheduler(
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
    _save(KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq), folder)

    # 2. prior, in prior/
    prior = _seeded(PriorTransformer, num_attention_heads=2, attention_head_dim=16, embedding_dim=embed_dim, num_layers=1)
    # clip_std starts at zero, which would make every image embedding the mean
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        projection_dim=embed_dim,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=1,
        num_channels=3,
        image_size=224,
        patch_size=14,
    )
    image_encoder = _seeded(CLIPVisionModelWithProjection, vision_config)
    image_processor = CLIPImageProcessor(
        crop_size=224,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        size=224,
    )
    prior_scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    prior_pipe = KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=_text_encoder_with_projection(projection_dim=embed_dim),
        tokenizer=_tokenizer(),
        scheduler=prior_scheduler,
        image_processor=image_processor,
    )
    _save(prior_pipe, folder / "prior")
    # Without torchvision, transformers 5 hands out CLIPImageProcessorPil for CLIPImageProcessor;
    # record the class a real checkpoint names, so the folder is the same on every machine.
    index_path = folder / "prior" / "model_index.json"
    index = json.loads(index_path.read_text())
    index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _build_controlnet_sd15(folder: Path) -> None:
    from diffusers import ControlNetModel

    unet_kwargs = {k: v for k, v in _SD15_UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")}
    controlnet = _seeded(
        ControlNetModel,
        **unet_kwargs,
        conditioning_channels=3,
        # three stride-2 convs: the control image is downsampled by the VAE's factor 8
        conditioning_embedding_out_channels=(8, 16, 16, 32),
    )
    # ControlNet starts with zero convs (a no-op until trained); fill them, seeded, so the
    # control image and `controlnet_conditioning_scale` change the picture as a trained one does
    import torch

    torch.manual_seed(_SEED)
    with torch.no_grad():
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]
        for module in zero_convs:
            for param in module.parameters():
                param.normal_(0.0, 0.5)
    controlnet.save_pretrained(folder, safe_serialization=True)


def _build_sd_x2_latent_upscaler(folder: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel

    unet = _seeded(
        UNet2DConditionModel,
        sample_size=32,
        act_fn="gelu",
        attention_head_dim=8,
        norm_num_groups=None,
        block_out_channels=(32, 32, 64, 64),
        # noise level embedding (2 * 64) + pooled text embedding
        time_cond_proj_dim=128 + _TEXT_HIDDEN,
        conv_in_kernel=1,
        conv_out_kernel=1,
        cross_attention_dim=_TEXT_HIDDEN,
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
        in_channels=8,  # noisy latents + low-res latents
        out_channels=5,
        mid_block_type=None,
        only_cross_attention=False,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
        layers_per_block=1,
    )
    scheduler = EulerDiscreteScheduler(**_sd_scheduler_kwargs(), prediction_type="sample")
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=_vae(),  # the same weights as tiny/sd15's VAE, so sd15 latents decode here too
        text_encoder=_text_encoder(),
        tokenizer=_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )
    _save(pipe, folder)


def _build_sd_x4_upscaler(folder: Path) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    unet = _seeded(
        UNet2DConditionModel,
        sample_size=32,
        in_channels=7,  # noisy latents + the low-res RGB image
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=1000,  # class embedding of the noise level
        norm_num_groups=8,
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=_vae(num_blocks=3, scaling_factor=0.08333, force_upcast=True),  # scale factor 4
        text_encoder=_text_encoder(hidden_act="gelu"),
        tokenizer=_tokenizer(),
        unet=unet,
        low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(
            **_sd_scheduler_kwargs(), clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction"
        ),
        max_noise_level=350,
    )
    _save(pipe, folder)


_BUILDERS = {
    "tiny/sd15": _build_sd15,
    "tiny/sdxl": _build_sdxl,
    "tiny/sdxl-refiner": _build_sdxl_refiner,
    "tiny/kandinsky22": _build_kandinsky22,
    "tiny/controlnet-sd15": _build_controlnet_sd15,
    "tiny/sd-x2-latent-upscaler": _build_sd_x2_latent_upscaler,
    "tiny/sd-x4-upscaler": _build_sd_x4_upscaler,
}
