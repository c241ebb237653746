"""What each family's real checkpoint needs in GPU memory, and the options diffusers has to need less.

Nothing here is measured: the weights of each component (denoiser, text encoders, VAE) are its
published parameter count times the bytes a parameter takes at a precision, plus a margin for
activations and the CUDA context. That says which card a checkpoint fits as it loads, which needs
model offload (one component on the GPU at a time) and which needs quantization or group offload
(its denoiser alone is too large). Real peaks depend on the size, the batch and the attention
backend; measure with `torch.cuda.max_memory_allocated()` where a GPU is at hand.

- `CHECKPOINTS`: the parameter counts, in billions, from each checkpoint's published config and
  model card (rounded; "12B" is 11.9 B);
- `memory_table(...)`: one row per checkpoint and precision, with the verdict per card;
- `memory_options()`: diffusers' memory options for large transformers, and which of them
  `load_pipeline` takes as an option.

Example:
    >>> from img2img_lab.memory import memory_table
    >>> memory_table(precisions=["bf16"]).set_index("checkpoint").loc["Qwen/Qwen-Image", "24 GiB"]
    'needs quantization or group offload'
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Iterable

from .errors import ValidationError

BASIS = "estimated from parameter counts"
# bytes one weight takes; the quantized precisions apply to the denoiser and the text encoders,
# the VAE stays in bf16 (what quantizing a pipeline with PipelineQuantizationConfig leaves it in)
BYTES_PER_PARAMETER = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "nf4": 0.5}
VAE_BYTES = BYTES_PER_PARAMETER["bf16"]
GIB = 2**30
DEFAULT_CARDS = (24, 80)          # GiB: an RTX 3090/4090, an A100/H100 80 GB
NOT_AN_OPTION = "(not an option: the diffusers call)"
DEFAULT_OVERHEAD = 0.2            # activations, the CUDA context and fragmentation, as a share of the weights


@dataclass(frozen=True)
class Checkpoint:
    """One real checkpoint's components, in billions of parameters.

    Args:
        key: its row in the key table (`lab.families()`), e.g. "flux".
        checkpoint: the hub id.
        denoiser: the UNet or transformer.
        text_encoders: each text encoder: (what it is, billions).
        vae: the VAE (or MoVQ).
    """

    key: str
    checkpoint: str
    denoiser: float
    text_encoders: tuple[tuple[str, float], ...]
    vae: float

    @property
    def text_encoder_params(self) -> float:
        return sum(b for _, b in self.text_encoders)


_CLIP_L, _CLIP_G, _T5_XXL = ("CLIP ViT-L/14", 0.12), ("OpenCLIP ViT-bigG/14", 0.69), ("T5-XXL encoder", 4.76)
_QWEN3_4B = ("Qwen3-4B", 4.02)
_FLUX_VAE, _SD_VAE = 0.08, 0.08
CHECKPOINTS = (
    Checkpoint("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", 0.86, (_CLIP_L,), _SD_VAE),
    Checkpoint("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", 2.57, (_CLIP_L, _CLIP_G), _SD_VAE),
    Checkpoint("sd3", "stabilityai/stable-diffusion-3.5-medium", 2.47, (_CLIP_L, _CLIP_G, _T5_XXL), _FLUX_VAE),
    Checkpoint("sd3", "stabilityai/stable-diffusion-3.5-large", 8.06, (_CLIP_L, _CLIP_G, _T5_XXL), _FLUX_VAE),
    Checkpoint("kandinsky3", "kandinsky-community/kandinsky-3", 3.0, (("Flan-UL2 encoder", 8.6),), 0.27),
    Checkpoint("flux", "black-forest-labs/FLUX.1-dev", 11.9, (_CLIP_L, _T5_XXL), _FLUX_VAE),
    Checkpoint("flux-kontext", "black-forest-labs/FLUX.1-Kontext-dev", 11.9, (_CLIP_L, _T5_XXL), _FLUX_VAE),
    Checkpoint("qwenimage", "Qwen/Qwen-Image", 20.4, (("Qwen2.5-VL-7B", 8.29),), 0.13),
    Checkpoint("qwenimage-edit", "Qwen/Qwen-Image-Edit", 20.4, (("Qwen2.5-VL-7B", 8.29),), 0.13),
    Checkpoint("z-image", "Tongyi-MAI/Z-Image-Turbo", 6.15, (_QWEN3_4B,), _FLUX_VAE),
    Checkpoint("flux2-klein", "black-forest-labs/FLUX.2-klein-4B", 4.0, (_QWEN3_4B,), _FLUX_VAE),
    Checkpoint("flux2", "black-forest-labs/FLUX.2-dev", 32.0, (("Mistral-Small-3.2-24B", 24.0),), _FLUX_VAE),
)


def _gib(billions: float, bytes_per_parameter: float) -> float:
    return billions * 1e9 * bytes_per_parameter / GIB


def verdict(total_gib: float, largest_gib: float, card_gib: float, *, overhead: float = DEFAULT_OVERHEAD,
            quantized: bool = False) -> str:
    """Whether weights of `total_gib` (largest component `largest_gib`) run on a `card_gib` card.

    "fits" when every component is on the GPU at once; "needs model offload" when only the largest
    one fits (`enable_model_cpu_offload` keeps one component there at a time); else "needs
    quantization or group offload" ("needs group offload" when the weights are already quantized).

    Example:
        >>> verdict(57.6, 38.0, 24)
        'needs quantization or group offload'
    """
    if total_gib * (1 + overhead) <= card_gib:
        return "fits"
    if largest_gib * (1 + overhead) <= card_gib:
        return "needs model offload"
    return "needs group offload" if quantized else "needs quantization or group offload"


def memory_table(precisions: Iterable[str] = ("bf16", "fp8", "nf4"), cards: Iterable[float] = DEFAULT_CARDS,
                 *, overhead: float = DEFAULT_OVERHEAD):
    """What each real checkpoint needs at each precision, and the verdict per card (estimated).

    Args:
        precisions: names from `BYTES_PER_PARAMETER` ("bf16", "fp8", "int8", "nf4", ...); the
            denoiser and text encoders take them, the VAE stays in bf16.
        cards: GPU memory sizes in GiB; one verdict column each ("24 GiB").
        overhead: the share of the weights added for activations and the CUDA context.

    Returns:
        A pandas DataFrame, one row per checkpoint and precision: `key`, `checkpoint`,
        `precision`, parameter counts in billions (`denoiser_b`, `text_encoders_b`, `vae_b`,
        `text_encoders`), `weights_gib` (all components), `largest_gib` (the largest one), a
        verdict column per card and `basis` ("estimated from parameter counts").

    Example:
        >>> memory_table(["bf16", "nf4"], cards=[24])[["checkpoint", "precision", "24 GiB"]]
    """
    import pandas as pd

    precisions, cards = list(precisions), list(cards)
    for precision in precisions:
        if precision not in BYTES_PER_PARAMETER:
            raise ValidationError(f"`precisions` must hold names from {sorted(BYTES_PER_PARAMETER)}, got {precision!r}")
    for card in cards:
        if isinstance(card, bool) or not isinstance(card, (int, float)) or not card > 0:
            raise ValidationError(f"`cards` must hold GPU memory sizes in GiB (numbers > 0), got {card!r}")
    if isinstance(overhead, bool) or not isinstance(overhead, (int, float)) or not 0 <= overhead <= 10:
        raise ValidationError(f"`overhead` must be a share of the weights in [0, 10], got {overhead!r}")
    rows = []
    for c in CHECKPOINTS:
        for precision in precisions:
            size = BYTES_PER_PARAMETER[precision]
            parts = [_gib(c.denoiser, size), *(_gib(b, size) for _, b in c.text_encoders), _gib(c.vae, VAE_BYTES)]
            total, largest = sum(parts), max(parts)
            quantized = size < BYTES_PER_PARAMETER["bf16"]
            rows.append({
                "key": c.key, "checkpoint": c.checkpoint, "precision": precision,
                "denoiser_b": c.denoiser, "text_encoders_b": round(c.text_encoder_params, 2), "vae_b": c.vae,
                "text_encoders": " + ".join(name for name, _ in c.text_encoders),
                "weights_gib": round(total, 1), "largest_gib": round(largest, 1),
                **{_card_column(card): verdict(total, largest, card, overhead=overhead, quantized=quantized)
                   for card in cards},
                "basis": BASIS,
            })
    return pd.DataFrame(rows)


def _card_column(card: float) -> str:
    return f"{card:g} GiB"


# (what, load_pipeline option or None, the diffusers call, what stays on the GPU, what it costs, needs)
_OPTIONS = (
    ("bf16 weights", 'dtype="bfloat16"', "from_pretrained(..., torch_dtype=torch.bfloat16)",
     "half of fp32; FLUX, SD3.5, Qwen-Image and Z-Image are trained in it (fp16 can overflow)",
     "nothing on Ampere and newer", None),
    ("model CPU offload", 'offload="model"', "pipe.enable_model_cpu_offload()",
     "one component (text encoder, denoiser, VAE) at a time: the largest one sets the peak",
     "a transfer per component per call", "accelerate"),
    ("sequential CPU offload", 'offload="sequential"', "pipe.enable_sequential_cpu_offload()",
     "one layer's weights at a time", "very slow: a transfer per layer per step", "accelerate"),
    ("group offload", None,
     'pipe.enable_group_offload(onload_device="cuda", offload_type="block_level", num_blocks_per_group=1, '
     "use_stream=True)  # diffusers.hooks.apply_group_offloading per module",
     "a group of blocks at a time, the next one prefetched on a CUDA stream",
     "far faster than sequential; pinned CPU memory", None),
    ("VAE slicing", "vae_slicing=True", "pipe.vae.enable_slicing()",
     "decodes a batch one image at a time", "a little time on batches", None),
    ("VAE tiling", "vae_tiling=True", "pipe.vae.enable_tiling()",
     "decodes large images in overlapping tiles", "a little time; rare seams", None),
    ("8-bit / 4-bit weights (bitsandbytes)", None,
     'PipelineQuantizationConfig(quant_backend="bitsandbytes_4bit", quant_kwargs={"load_in_4bit": True, '
     '"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16}, '
     'components_to_quantize=["transformer", "text_encoder_2"])',
     "the quantized components at ~1 (int8) or ~0.5 (nf4) bytes a weight",
     "some quality; slower matmuls", "bitsandbytes"),
    ("int8 / fp8 weights (torchao)", None,
     'PipelineQuantizationConfig(quant_backend="torchao", quant_kwargs={"quant_type": "int8wo"}, '
     'components_to_quantize=["transformer"])',
     "the quantized components at ~1 byte a weight", "some quality; fast with torch.compile", "torchao"),
)


def memory_options():
    """diffusers' memory options for large transformers, and how img2img_lab takes each one.

    Returns:
        A pandas DataFrame: `option`, `load_pipeline` (its `lab.load_pipeline` / spec option, or
        `NOT_AN_OPTION` where it is applied to a loaded pipeline or passed to `from_pretrained`), `diffusers`
        (the call), `on_the_gpu`, `cost`, `needs` (a library) and `installed` (whether that
        library imports here).

    Example:
        >>> memory_options()[["option", "load_pipeline"]]
    """
    import pandas as pd

    rows = [{"option": what, "load_pipeline": option or NOT_AN_OPTION, "diffusers": call, "on_the_gpu": gpu, "cost": cost,
             "needs": needs or "", "installed": needs is None or importlib.util.find_spec(needs) is not None}
            for what, option, call, gpu, cost, needs in _OPTIONS]
    return pd.DataFrame(rows)
