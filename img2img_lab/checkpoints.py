"""Export a diffusers pipeline as one original-layout ``.safetensors`` checkpoint.

:func:`save_single_file` is the reverse of diffusers' single-file loaders
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint`` in ``diffusers.loaders.single_file_utils``): it writes the tensor
names of the original CompVis / Stability repositories, which AUTOMATIC1111, ComfyUI, Forge and
``from_single_file`` all read. Use it to share a fine-tune as a single file.

The maps are structural: they are computed from the UNet's and VAE's configs (number of blocks,
``layers_per_block``, which blocks have attention), so they hold for the full-size models and for
the tiny smoke models alike. Supported layouts:

- Stable Diffusion 1.x (``unet`` + ``vae`` + ``text_encoder`` as CLIP ViT-L):
  ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``.
- SDXL base (``text_encoder`` CLIP ViT-L and ``text_encoder_2`` OpenCLIP ViT-bigG):
  ``conditioner.embedders.0.transformer.*`` and ``conditioner.embedders.1.model.*``.
- SDXL refiner (``text_encoder_2`` only): ``conditioner.embedders.0.model.*``.

Schedulers, tokenizers and configs are not part of an original checkpoint; load the file with
``load_pipeline(path, config=<a diffusers folder or hub id of the same architecture>)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ValidationError
from .vocab import DTYPES

__all__ = ["save_single_file", "pipeline_to_original_state_dict"]

# --------------------------------------------------------------------------------------------
# UNet

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    # SDXL's micro-conditioning embedding (addition_embed_type="text_time") and class embeddings
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.linear_1.": "label_emb.0.0.",
    "class_embedding.linear_2.": "label_emb.0.2.",
}
_UNET_RESNET = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def _resnet_name(rest: str) -> str:
    for diffusers_name, ldm_name in _UNET_RESNET:
        if rest.startswith(diffusers_name):
            return ldm_name + rest[len(diffusers_name):]
    raise KeyError(rest)


def _layers_per_block(config) -> int:
    layers = config["layers_per_block"]
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise ValidationError(f"`pipe` UNet has per-block layers_per_block={list(layers)}, which the original layout can't express")
        layers = layers[0]
    return int(layers)


def unet_to_original(state_dict: dict, config) -> dict:
    """Rename a diffusers ``UNet2DConditionModel`` state dict to the original ``openaimodel`` names.

    The reverse of ``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint``; keys have
    no ``model.diffusion_model.`` prefix.
    """
    per_block = _layers_per_block(config)
    up_has_attention = {
        int(m.group(1)) for k in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))
    }
    out = {}
    for key, value in state_dict.items():
        new = None
        for prefix, ldm in _UNET_TOP.items():
            if key.startswith(prefix):
                new = ldm + key[len(prefix):]
                break
        if key == "class_embedding.weight":  # num_class_embeds (x4 upscaler)
            new = "label_emb.weight"
        if new is None and (m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)):
            block, kind, layer, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            index = 1 + block * (per_block + 1) + layer
            new = f"input_blocks.{index}.0.{_resnet_name(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
        elif new is None and (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)):
            index = (int(m.group(1)) + 1) * (per_block + 1)
            new = f"input_blocks.{index}.0.op.{m.group(2)}"
        elif new is None and (m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key)):
            new = f"middle_block.{2 * int(m.group(1))}.{_resnet_name(m.group(2))}"
        elif new is None and (m := re.match(r"mid_block\.attentions\.0\.(.*)", key)):
            new = f"middle_block.1.{m.group(1)}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)):
            block, kind, layer, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            index = block * (per_block + 1) + layer
            new = f"output_blocks.{index}.0.{_resnet_name(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)):
            block = int(m.group(1))
            index = block * (per_block + 1) + per_block
            slot = 2 if block in up_has_attention else 1
            new = f"output_blocks.{index}.{slot}.conv.{m.group(2)}"
        if new is None:
            raise ValidationError(f"`pipe` UNet tensor {key!r} has no place in the original Stable Diffusion layout")
        out[new] = value
    return out


# --------------------------------------------------------------------------------------------
# VAE

_VAE_TOP = {
    "conv_norm_out.": "norm_out.",
}
_VAE_ATTENTION = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


def vae_to_original(state_dict: dict, config) -> dict:
    """Rename a diffusers ``AutoencoderKL`` state dict to the original ``first_stage_model`` names.

    The reverse of ``convert_ldm_vae_checkpoint``: up blocks are numbered in reverse, attention
    projections become 1x1 convolutions; keys have no ``first_stage_model.`` prefix.
    """
    num_up = len(config["up_block_types"])
    out = {}
    for key, value in state_dict.items():
        new = None
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            new = key
        elif m := re.match(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(.*)", key):
            new = f"{m.group(1)}.{_VAE_TOP.get(m.group(2) + '.', m.group(2) + '.')}{m.group(3)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m.group(1)}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            block = num_up - 1 - int(m.group(1))
            new = f"decoder.up.{block}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{num_up - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            rest = m.group(2)
            for diffusers_name, ldm_name in _VAE_ATTENTION:
                if rest.startswith(diffusers_name):
                    rest = ldm_name + rest[len(diffusers_name):]
                    break
            new = f"{m.group(1)}.mid.attn_1.{rest}"
            if value.ndim == 2:  # linear -> 1x1 conv, as the original AttnBlock stores it
                value = value[:, :, None, None]
        if new is None:
            raise ValidationError(f"`pipe` VAE tensor {key!r} has no place in the original Stable Diffusion layout")
        out[new] = value
    return out


# --------------------------------------------------------------------------------------------
# text encoders


def _text_model_state_dict(text_encoder) -> dict:
    """HF CLIP state dict with the ``text_model.`` prefix (transformers >= 5.6 flattens CLIPTextModel)."""
    state = text_encoder.state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[key] = value
    return out


def clip_to_original(text_encoder) -> dict:
    """CLIP ViT-L (``CLIPTextModel``) keeps the transformers names under ``transformer.``."""
    return {f"transformer.{k}": v for k, v in _text_model_state_dict(text_encoder).items()
            if not k.startswith("text_projection.")}


def open_clip_to_original(text_encoder) -> dict:
    """``CLIPTextModelWithProjection`` -> OpenCLIP names (the reverse of ``convert_open_clip_checkpoint``):
    ``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N`` with fused
    ``attn.in_proj_weight``, ``ln_final``, and ``text_projection`` transposed."""
    import torch

    state = _text_model_state_dict(text_encoder)
    out = {}
    fused: dict = {}
    for key, value in state.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", key):
            layer, rest = m.group(1), m.group(2)
            prefix = f"transformer.resblocks.{layer}."
            if pm := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                fused.setdefault((prefix, pm.group(2)), {})[pm.group(1)] = value
                continue
            rest = (rest.replace("self_attn.out_proj.", "attn.out_proj.")
                    .replace("layer_norm1.", "ln_1.").replace("layer_norm2.", "ln_2.")
                    .replace("mlp.fc1.", "mlp.c_fc.").replace("mlp.fc2.", "mlp.c_proj."))
            out[prefix + rest] = value
        else:
            raise ValidationError(f"`pipe` text_encoder_2 tensor {key!r} has no place in the OpenCLIP layout")
    for (prefix, kind), parts in fused.items():
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# --------------------------------------------------------------------------------------------
# pipeline


def pipeline_to_original_state_dict(pipe) -> dict:
    """One original-layout state dict (tensor name -> tensor) for an SD 1.x or SDXL pipeline."""
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise ValidationError(f"`pipe` must be a diffusers pipeline, got {type(pipe).__name__}")
    unet, vae = components.get("unet"), components.get("vae")
    if unet is None or vae is None or type(unet).__name__ != "UNet2DConditionModel" or type(vae).__name__ != "AutoencoderKL":
        raise ValidationError(
            f"`pipe` {type(pipe).__name__} has no UNet2DConditionModel + AutoencoderKL; only Stable Diffusion 1.x "
            f"and SDXL pipelines can be saved as one original-layout file"
        )
    text_encoder, text_encoder_2 = components.get("text_encoder"), components.get("text_encoder_2")
    state: dict = {}
    state.update({"model.diffusion_model." + k: v for k, v in unet_to_original(unet.state_dict(), unet.config).items()})
    state.update({"first_stage_model." + k: v for k, v in vae_to_original(vae.state_dict(), vae.config).items()})
    if "text_encoder_2" in components:  # SDXL layout
        if text_encoder is not None:
            state.update({"conditioner.embedders.0." + k: v for k, v in clip_to_original(text_encoder).items()})
            big_g = "conditioner.embedders.1.model."
        else:  # refiner: OpenCLIP only, as embedder 0
            big_g = "conditioner.embedders.0.model."
        if text_encoder_2 is None:
            raise ValidationError("`pipe` is an SDXL pipeline without text_encoder_2; there is nothing to save it from")
        state.update({big_g + k: v for k, v in open_clip_to_original(text_encoder_2).items()})
    elif text_encoder is not None:
        if type(text_encoder).__name__ != "CLIPTextModel":
            raise ValidationError(
                f"`pipe` text encoder {type(text_encoder).__name__} is not CLIP ViT-L (SD 2.x OpenCLIP export is not supported)"
            )
        state.update({"cond_stage_model." + k: v for k, v in clip_to_original(text_encoder).items()})
    return state


def save_single_file(pipe, path, *, dtype=None, metadata: dict | None = None) -> Path:
    """Save an SD 1.x / SDXL pipeline as one original-layout ``.safetensors`` checkpoint.

    The file opens in AUTOMATIC1111, ComfyUI and ``diffusers``' ``from_single_file``; with
    img2img_lab, ``load_pipeline(path, config=<diffusers folder or hub id of the same architecture>)``
    (the config supplies the scheduler, tokenizers and model shapes, which a single file lacks).

    Args:
        pipe: a diffusers pipeline with ``unet`` (``UNet2DConditionModel``), ``vae``
            (``AutoencoderKL``) and ``text_encoder`` (SD 1.x) or ``text_encoder``/``text_encoder_2``
            (SDXL), e.g. a fine-tune loaded with :func:`img2img_lab.load_pipeline`.
        path: the file to write; must end in ``.safetensors`` (pickle ``.ckpt`` is not written).
        dtype: optional torch dtype (or "float16"/"bfloat16"/"float32") to cast floating tensors to,
            e.g. ``"float16"`` for a half-size file; default keeps the pipeline's dtype.
        metadata: optional string key/values stored in the safetensors header.

    Returns:
        The written path.

    Raises:
        ValidationError: ``path`` is not ``.safetensors``, or ``pipe`` has no original layout.

    Example:
        >>> pipe = lab.load_pipeline("tiny/sd15")
        >>> lab.save_single_file(pipe, "my-finetune.safetensors")
        >>> again = lab.load_pipeline("my-finetune.safetensors", config=str(lab.tiny_model_path("tiny/sd15")))
    """
    import torch
    from safetensors.torch import save_file

    path = Path(os.fspath(path)).expanduser()
    if path.suffix.lower() != ".safetensors":
        raise ValidationError(f"`path` must end in .safetensors (pickle checkpoints are not written), got {str(path)!r}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        if str(dtype) not in DTYPES:
            raise ValidationError(f"`dtype` must be float16, bfloat16 or float32, got {dtype!r}")
        dtype = getattr(torch, DTYPES[str(dtype)])
    state = pipeline_to_original_state_dict(pipe)
    tensors = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValidationError("`metadata` must map strings to strings")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    os.replace(tmp, path)
    return path
