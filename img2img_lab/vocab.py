"""The package's shared vocabulary: names and small facts every other module agrees on.

What a spec's axes are called, which schedulers and loading options exist, how many denoising
steps a call really runs, what a model id or a path looks like, what a metric column is called.
Plain Python: this module imports nothing of the package (and no torch), so any module may import
it at its top without a cycle.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Mapping

# --------------------------------------------------------------------------------------------
# the spec's argument names

# The axes of a sweep, in the order `SweepSpec.cells()` nests them (the last one varies fastest).
AXES = (
    "model", "lora", "lora_scale", "ip_adapter", "ip_adapter_scale", "ip_adapter_image", "image", "prompt",
    "prompt_sr", "negative_prompt", "seed", "num_inference_steps", "scheduler", "variants", "strength",
    "guidance_scale",
)
# What a spec means where it is silent; model, prompt and image have none. None for a call
# argument is "the pipeline's own default" (its family's, see `Family.call_defaults`, else its
# `__call__` signature's: SD 1.5 strength 0.8 / guidance 7.5 / 50 steps, SDXL 0.3 / 5.0, FLUX.1
# guidance 3.5 / 28 steps, LCM 4 steps, Kontext no strength at all); each row records the value used.
# None for an adapter axis is "none" (the base model; `lora_scale` None: the weights as given),
# for `prompt_sr` and `variants` "not swept".
DEFAULTS = {
    "strength": None, "guidance_scale": None, "negative_prompt": None, "seed": 0,
    "num_inference_steps": None, "scheduler": None,
    "lora": None, "lora_scale": None, "ip_adapter": None, "ip_adapter_scale": None, "ip_adapter_image": None,
    "prompt_sr": None, "variants": None,
}
# The axes that change what is loaded into a pipeline rather than its call: LoRAs (diffusers'
# `load_lora_weights` / `set_adapters`) and IP-Adapters (`load_ip_adapter` / `set_ip_adapter_scale`;
# the reference image joins the call as `ip_adapter_image`). The runner loads each once per model.
ADAPTER_AXES = ("lora", "lora_scale", "ip_adapter", "ip_adapter_scale", "ip_adapter_image")
# The axes that name a change of other arguments: A1111's prompt search/replace (the first term is
# replaced by each term in every prompt) and hand-written groups of arguments (`variants`).
LABEL_AXES = ("prompt_sr", "variants")
# The prompt texts `prompt_sr` searches and replaces in (those a spec sets).
PROMPT_TEXTS = ("prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3")
# The call keywords that are axes of their own.
CALL_AXES = ("prompt", "negative_prompt", "strength", "guidance_scale", "num_inference_steps")
# Spec-level settings that are neither axes nor call keywords nor load options.
SETTINGS = ("name", "compel", "exact")
# The size arguments of a pipeline call (checked against the model's VAE factor before a run).
SIZE_ARGUMENTS = ("height", "width")

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts [0, 2**64 - 1]

# scheduler name -> (diffusers scheduler class, config overrides for `from_config`).
# Names follow the A1111/ComfyUI sampler names that the diffusers docs map to these classes.
SCHEDULER_NAMES = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "lms-karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2-a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++2m-sde-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpm++sde": ("DPMSolverSinglestepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

# --------------------------------------------------------------------------------------------
# load_pipeline's options

DTYPES = {
    "float32": "float32", "fp32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
OFFLOAD = (None, "model", "sequential")
ATTENTION = (None, "sdpa", "xformers")
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune")

# Every option load_pipeline accepts, with its default.
DEFAULT_OPTIONS = {
    "dtype": None,            # None: float16 on CUDA, float32 elsewhere
    "device": None,           # None / "auto": cuda, then mps, then cpu
    "variant": "auto",        # "auto": "fp16" when loading float16 and the repo has it
    "use_safetensors": True,
    "allow_pickle": False,
    "controlnet": None,       # hub id, folder, ControlNetModel, or a list of them
    "scheduler": None,        # a name from SCHEDULER_NAMES, swapped via from_config
    "offload": None,          # "model" | "sequential" | None
    "attention": None,        # "sdpa" | "xformers" | None (diffusers' default: SDPA on PyTorch 2)
    "vae_slicing": False,
    "vae_tiling": False,
    "compile": False,         # torch.compile the denoiser: True or a mode ("reduce-overhead", ...)
    "prior": None,            # Kandinsky 2.2 prior: hub id or local folder
    "vae": None,              # replacement VAE: hub id or folder (e.g. madebyollin/sdxl-vae-fp16-fix)
    "config": None,           # single-file loads: diffusers-layout folder or hub id for the config
    "enable_pag": False,      # Perturbed-Attention Guidance: AutoPipeline's PAG variant of the pipeline
    "pag_applied_layers": None,  # PAG's layers ("mid", ["down.block_2", ...]); None: the pipeline's default
    "revision": None,
    "cache": True,            # reuse an already loaded pipeline with the same model and options
}
# Loading options that change the pixels, so they are part of each cell's content key. The others
# (device, offload, attention, compile, vae_slicing/tiling, cache, use_safetensors, allow_pickle)
# are meant to give the same picture faster or in less memory; keying on them would recompute a
# whole sweep because it was resumed on a smaller GPU with offloading.
PIXEL_OPTIONS = ("dtype", "variant", "controlnet", "prior", "vae", "config", "revision", "enable_pag",
                 "pag_applied_layers")

# --------------------------------------------------------------------------------------------
# denoising steps


def effective_steps(call: Mapping) -> int | None:
    """The denoising steps diffusers' img2img really runs for a call: `int(steps * strength)`.

    As `StableDiffusionImg2ImgPipeline.get_timesteps`: `min(int(num_inference_steps * strength),
    num_inference_steps)`; a call without `strength` (an upscaler, Kontext) runs every step.

    Args:
        call: the call keywords (a mapping with `num_inference_steps` and optionally `strength`).
            None when the step count is not known yet (the pipeline's own default).

    Example:
        >>> effective_steps({"num_inference_steps": 50, "strength": 0.3})
        15
    """
    steps = call.get("num_inference_steps")
    if steps is None:
        return None  # the pipeline's own default: known once it is loaded
    steps = int(steps)
    strength = call.get("strength")
    return steps if strength is None else min(int(steps * float(strength)), steps)


# --------------------------------------------------------------------------------------------
# what a model id looks like

TINY_PREFIX = "tiny/"
# The size (px, square) a tiny model runs at when a spec sets neither height nor width: tiny models
# are for trying things, and their pictures are noise at any size (the init image is resized to it).
TINY_SIZE = 64

PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}
SINGLE_FILE_SUFFIXES = {".safetensors"} | PICKLE_SUFFIXES
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def is_tiny(model) -> bool:
    """Whether `model` names an embedded tiny model (`"tiny/sd15"`, ...)."""
    return isinstance(model, str) and model.startswith(TINY_PREFIX)


# A tiny adapter twin is named after the tiny model it is made for: "tiny/sd15-lora" (a LoRA),
# "tiny/sd15-ip-adapter" (an IP-Adapter). Adapter kind (its spec key) -> the suffix and its name.
TINY_ADAPTER_SUFFIXES = {"lora": ("-lora", "LoRA"), "ip_adapter": ("-ip-adapter", "IP-Adapter")}


def tiny_adapter(name) -> tuple[str, str] | None:
    """(kind, base model) of a tiny adapter's name: `("lora", "tiny/sd15")` for "tiny/sd15-lora";
    None for anything else (it need not exist: the registry knows which do)."""
    if not is_tiny(name):
        return None
    for kind, (suffix, _) in TINY_ADAPTER_SUFFIXES.items():
        if name.endswith(suffix):
            return kind, name.removesuffix(suffix)
    return None


def is_url(text) -> bool:
    """Whether `text` is an `http(s)://` URL (an init image to download)."""
    return isinstance(text, str) and text.startswith(("http://", "https://"))


def looks_like_hub_id(text) -> bool:
    """Whether `text` has the form of a Hugging Face Hub repo id, `owner/name`."""
    return isinstance(text, str) and bool(HUB_ID.match(text))


def looks_like_path(text) -> bool:
    """Whether `text` is meant as a local path rather than a hub id (it need not exist).

    Absolute, home (`~`) and relative (`./`, `../`, `.name`) paths, Windows drives and
    backslashes, checkpoint file names (`.safetensors`, `.ckpt`, ...) and anything with more than
    one separator (a hub id has one).
    """
    if isinstance(text, os.PathLike):
        return True
    if not isinstance(text, str):
        return False
    return (
        text.startswith(("/", ".", "~", "\\"))  # a hub id starts with a letter or digit
        or bool(_DRIVE.match(text))
        or "\\" in text
        or Path(text).suffix.lower() in SINGLE_FILE_SUFFIXES
        or text.strip("/").count("/") > 1  # more than one separator: not owner/name
    )


# --------------------------------------------------------------------------------------------
# a row's status

OK, ERROR, NAN = "ok", "error", "nan"  # an image; an exception (its message in `error`); NaN / all black
DONE_STATUSES = (OK, NAN)  # not recomputed on a re-run; errors are retried
FAILED_STATUSES = (ERROR, NAN)

# How far a batched cell may differ from the direct call of the same arguments and seed: batched
# kernels round floats in another order, which moves a pixel by at most one 8-bit level (tested in
# tests/test_batched.py, tests/test_exact.py and tests/test_widgets.py). Cells run as one call
# (`batched=False`, `exact=True`) equal it bit for bit at the same thread count.
BATCHED_TOLERANCE = 1  # 8-bit levels per pixel

# --------------------------------------------------------------------------------------------
# metric columns

PIXEL_METRICS = ("ssim", "psnr", "mean_abs_change")
MODEL_METRICS = ("clip_score", "lpips", "lpips_clip")
METRIC_NAMES = PIXEL_METRICS + MODEL_METRICS
METRIC_PREFIX = "metric_"  # user-added metric columns


def is_metric_column(column) -> bool:
    """Whether a table column holds a metric: a name of `METRIC_NAMES`, or any `metric_*`."""
    return isinstance(column, str) and (column in METRIC_NAMES or column.startswith(METRIC_PREFIX))


# --------------------------------------------------------------------------------------------
# messages


def suggest(value, choices) -> str:
    """` (did you mean 'x'?)` for the closest of `choices` to a misspelt `value`, or ''."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
