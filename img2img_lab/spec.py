"""The sweep spec: what to run, validated in one place before any model loads.

A `SweepSpec` names the axes of a grid (each a value or a list of values) in diffusers' own argument
names, any other keyword of the pipeline call in `params`, and the `load_pipeline` options in
`options`. `spec.cells()` expands the grid into `Cell`s, each with a content key.

In YAML (and in `from_dict`, `replace`, `--set`, notebook parameters) every key is flat::

    model: stable-diffusion-v1-5/stable-diffusion-v1-5
    prompt: a watercolor of an astronaut
    image: astronaut
    strength: {start: 0.3, stop: 0.9, step: 0.2}   # or "0.3-0.9 (+0.2)", "0.3-0.9 [4]"
    guidance_scale: [5, 7.5]
    scheduler: dpm++2m                             # an axis too
    eta: 0.0                                       # a call keyword -> params
    offload: model                                 # a load_pipeline option -> options

A list is always an axis. To pass a list-valued call argument, wrap it in one more list:
`original_size: [[1024, 1024]]`.

This module is pure: it imports neither torch nor diffusers. The pipeline call keywords are read from
the installed diffusers' source files with `ast` (no import), falling back to `inspect.signature`.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ValidationError

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

# The pipelines whose `__call__` keywords a spec may set, and their files inside the diffusers package.
CALL_PIPELINES = {
    "StableDiffusionImg2ImgPipeline": "pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py",
    "StableDiffusionXLImg2ImgPipeline": "pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl_img2img.py",
    "KandinskyV22Img2ImgCombinedPipeline": "pipelines/kandinsky2_2/pipeline_kandinsky2_2_combined.py",
    "StableDiffusionControlNetImg2ImgPipeline": "pipelines/controlnet/pipeline_controlnet_img2img.py",
    "StableDiffusionLatentUpscalePipeline": "pipelines/stable_diffusion/pipeline_stable_diffusion_latent_upscale.py",
    "StableDiffusionUpscalePipeline": "pipelines/stable_diffusion/pipeline_stable_diffusion_upscale.py",
}
# Call keywords a spec can't hold: the runner owns them (generator, output), or they are tensors
# and callables that YAML can't express, or they would break "one image per row".
_NOT_IN_SPEC = {"generator", "latents", "return_dict", "output_type", "num_images_per_prompt", "ip_adapter_image"}

# The axes, in the order `cells()` nests them (the last one varies fastest).
AXES = (
    "model", "image", "prompt", "negative_prompt", "seed", "num_inference_steps", "scheduler",
    "strength", "guidance_scale",
)
# diffusers' img2img defaults; model, prompt and image have none.
DEFAULTS = {
    "strength": 0.8, "guidance_scale": 7.5, "negative_prompt": None, "seed": 0,
    "num_inference_steps": 50, "scheduler": None,
}
# The call keywords that are axes of their own.
_CALL_AXES = ("prompt", "negative_prompt", "strength", "guidance_scale", "num_inference_steps")
# Loading options that change the pixels, so they are part of each cell's content key. The others
# (device, offload, attention, compile, vae_slicing/tiling, cache, use_safetensors, allow_pickle)
# are meant to give the same picture faster or in less memory; keying on them would recompute a
# whole sweep because it was resumed on a smaller GPU with offloading.
PIXEL_OPTIONS = ("dtype", "variant", "controlnet", "prior", "vae", "config", "revision")

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts [0, 2**64 - 1]
MAX_RANGE = 10_000  # values one range may expand to: a typo like step 1e-9 must not eat the memory
KEY_LENGTH = 20
KEY_VERSION = 1  # bump when the key's payload changes (old folders then recompute, never mix)

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE_TEXT = re.compile(
    rf"^\s*(?P<start>{_NUM})\s*-\s*(?P<stop>{_NUM})\s*"
    rf"(?:\(\s*(?P<step>{_NUM})\s*\)|\[\s*(?P<num>{_NUM})\s*\])?\s*$"
)
_RANGE_KEYS = ({"start", "stop", "step"}, {"start", "stop", "num"})


# --------------------------------------------------------------------------------------------
# helpers


class _FrozenDict(dict):
    """A read-only dict: hashable, picklable, equal to a plain dict with the same items."""

    def _readonly(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is read-only; build a new spec with `replace`")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly
    __ior__ = _readonly

    def __hash__(self):
        try:
            return hash(frozenset(self.items()))
        except TypeError:  # values holding lists (Cell.call): hash their canonical form
            return hash(_canonical_json(self))

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __repr__(self):
        return repr(dict(self))


def _suggest(value, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _canonical_json(obj) -> str:
    # sort_keys makes dict order irrelevant; json writes floats with repr (shortest round trip)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)


def _json_default(obj):
    raise ValidationError(f"value {obj!r} of type {type(obj).__name__} can't be part of a content key")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _freeze(key, value):
    """Plain data (what YAML can hold) made hashable: lists -> tuples, dicts -> read-only dicts."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(key, v) for v in value)
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ValidationError(f"`{key}` mapping keys must be strings, got {bad[0]!r}")
        return _FrozenDict({k: _freeze(key, v) for k, v in value.items()})
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValidationError(
        f"`{key}` must be plain data (a string, number, bool, None, list or mapping) so the spec can be "
        f"written to YAML, got {value!r} of type {type(value).__name__}"
    )


def _thaw(value, seq=list):
    """The frozen form back to what a pipeline expects: tuples -> `seq` at the top, lists below."""
    if isinstance(value, tuple):
        return seq(_thaw(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _plain(value):
    """The frozen form as YAML/JSON-ready builtins."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# which keys exist


def _annotation_kind(texts) -> tuple[str, type]:
    """('float' | 'int' | 'bool' | 'str' | 'any', tuple or list) from `__call__` annotation texts."""
    kinds = set()
    seq = list
    for text in texts:
        text = text.replace("typing.", "")
        words = set(re.findall(r"[A-Za-z_][\w.]*", text)) - {"None", "Optional", "Union", "List", "list"}
        if words & {"tuple", "Tuple"}:
            seq = tuple
        if words in ({"float"}, {"float", "int"}):
            kinds.add("float")
        elif words in ({"int"}, {"bool"}, {"str"}):
            kinds.add(words.pop())
        else:
            kinds.add("any")
    if kinds == {"float", "int"}:
        return "float", seq
    return (kinds.pop() if len(kinds) == 1 else "any"), seq


def _call_args_from_source(root: Path, cls_name: str, rel_path: str) -> dict | None:
    path = root / rel_path
    if not path.is_file():
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for fn in node.body:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name == "__call__":
                    a = fn.args
                    return {
                        arg.arg: ast.unparse(arg.annotation) if arg.annotation is not None else ""
                        for arg in a.posonlyargs + a.args[1:] + a.kwonlyargs
                    }
    return None


def _call_args_from_import(cls_name: str) -> dict:
    import inspect

    import diffusers

    params = inspect.signature(getattr(diffusers, cls_name).__call__).parameters
    return {
        name: "" if p.annotation is inspect.Parameter.empty
        else p.annotation.__name__ if isinstance(p.annotation, type) else str(p.annotation)
        for name, p in params.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


@functools.lru_cache(maxsize=None)
def call_parameters() -> Mapping[str, tuple[str, type]]:
    """The pipeline call keywords a spec may set in `params`, with their value kind.

    The union of the `__call__` parameters of the pipelines in `CALL_PIPELINES`, read from the
    installed diffusers' source with `ast` (no torch import; `inspect.signature` on the real class
    where a file moved), minus the axes, the runner's own (`generator`, `output_type`, ...),
    callbacks and tensor inputs (`*_embeds`, `latents`).

    Returns:
        A read-only mapping name -> (kind, sequence type), kind one of "float", "int", "bool",
        "str", "any"; sequence type is `tuple` or `list`, what the pipeline wants for a list value.

    Example:
        >>> "controlnet_conditioning_scale" in call_parameters()
        True
    """
    spec = importlib.util.find_spec("diffusers")  # locates the package without importing it
    root = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    annotations: dict[str, list[str]] = {}
    for cls_name, rel_path in CALL_PIPELINES.items():
        args = _call_args_from_source(root, cls_name, rel_path) if root else None
        if args is None:
            args = _call_args_from_import(cls_name)
        for name, text in args.items():
            annotations.setdefault(name, []).append(text)
    return _FrozenDict({
        name: _annotation_kind(texts)
        for name, texts in sorted(annotations.items())
        if name not in _NOT_IN_SPEC and name not in AXES and "callback" not in name and not name.endswith("_embeds")
    })


@functools.lru_cache(maxsize=None)
def option_names() -> tuple[str, ...]:
    """The `load_pipeline` options a spec may set (all but `scheduler`, which is an axis here).

    Example:
        >>> "offload" in option_names()
        True
    """
    from .loaders import DEFAULT_OPTIONS  # a plain-Python module: no torch at import

    return tuple(sorted(set(DEFAULT_OPTIONS) - {"scheduler"}))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice (YAML itself keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValidationError(f"spec YAML gives `{key}` twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Spec-level settings that are neither axes nor call keywords nor load options.
SETTINGS = ("name", "compel")


@functools.lru_cache(maxsize=None)
def known_keys() -> tuple[str, ...]:
    """Every flat key a spec accepts: axes, call keywords, loading options and `name`.

    Example:
        >>> "strength" in known_keys() and "offload" in known_keys()
        True
    """
    return tuple(sorted({*AXES, *SETTINGS, *call_parameters(), *option_names()}))


# --------------------------------------------------------------------------------------------
# ranges


def _decimal(key, value, part) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValidationError(f"`{key}` range {part} must be a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError(f"`{key}` range {part} must be a number, got {value!r}") from None
    if not number.is_finite():
        raise ValidationError(f"`{key}` range {part} must be a finite number, got {value!r}")
    return number


def expand_range(value, *, integer: bool = False, key: str = "value") -> list:
    """Expand a range, end inclusive, into its values.

    Decimal arithmetic on the numbers as written keeps float steps exact: 0.3 to 0.9 in steps of
    0.2 gives `[0.3, 0.5, 0.7, 0.9]`, not `0.7000000000000001`.

    Args:
        value: a mapping `{start, stop, step}` or `{start, stop, num}`, or the A1111 X/Y/Z plot
            text forms `"0.3-0.9 (+0.2)"` (step), `"0.3-0.9 [4]"` (count), `"1-5"` (step 1;
            whole numbers only). A step may be negative for a descending range: `"10-1 (-3)"`.
        integer: produce ints (seed, num_inference_steps); a count then rounds half up.
        key: the spec key, for error messages.

    Returns:
        A list of floats, or of ints when `integer`.

    Example:
        >>> expand_range({"start": 0.3, "stop": 0.9, "step": 0.2})
        [0.3, 0.5, 0.7, 0.9]
        >>> expand_range("10-50 [3]", integer=True)
        [10, 30, 50]
    """
    if isinstance(value, str):
        match = _RANGE_TEXT.match(value)
        if match is None:
            raise ValidationError(
                f"`{key}` range {value!r} is not of the form 'start-stop', 'start-stop (+step)' or 'start-stop [count]'"
            )
        parts = {k: v for k, v in match.groupdict().items() if v is not None}
    elif isinstance(value, Mapping):
        if set(value) not in _RANGE_KEYS:
            raise ValidationError(
                f"`{key}` range {dict(value)!r} must have the keys start, stop and either step or num"
            )
        parts = dict(value)
    else:
        raise ValidationError(f"`{key}` range must be a mapping or text, got {value!r}")
    start, stop = _decimal(key, parts["start"], "start"), _decimal(key, parts["stop"], "stop")

    if "num" in parts:
        num = parts["num"]
        if isinstance(num, str):
            num = int(num) if num.isdigit() else num
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValidationError(f"`{key}` range num must be an integer >= 1, got {parts['num']!r}")
        if num > MAX_RANGE:
            raise ValidationError(f"`{key}` range num={num} gives more than {MAX_RANGE} values")
        values = [start] if num == 1 else [start + (stop - start) * i / (num - 1) for i in range(num)]
        if num > 1:
            values[-1] = stop  # exact end, whatever the division rounded
        if integer:
            values = [v.quantize(Decimal(1), rounding="ROUND_HALF_UP") for v in values]
    else:
        if "step" in parts:
            step = _decimal(key, parts["step"], "step")
        elif start == start.to_integral_value() and stop == stop.to_integral_value():
            step = Decimal(1) if stop >= start else Decimal(-1)
        else:
            raise ValidationError(
                f"`{key}` range {value!r} needs a step '(+0.1)' or a count '[4]' (only whole-number "
                f"ranges like '1-5' default to step 1)"
            )
        if step == 0:
            raise ValidationError(f"`{key}` range step must not be 0, got {value!r}")
        if (stop - start) * step < 0:
            raise ValidationError(f"`{key}` range step {parts.get('step')} goes away from stop in {value!r}")
        count = int((stop - start) / step) + 1
        if count > MAX_RANGE:
            raise ValidationError(f"`{key}` range {value!r} gives {count} values, more than {MAX_RANGE}")
        values = [start + step * i for i in range(count)]
        if integer and any(v != v.to_integral_value() for v in values):
            raise ValidationError(f"`{key}` takes whole numbers, but the range {value!r} gives fractions")
    return [int(v) for v in values] if integer else [float(v) for v in values]


def _number_text(key, text: str, integer: bool) -> list:
    """Numbers written as text: '0.5', '1e-3', '0.3, 0.5', '0.3-0.9 (+0.2)', '1-5, 8'."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(_NUM, part):
            number = Decimal(part)
            if integer and number != number.to_integral_value():
                raise ValidationError(f"`{key}` must be an integer, got {text!r}")
            values.append(int(number) if integer else float(number))
        elif _RANGE_TEXT.match(part):
            values.extend(expand_range(part, integer=integer, key=key))
        else:
            raise ValidationError(f"`{key}` must be a number or a range like '0.3-0.9 (+0.2)', got {text!r}")
    return values


# --------------------------------------------------------------------------------------------
# per-key normalisation: raw value -> tuple of clean values, or a ValidationError


def _items(key, value) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValidationError(f"`{key}` is an empty list; give at least one value")
    return items


def _numbers(key, value, *, integer: bool, allow_lists: bool = False) -> list:
    """Expand ranges and number texts; check each item is a number (not a bool)."""
    out = []
    for item in _items(key, value):
        if isinstance(item, Mapping):
            out.extend(expand_range(item, integer=integer, key=key))
        elif isinstance(item, str):
            out.extend(_number_text(key, item, integer))
        elif allow_lists and isinstance(item, (list, tuple)):
            # one list-valued setting, e.g. controlnet_conditioning_scale [0.5, 1.0] for two ControlNets
            out.append(tuple(_number(key, v, integer) for v in item))
        else:
            out.append(_number(key, item, integer))
    return out


def _number(key, item, integer: bool):
    """One number: an int for integer axes (2.0 is fine, 2.5 is not), else a float."""
    if not _is_number(item):
        raise ValidationError(f"`{key}` must be {'an integer' if integer else 'a number'}, got {item!r}")
    if not integer:
        return float(item)
    if isinstance(item, float) and not item.is_integer():
        raise ValidationError(f"`{key}` must be an integer, got {item!r}")
    return int(item)


def _texts(key, value, *, allow_none: bool, allow_empty: bool = True) -> list:
    out = []
    for item in _items(key, value):
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if item is None and allow_none:
            out.append(None)
        elif isinstance(item, str) and (allow_empty or item.strip()):
            out.append(item)
        else:
            what = "a non-empty string" if not allow_empty else "a string"
            raise ValidationError(f"`{key}` must be {what}{' or None' if allow_none else ''}, got {item!r}")
    return out


def _images(value) -> list:
    out = []
    for item in _items("image", value):
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if isinstance(item, str) and item.strip():
            out.append(item)
        elif type(item).__module__.startswith("PIL.") and hasattr(item, "size"):
            out.append(item)  # an in-memory picture: fine in a notebook, not writable to YAML
        else:
            raise ValidationError(
                f"`image` must be a sample name ('astronaut', 'cat'), a file path, a URL or a PIL image, "
                f"got {item!r}"
            )
    return out


def _normalise_axis(key, value) -> tuple:
    if key == "model":
        if value is None:
            raise ValidationError("`model` is required: a hub id, a local path or a tiny model such as 'tiny/sd15'")
        values = _texts(key, value, allow_none=False, allow_empty=False)
    elif key == "prompt":
        if value is None:
            raise ValidationError("`prompt` is required (use '' for an unconditional prompt)")
        values = _texts(key, value, allow_none=False)
    elif key == "image":
        if value is None:
            raise ValidationError("`image` is required: a sample name ('astronaut', 'cat'), a path or a URL")
        values = _images(value)
    elif key == "negative_prompt":
        values = _texts(key, value, allow_none=True)
    elif key == "scheduler":
        values = _texts(key, value, allow_none=True)
        for name in values:
            if name is not None and name not in SCHEDULER_NAMES:
                raise ValidationError(
                    f"`scheduler` must be one of {list(SCHEDULER_NAMES)} or None, got {name!r}"
                    f"{_suggest(name, SCHEDULER_NAMES)}"
                )
    elif key == "strength":
        values = _numbers(key, value, integer=False)
        for v in values:
            if not 0 <= v <= 1:  # False for NaN too
                raise ValidationError(f"`strength` must be in [0, 1], got {v!r}")
    elif key == "guidance_scale":
        values = _numbers(key, value, integer=False)
        for v in values:
            if not (math.isfinite(v) and v >= 0):
                raise ValidationError(f"`guidance_scale` must be a finite number >= 0, got {v!r}")
    elif key == "num_inference_steps":
        values = _numbers(key, value, integer=True)
        for v in values:
            if v < 1:
                raise ValidationError(f"`num_inference_steps` must be an integer >= 1, got {v!r}")
    elif key == "seed":
        values = _numbers(key, value, integer=True)
        for v in values:
            if not 0 <= v <= MAX_SEED:
                raise ValidationError(f"`seed` must be an integer in [0, 2**64 - 1], got {v!r}")
    else:  # pragma: no cover - AXES and this function change together
        raise AssertionError(key)
    return _unique(key, values)


def _normalise_param(key, value) -> tuple:
    kind, _ = call_parameters()[key]
    if kind in ("float", "int"):
        values = []
        for item in _items(key, value):
            values.extend([None] if item is None else _numbers(key, [item], integer=kind == "int", allow_lists=True))
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValidationError(f"`{key}` must be a finite number, got {v!r}")
    elif kind == "bool":
        values = _items(key, value)
        for v in values:
            if v is not None and not isinstance(v, bool):
                raise ValidationError(f"`{key}` must be True or False, got {v!r}")
    elif kind == "str":
        values = _texts(key, value, allow_none=True)
    else:
        values = _items(key, value)
    if key == "clip_skip" and any(v is not None for v in values):
        _check_clip_skip(values)
    return _unique(key, [_freeze(key, v) for v in values])


@functools.lru_cache(maxsize=1)
def _clip_skip_broken() -> str | None:
    """Why `clip_skip` fails with the installed libraries, or None when it works.

    diffusers' SD 1.x/2.x `encode_prompt` applies `text_encoder.text_model.final_layer_norm` to
    the skipped layer's output; a transformers whose `CLIPTextModel` has no `text_model` makes
    every such call fail. A feature check, not a version list, so `clip_skip` works again as
    soon as either side changes. (Imports torch and transformers, only when `clip_skip` is set.)
    """
    import importlib.metadata as md
    import inspect

    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import StableDiffusionImg2ImgPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    if ".text_model." not in inspect.getsource(StableDiffusionImg2ImgPipeline.encode_prompt):
        return None
    with torch.device("meta"):  # structure only, no weights
        encoder = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_attention_heads=1,
                                               num_hidden_layers=1, vocab_size=8, max_position_embeddings=8))
    if hasattr(encoder, "text_model"):
        return None
    return (f"the installed transformers {md.version('transformers')} and diffusers {md.version('diffusers')} "
            f"don't work together with it: diffusers' pipelines read `text_encoder.text_model`, which this "
            f"transformers' CLIPTextModel no longer has, so every cell would fail")


def _check_clip_skip(values) -> None:
    reason = _clip_skip_broken()
    if reason is not None:
        shown = values[0] if len(values) == 1 else list(values)
        raise ValidationError(f"`clip_skip`={shown!r} can't be used: {reason}; remove `clip_skip` from the spec "
                              f"until a transformers/diffusers pair supports it")


def _unique(key, values) -> tuple:
    seen = []
    for v in values:
        # compare with type: True == 1 == 1.0 in Python, yet they are different settings
        if any(v == s and type(v) is type(s) for s in seen):
            raise ValidationError(f"`{key}` lists the value {v!r} more than once")
        seen.append(v)
    return tuple(values)


def _normalise_option(key, value):
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        value = str(value).replace("torch.", "")
    return _freeze(key, value)


def _route(flat: Mapping[str, Any]) -> dict:
    """Flat keys -> SweepSpec fields: axes and `name` stay, call keywords to params, options to options."""
    fields: dict[str, Any] = {}
    params: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str):
            raise ValidationError(f"spec keys must be strings, got {key!r}")
        if key in AXES or key in SETTINGS:
            fields[key] = value
        elif key in ("params", "options"):
            if not isinstance(value, Mapping):
                raise ValidationError(f"`{key}` must be a mapping of keys to values, got {value!r}")
            (params if key == "params" else options).update(value)
        elif key in call_parameters():
            params[key] = value
        elif key in option_names():
            options[key] = value
        else:
            raise ValidationError(_unknown_key_message(key, value))
    return {**fields, "params": params, "options": options}


def _unknown_key_message(key, value) -> str:
    return (
        f"unknown spec key `{key}`={value!r}{_suggest(key, known_keys())}; a spec takes the axes "
        f"{list(AXES)}, `name`, any pipeline call keyword (e.g. eta, controlnet_conditioning_scale) "
        f"and load_pipeline options (e.g. dtype, offload)"
    )


# --------------------------------------------------------------------------------------------
# cells


@dataclass(frozen=True)
class Cell:
    """One point of the grid: one pipeline call, one image, one row.

    Args:
        model: the model to load.
        image: the init image source as the user gave it (sample name, path, URL or PIL image).
        seed: the seed for `torch.Generator().manual_seed`.
        scheduler: a name from `SCHEDULER_NAMES`, or None for the model's own scheduler.
        call: the pipeline call keywords (read-only): prompt, negative_prompt, strength,
            guidance_scale, num_inference_steps and every param; not `image` or `generator`.
        swept: the swept axes (those with more than one value) and this cell's value of each.
        options: the loading options that change pixels (see `PIXEL_OPTIONS`), part of the key.

    Example:
        >>> cell = spec.cells()[0]
        >>> image = pipe(image=init, **cell.call, generator=torch.Generator().manual_seed(cell.seed)).images[0]
    """

    model: str
    image: Any
    seed: int
    scheduler: str | None
    call: Mapping[str, Any]
    swept: Mapping[str, Any] = field(default_factory=_FrozenDict)
    options: Mapping[str, Any] = field(default_factory=_FrozenDict)
    compel: bool = False

    @property
    def effective_steps(self) -> int:
        """`int(num_inference_steps * strength)`: the denoising steps diffusers' img2img runs."""
        return int(self.call["num_inference_steps"] * self.call["strength"])

    def as_dict(self) -> dict:
        """The cell flat, for a table row or PNG text: model, image, seed, scheduler and the call."""
        return {"model": self.model, "image": self.image, "seed": self.seed, "scheduler": self.scheduler,
                **_plain(dict(self.call))}

    def key(self, image_hash: str, dtype: str | None = None) -> str:
        """The content key: what names this cell's image file and finds it again on a re-run.

        The first 20 hex digits of the sha256 of a canonical JSON (sorted keys, floats as repr,
        tuples as lists) of: key version, model, scheduler, seed, the init image's content hash,
        every call keyword, and the pixel-changing loading options. The image's source (path, URL)
        is not in it: the same picture from another place is the same cell.

        Args:
            image_hash: the init image's content hash (`images.image_hash`).
            dtype: the dtype the cell runs in ("float32", "float16", ...), when known: the runner
                always passes it, so float16 and float32 images never share a key.

        Returns:
            A 20-character lowercase hex string.

        Example:
            >>> cell.key("3f2a...")
            '9c1d0e5b7a2f4c8e1b3d'
        """
        if not isinstance(image_hash, str) or not image_hash:
            raise ValidationError(f"`image_hash` must be a non-empty string, got {image_hash!r}")
        payload = {
            "v": KEY_VERSION,
            "model": self.model,
            "scheduler": self.scheduler,
            "seed": self.seed,
            "image": image_hash,
            "call": _plain(dict(self.call)),
            "options": _plain({**self.options, **({"dtype": dtype} if dtype else {})}),
        }
        if self.compel:  # weighted prompts change pixels; absent when off so older keys stay valid
            payload["compel"] = True
        return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def _is_tiny(model) -> bool:
    return isinstance(model, str) and model.startswith("tiny/")


def _tiny_size() -> int:
    from .tiny import TINY_SIZE  # plain Python at import: no torch

    return TINY_SIZE


def tiny_size_note(spec) -> str | None:
    """The one line saying that tiny models run at `tiny.TINY_SIZE` px here, or None.

    A spec that sets neither `height` nor `width` runs its `tiny/...` models' cells at
    TINY_SIZE x TINY_SIZE (a tiny model is for trying a spec; its pictures are noise at any size),
    as if the spec said so: the size is in each cell's call, its content key and its row. Real
    models and specs that set a size are unchanged.

    Example:
        >>> tiny_size_note(SweepSpec.from_yaml("sweeps/combined.yaml", model="tiny/sd15"))
        'tiny models run at 64x64 px (the spec sets no height/width): 48 cells'
    """
    if "height" in spec.params or "width" in spec.params:
        return None
    tiny = [m for m in spec.model if _is_tiny(m)]
    if not tiny:
        return None
    count = len(spec) // len(spec.model) * len(tiny)
    size = _tiny_size()
    cells = f"{count} cell" + ("s" if count != 1 else "")
    return f"tiny models run at {size}x{size} px (the spec sets no height/width): {cells}"


def _key_options(options: Mapping[str, Any]) -> _FrozenDict:
    from .loaders import DEFAULT_OPTIONS, DTYPES

    out = {}
    for name in PIXEL_OPTIONS:
        value = options.get(name, DEFAULT_OPTIONS.get(name))
        if name == "dtype" and isinstance(value, str):
            value = DTYPES.get(value, value)  # "fp16" and "float16" are one setting
        if value != DEFAULT_OPTIONS.get(name):
            out[name] = value
    return _FrozenDict(out)


# --------------------------------------------------------------------------------------------
# the spec


class _SpecDumper(yaml.SafeDumper):
    """YAML for people: one key a line, a key's values on its line (``strength: [0.4, 0.6]``)."""


_SpecDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


@dataclass(frozen=True, kw_only=True, init=False)
class SweepSpec:
    """A sweep: a grid of image-to-image calls, validated when built, before any model loads.

    Each axis takes a value or a list of values (stored as a tuple); numeric axes also take
    ranges (`{start, stop, step}`, `{start, stop, num}`, `"0.3-0.9 (+0.2)"`, `"0.3-0.9 [4]"`,
    `"1-5"`, see `expand_range`). Lists become tuples and mappings read-only, so a spec is
    hashable and never changes; `replace` makes a new one.

    Args:
        model: hub id, local path, single file or tiny model name (`"tiny/sd15"`). Required.
        prompt: the prompt. Required; `""` is an unconditional prompt.
        image: init image: sample name ("astronaut", "cat"), path, URL (or, outside YAML, a PIL
            image). Required.
        strength: in [0, 1]; default 0.8.
        guidance_scale: >= 0; default 7.5.
        negative_prompt: a string or None (default).
        seed: an integer in [0, 2**64 - 1]; default 0.
        num_inference_steps: an integer >= 1; default 50. Every cell must run at least one
            denoising step: `int(num_inference_steps * strength) >= 1`.
        scheduler: a name from `SCHEDULER_NAMES`, or None (default) for the model's own.
        params: any other keyword of the pipeline call (see `call_parameters`), fixed or swept,
            e.g. `{"eta": 0.0, "controlnet_conditioning_scale": [0.5, 1.0]}`. They may also be
            given flat, as in YAML: `SweepSpec(..., eta=0.0, offload="model")` routes call keywords
            to `params` and load_pipeline options to `options`.
        options: `load_pipeline` options, not swept, e.g. `{"dtype": "float16", "offload": "model"}`.
        name: a title for reports.
        compel: weight prompts with compel (`"a (red)1.3 cat"`, `"cat++"`): prompts and negative
            prompts are encoded by `prompts.encode_weighted` and passed as embeddings; default False.

    Example:
        >>> spec = SweepSpec(model="tiny/sd15", prompt="a cat", image="cat",
        ...                  strength="0.3-0.9 (+0.2)", guidance_scale=[5, 7.5])
        >>> len(spec), spec.swept
        (8, ('strength', 'guidance_scale'))
    """

    model: Any = None
    prompt: Any = None
    image: Any = None
    strength: Any = DEFAULTS["strength"]
    guidance_scale: Any = DEFAULTS["guidance_scale"]
    negative_prompt: Any = DEFAULTS["negative_prompt"]
    seed: Any = DEFAULTS["seed"]
    num_inference_steps: Any = DEFAULTS["num_inference_steps"]
    scheduler: Any = DEFAULTS["scheduler"]
    params: Mapping[str, Any] = field(default_factory=_FrozenDict)
    options: Mapping[str, Any] = field(default_factory=_FrozenDict)
    name: str | None = None
    compel: bool = False

    def __init__(self, **keys):
        # Flat keys, as in YAML: axes and settings are fields, any other pipeline call keyword goes
        # to `params` and any load_pipeline option to `options` (unknown keys: one clear error).
        routed = _route(keys)
        for f in fields(self):
            if f.name in routed:
                value = routed[f.name]
            else:
                value = f.default_factory() if f.default is MISSING else f.default
            object.__setattr__(self, f.name, value)
        self.__post_init__()

    def __post_init__(self):
        # 1. axes
        for key in AXES:
            object.__setattr__(self, key, _normalise_axis(key, getattr(self, key)))
        # 2. call keywords and loading options
        params = self._mapping("params", self.params)
        for key in params:
            if key not in call_parameters():
                if key in AXES:
                    hint = f" (it is an axis: pass SweepSpec({key}=...))"
                elif key in option_names():
                    hint = " (it is a load_pipeline option: put it in `options`)"
                else:
                    hint = _suggest(key, call_parameters())
                raise ValidationError(f"`params` has no pipeline call keyword `{key}`={params[key]!r}{hint}")
        object.__setattr__(self, "params", _FrozenDict({k: _normalise_param(k, params[k]) for k in sorted(params)}))
        options = self._mapping("options", self.options)
        for key in options:
            if key not in option_names():
                hint = " (it is an axis of the spec: set `scheduler` directly)" if key == "scheduler" else ""
                raise ValidationError(
                    f"`options` has no load_pipeline option `{key}`={options[key]!r}"
                    f"{hint or _suggest(key, option_names())}"
                )
        object.__setattr__(self, "options", _FrozenDict({k: _normalise_option(k, options[k]) for k in sorted(options)}))
        if self.name is not None and not isinstance(self.name, str):
            raise ValidationError(f"`name` must be a string or None, got {self.name!r}")
        if not isinstance(self.compel, bool):
            raise ValidationError(f"`compel` must be true or false, got {self.compel!r}")
        # 3. per cell: every (num_inference_steps, strength) pair must denoise at least once
        self._check_effective_steps()

    @staticmethod
    def _mapping(key, value) -> dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValidationError(f"`{key}` must be a mapping of keywords to values, got {value!r}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ValidationError(f"`{key}` keys must be strings, got {bad[0]!r}")
        return dict(value)

    def _check_effective_steps(self):
        # With `denoising_start` (SDXL refiner style) the schedule ignores strength.
        starts = self.params.get("denoising_start", (None,))
        for steps, strength, start in itertools.product(self.num_inference_steps, self.strength, starts):
            if start is None and int(steps * strength) < 1:
                raise ValidationError(
                    f"cell strength={strength!r}, num_inference_steps={steps!r} runs "
                    f"int({steps}*{strength!r})={int(steps * strength)} denoising steps; diffusers would "
                    f"silently return the init image (SD 1.5) or fail deep inside (SDXL): raise `strength` "
                    f"or `num_inference_steps` so that their product is at least 1"
                )

    # ---- the grid

    def _axes(self) -> list[tuple[str, tuple]]:
        return [(k, getattr(self, k)) for k in AXES] + list(self.params.items())

    @property
    def swept(self) -> tuple[str, ...]:
        """Names of the axes with more than one value, in cell order."""
        return tuple(k for k, values in self._axes() if len(values) > 1)

    def __len__(self) -> int:
        return math.prod(len(values) for _, values in self._axes())

    def cells(self) -> list[Cell]:
        """Expand the grid into cells.

        The order is `itertools.product` over model, image, prompt, negative_prompt, seed,
        num_inference_steps, scheduler, strength, guidance_scale, then the params by name: the
        last axis varies fastest, so with `strength=[a, b]` and `guidance_scale=[x, y]` the cells
        are (a, x), (a, y), (b, x), (b, y).

        Returns:
            A list of `Cell`, `len(spec)` long.

        Example:
            >>> [(c.call["strength"], c.call["guidance_scale"]) for c in spec.cells()]
            [(0.4, 5.0), (0.4, 7.5), (0.8, 5.0), (0.8, 7.5)]
        """
        axes = self._axes()
        names = [k for k, _ in axes]
        swept = set(self.swept)
        seqs = {k: seq for k, (_, seq) in call_parameters().items()}
        key_options = _key_options(self.options)
        tiny_size = tiny_size_note(self) is not None  # said once by run_sweep, not here: cells() is pure
        cells = []
        for combo in itertools.product(*(values for _, values in axes)):
            point = dict(zip(names, combo))
            call = {k: point[k] for k in _CALL_AXES}
            call.update({k: _thaw(point[k], seqs.get(k, list)) for k in self.params})
            if tiny_size and _is_tiny(point["model"]):
                call.update(height=_tiny_size(), width=_tiny_size())  # in the call, so in the key and the row
            cells.append(Cell(
                model=point["model"],
                image=point["image"],
                seed=point["seed"],
                scheduler=point["scheduler"],
                call=_FrozenDict(call),
                swept=_FrozenDict({k: point[k] for k in names if k in swept}),
                options=key_options,
                compel=self.compel,
            ))
        return cells

    # ---- flat dicts and YAML

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides) -> "SweepSpec":
        """Build a spec from flat keys, routing call keywords to `params` and options to `options`.

        Args:
            data: flat keys as in YAML (`strength`, `eta`, `offload`, ...); nested `params` and
                `options` mappings are accepted too.
            **overrides: flat keys that replace those in `data` before validation (the CLI's
                `--model` on a spec without one).

        Example:
            >>> SweepSpec.from_dict({"model": "tiny/sd15", "prompt": "a cat", "image": "cat",
            ...                      "eta": 0.0, "offload": "model"}).options
            {'offload': 'model'}
        """
        if not isinstance(data, Mapping):
            raise ValidationError(f"a spec must be a mapping of keys to values, got {data!r}")
        return cls(**_route({**data, **overrides}))

    def to_dict(self) -> dict:
        """The spec as flat, YAML-ready builtins: a lone value as a scalar, several as a list.

        A lone list value is wrapped (`[[1024, 1024]]`) so that reading it back gives the same spec.
        """
        def flat(values):
            if len(values) == 1:
                value = _plain(values[0])
                return [value] if isinstance(value, list) else value
            return [_plain(v) for v in values]

        out: dict[str, Any] = {"name": self.name} if self.name is not None else {}
        if self.compel:
            out["compel"] = True
        out.update({k: flat(v) for k, v in self._axes()})
        out.update({k: _plain(v) for k, v in self.options.items()})
        return out

    @classmethod
    def from_yaml(cls, source, **overrides) -> "SweepSpec":
        """Read a spec from a YAML file or text (safe loading only: no Python tags).

        Args:
            source: a path (`str` or `Path`; `.yaml`/`.yml` or existing file) or YAML text.
            **overrides: flat keys that replace the file's before validation.

        Example:
            >>> spec = SweepSpec.from_yaml("sweeps/strength.yaml", model="tiny/sd15")
        """
        text = source
        if isinstance(source, os.PathLike) or (
            isinstance(source, str) and "\n" not in source
            and (source.endswith((".yaml", ".yml")) or Path(source).is_file())
        ):
            path = Path(source).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValidationError(f"spec file {str(source)!r} can't be read: {exc.strerror or exc}") from None
        if not isinstance(text, str):
            raise ValidationError(f"`source` must be a path or YAML text, got {source!r}")
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # safe: SafeLoader, duplicates refused
        except yaml.constructor.ConstructorError as exc:
            first = " ".join(str(exc).split())[:300]
            raise ValidationError(f"spec YAML can't be read safely (no Python tags allowed): {first}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())[:200]
            raise ValidationError(f"spec YAML is malformed{where}: {problem}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValidationError(f"a spec must be a YAML mapping of keys to values, got {data!r}")
        return cls.from_dict(data, **overrides)

    def to_yaml(self, path=None) -> str:
        """The spec as flat YAML; written to `path` too when given.

        Example:
            >>> SweepSpec.from_yaml(spec.to_yaml()) == spec
            True
        """
        for value in self.image:
            if not isinstance(value, str):
                raise ValidationError(
                    f"`image` {value!r} is an in-memory picture; save it and give its path to write the spec as YAML"
                )
        text = yaml.dump(self.to_dict(), Dumper=_SpecDumper, sort_keys=False, allow_unicode=True,
                         default_flow_style=False, width=100)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def replace(self, **changes) -> "SweepSpec":
        """A new, validated spec with some flat keys changed (axes, call keywords or options).

        Args:
            **changes: flat keys as in YAML; `params=` or `options=` replace the whole mapping.

        Example:
            >>> spec.replace(model="tiny/sd15", strength=[0.3, 0.5], eta=0.5).params["eta"]
            (0.5,)
        """
        current: dict[str, Any] = {k: getattr(self, k) for k in (*AXES, *SETTINGS)}
        if "params" not in changes:  # `params=` / `options=` replace the whole mapping
            current.update(self.params)
        if "options" not in changes:
            current.update(self.options)
        return type(self)(**_route({**current, **changes}))


# --------------------------------------------------------------------------------------------
# --set key=value

# keys whose value is text: `--set prompt=a cat: cute` stays a string, not a YAML mapping
_TEXT_KEYS = {"model", "prompt", "negative_prompt", "image", "name", "scheduler", "prompt_2", "negative_prompt_2",
              "device", "variant", "revision", "config", "prior", "vae", "controlnet"}


def parse_set(value: str) -> tuple[str, Any]:
    """Parse a CLI `--set key=value` (or a notebook override) with YAML scalar and list semantics.

    The key must be a spec key and the value must pass the same checks as in a spec:
    `strength=high` fails here. Ranges stay as written; the spec expands them.

    Args:
        value: `key=value`, e.g. `strength=[0.3,0.5]`, `strength=0.3-0.9 (+0.2)`, `seed=1-4`,
            `negative_prompt=null`, `prompt=a cat: cute` (text keys keep their text).

    Returns:
        `(key, parsed value)`, ready for `spec.replace(**{key: value})`.

    Example:
        >>> parse_set("strength=[0.3, 0.5]")
        ('strength', [0.3, 0.5])
    """
    if not isinstance(value, str) or "=" not in value:
        raise ValidationError(f"`--set` takes key=value, got {value!r}")
    key, _, text = value.partition("=")
    key = key.strip()
    if key not in known_keys() and key not in ("params", "options"):
        raise ValidationError(_unknown_key_message(key, text))
    stripped = text.strip()
    if key in _TEXT_KEYS and not stripped.startswith("[") and stripped not in ("null", "~", "None"):
        parsed: Any = text
    else:
        try:
            parsed = yaml.safe_load(text) if stripped else ""
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ValidationError(f"`{key}` value {text!r} is not valid YAML: {reason}") from None
        if stripped == "None":
            parsed = None
    _check_value(key, parsed)
    return key, parsed


def _check_value(key, value) -> None:
    """The checks a spec runs on one key, without building a spec."""
    if key in AXES:
        _normalise_axis(key, value)
    elif key in call_parameters():
        _normalise_param(key, value)
    elif key in option_names():
        _normalise_option(key, value)
    elif key == "name" and value is not None and not isinstance(value, str):
        raise ValidationError(f"`name` must be a string or None, got {value!r}")
