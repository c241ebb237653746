"""Which keys a spec takes, and the checks every value passes before any model loads.

`known_keys()` is every flat key a spec accepts: the axes, the settings (`name`, `compel`), every
keyword of the supported pipelines' calls (`call_parameters()`, read from the installed
diffusers' source with `ast`, no import) and the `load_pipeline` options. `normalise_axis`,
`normalise_param` and `normalise_option` turn one raw value into a tuple of clean values or raise
a `ValidationError` naming the key and the value; `check_value` runs them on one key without a
spec, and `parse_set` reads a CLI `--set key=value`. `check_sizes` checks a call's `height` and
`width` against a loaded pipeline's own factor, before any cell runs.

Pure: imports neither torch nor diffusers (the clip-skip feature check does, only when set).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ValidationError
from .families import call_pipelines, family_of, tiny_models
from .frozen import FrozenDict, freeze
from .ranges import expand_range, is_number, number_text
from .vocab import (AXES, DEFAULT_OPTIONS, MAX_SEED, SCHEDULER_NAMES, SETTINGS, SIZE_ARGUMENTS, TINY_ADAPTER_SUFFIXES,
                    suggest, tiny_adapter)

# The pipelines whose `__call__` keywords a spec may set, and their files inside the diffusers
# package: every model family's (`Family.call_pipelines`), in registry order.
CALL_PIPELINES = call_pipelines()
# Call keywords a spec can't hold: the runner owns them (generator, output), or they are tensors
# and callables that YAML can't express, or they would break "one image per row".
_NOT_IN_SPEC = {"generator", "latents", "return_dict", "output_type", "num_images_per_prompt", "ip_adapter_image"}

MAX_STEPS = 10_000  # denoising steps of one call: a typo like 1e400 fails here, not in the scheduler
MAX_SIZE = 16_384  # px: the largest height/width a spec may ask for (a typo like 64000 fails here, not in the VAE)
# Numeric call keywords with bounds of their own: name -> (lowest, highest or None). The other
# numeric keywords need only be finite numbers.
PARAM_BOUNDS = {
    "height": (1, MAX_SIZE),
    "width": (1, MAX_SIZE),
    "prior_num_inference_steps": (1, None),
    "prior_guidance_scale": (0, None),
    "noise_level": (0, None),
    "clip_skip": (0, None),
    "denoising_start": (0, 1),
    "denoising_end": (0, 1),
    "control_guidance_start": (0, 1),  # one value per ControlNet: a list is fine
    "control_guidance_end": (0, 1),
}
# SDXL's micro-conditioning pairs: name -> the lowest value of each of its two integers.
PAIR_ARGUMENTS = {
    "original_size": 1, "target_size": 1, "negative_original_size": 1, "negative_target_size": 1,
    "crops_coords_top_left": 0, "negative_crops_coords_top_left": 0,
}
# Numeric keywords that take one number only (no list per ControlNet or per step).
_SCALAR_ONLY = frozenset(PARAM_BOUNDS) - {"control_guidance_start", "control_guidance_end"}


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


def _diffusers_root() -> Path | None:
    spec = importlib.util.find_spec("diffusers")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _call_node(root: Path, cls_name: str, rel_path: str):
    """The `ast` arguments of `cls_name.__call__` in `root / rel_path`, or None when the file or
    the class is not there (a diffusers version that moved it)."""
    path = root / rel_path
    if not path.is_file():
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for fn in node.body:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name == "__call__":
                    return fn.args
    return None


def _class_node(root: Path, cls_name: str, rel_path: str):
    path = root / rel_path
    if not path.is_file():
        return None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            return node
    return None


@functools.lru_cache(maxsize=None)
def pipeline_adapters(cls_name: str) -> frozenset:
    """Which adapters a diffusers pipeline loads: "lora" (`load_lora_weights`), "ip_adapter"
    (`load_ip_adapter`), read from its class's loader mixins in the installed diffusers' source
    (no import; `hasattr` on the class where the file moved).

    Example:
        >>> sorted(pipeline_adapters("StableDiffusionImg2ImgPipeline"))
        ['ip_adapter', 'lora']
    """
    rel_path = CALL_PIPELINES.get(cls_name)
    root = _diffusers_root() if rel_path else None
    node = _class_node(root, cls_name, rel_path) if root else None
    if node is not None:
        bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
        return frozenset({"lora"} if any("LoraLoaderMixin" in b for b in bases) else set()) | frozenset(
            {"ip_adapter"} if any("IPAdapterMixin" in b for b in bases) else set())
    import diffusers

    cls = getattr(diffusers, cls_name)
    return frozenset(k for k, m in (("lora", "load_lora_weights"), ("ip_adapter", "load_ip_adapter"))
                     if hasattr(cls, m))


def call_arguments_from_source(root: Path, cls_name: str, rel_path: str) -> dict | None:
    """`{name: annotation text}` of `cls_name.__call__`, read from `root / rel_path` with `ast`.

    None when the file or the class is not there (a diffusers version that moved it).
    """
    a = _call_node(root, cls_name, rel_path)
    if a is None:
        return None
    return {
        arg.arg: ast.unparse(arg.annotation) if arg.annotation is not None else ""
        for arg in a.posonlyargs + a.args[1:] + a.kwonlyargs
    }


def call_defaults_from_source(root: Path, cls_name: str, rel_path: str) -> dict | None:
    """`{name: default}` of `cls_name.__call__`'s literal defaults, read from `root / rel_path` with `ast`.

    A default that is not a literal (a module constant, an expression) is left out; None when the
    file or the class is not there.
    """
    a = _call_node(root, cls_name, rel_path)
    if a is None:
        return None
    positional = a.posonlyargs + a.args
    pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
    pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
    out = {}
    for arg, default in pairs:
        try:
            out[arg.arg] = ast.literal_eval(default)
        except ValueError:
            continue
    return out


def pipeline_call_defaults(cls_name: str) -> dict:
    """The literal defaults of a diffusers pipeline's `__call__`, `{name: value}` (source first, as
    `pipeline_call_arguments`; `inspect.signature` on the class otherwise).

    Example:
        >>> pipeline_call_defaults("StableDiffusionXLImg2ImgPipeline")["strength"]
        0.3
    """
    rel_path = CALL_PIPELINES.get(cls_name)
    root = _diffusers_root() if rel_path else None
    defaults = call_defaults_from_source(root, cls_name, rel_path) if root else None
    if defaults is not None:
        return defaults
    import diffusers

    params = inspect.signature(getattr(diffusers, cls_name).__call__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def call_arguments_from_import(cls_name: str) -> dict:
    """`{name: annotation text}` of `diffusers.<cls_name>.__call__`, from `inspect.signature`."""
    import diffusers

    params = inspect.signature(getattr(diffusers, cls_name).__call__).parameters
    return {
        name: "" if p.annotation is inspect.Parameter.empty
        else p.annotation.__name__ if isinstance(p.annotation, type) else str(p.annotation)
        for name, p in params.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def pipeline_call_arguments(cls_name: str) -> dict:
    """The keywords of a diffusers pipeline's `__call__`, `{name: annotation text}`.

    Read from the source file without importing diffusers for the pipelines of `CALL_PIPELINES`,
    with `inspect.signature` on the class otherwise (which imports diffusers; an unknown class
    name raises AttributeError).

    Example:
        >>> "height" in pipeline_call_arguments("StableDiffusionImg2ImgPipeline")
        False
    """
    rel_path = CALL_PIPELINES.get(cls_name)
    root = _diffusers_root() if rel_path else None
    args = call_arguments_from_source(root, cls_name, rel_path) if root else None
    return args if args is not None else call_arguments_from_import(cls_name)


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
    annotations: dict[str, list[str]] = {}
    for cls_name in CALL_PIPELINES:
        for name, text in pipeline_call_arguments(cls_name).items():
            annotations.setdefault(name, []).append(text)
    return FrozenDict({
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
    return tuple(sorted(set(DEFAULT_OPTIONS) - {"scheduler"}))


@functools.lru_cache(maxsize=None)
def known_keys() -> tuple[str, ...]:
    """Every flat key a spec accepts: axes, call keywords, loading options and `name`.

    Example:
        >>> "strength" in known_keys() and "offload" in known_keys()
        True
    """
    return tuple(sorted({*AXES, *SETTINGS, *call_parameters(), *option_names()}))


def unknown_key_message(key, value) -> str:
    """The one line for a key no spec takes, with the closest known key."""
    return (
        f"unknown spec key `{key}`={value!r}{suggest(key, known_keys())}; a spec takes the axes "
        f"{list(AXES)}, `name`, any pipeline call keyword (e.g. eta, controlnet_conditioning_scale) "
        f"and load_pipeline options (e.g. dtype, offload)"
    )


def route(flat: Mapping[str, Any]) -> dict:
    """Flat keys -> SweepSpec fields: axes and `name` stay, call keywords to params, options to options."""
    out: dict[str, Any] = {}
    params: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str):
            raise ValidationError(f"spec keys must be strings, got {key!r}")
        if key in AXES or key in SETTINGS:
            out[key] = value
        elif key in ("params", "options"):
            if not isinstance(value, Mapping):
                raise ValidationError(f"`{key}` must be a mapping of keys to values, got {value!r}")
            (params if key == "params" else options).update(value)
        elif key in call_parameters():
            params[key] = value
        elif key in option_names():
            options[key] = value
        else:
            raise ValidationError(unknown_key_message(key, value))
    return {**out, "params": params, "options": options}


# --------------------------------------------------------------------------------------------
# raw value -> list of items


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
            out.extend(number_text(key, item, integer))
        elif allow_lists and isinstance(item, (list, tuple)):
            # one list-valued setting, e.g. controlnet_conditioning_scale [0.5, 1.0] for two ControlNets
            out.append(tuple(_number(key, v, integer) for v in item))
        else:
            out.append(_number(key, item, integer))
    return out


def _number(key, item, integer: bool):
    """One number: an int for integer axes (2.0 is fine, 2.5 is not), else a float."""
    if not is_number(item):
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


def _shown(value) -> str:
    """A value for a message: huge integers (`1e400` read as an int) in short scientific form."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**21:
        return f"{float(value):.3e}" if abs(value) < 10**308 else f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def _unique(key, values) -> tuple:
    seen = []
    for v in values:
        # compare with type: True == 1 == 1.0 in Python, yet they are different settings
        if any(v == s and type(v) is type(s) for s in seen):
            raise ValidationError(f"`{key}` lists the value {v!r} more than once")
        seen.append(v)
    return tuple(values)


# --------------------------------------------------------------------------------------------
# the axes


_REQUIRED = {
    "model": "`model` is required: a hub id, a local path or a tiny model such as 'tiny/sd15'",
    "prompt": "`prompt` is required (use '' for an unconditional prompt)",
    "image": "`image` is required: a sample name ('astronaut', 'cat'), a path or a URL",
}


def _images(key, value) -> list:
    out = []
    for item in _items(key, value):
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


def _schedulers(key, value) -> list:
    values = _texts(key, value, allow_none=True)
    for name in values:
        if name is not None and name not in SCHEDULER_NAMES:
            raise ValidationError(
                f"`scheduler` must be one of {list(SCHEDULER_NAMES)} or None, got {name!r}"
                f"{suggest(name, SCHEDULER_NAMES)}"
            )
    return values


def _or_default(check):
    """An axis check that also takes None: the pipeline's own default (`vocab.DEFAULTS`)."""
    def checked(key, value):
        items = _items(key, value)
        rest = [item for item in items if item is not None]
        return [None] * (len(items) - len(rest)) + (check(key, rest) if rest else [])
    return checked


@_or_default
def _strengths(key, value) -> list:
    values = _numbers(key, value, integer=False)
    for v in values:
        if not 0 <= v <= 1:  # False for NaN too
            raise ValidationError(f"`strength` must be in [0, 1], got {v!r}")
    return values


@_or_default
def _non_negative(key, value) -> list:
    """Finite numbers >= 0: `guidance_scale`, `ip_adapter_scale`."""
    values = _numbers(key, value, integer=False)
    for v in values:
        if not (math.isfinite(v) and v >= 0):
            raise ValidationError(f"`{key}` must be a finite number >= 0, got {v!r}")
    return values


@_or_default
def _step_counts(key, value) -> list:
    values = _numbers(key, value, integer=True)
    for v in values:
        if not 1 <= v <= MAX_STEPS:
            raise ValidationError(f"`num_inference_steps` must be an integer in [1, {MAX_STEPS}], got {_shown(v)}")
    return values


def _seeds(key, value) -> list:
    values = _numbers(key, value, integer=True)
    for v in values:
        if not 0 <= v <= MAX_SEED:
            raise ValidationError(f"`seed` must be an integer in [0, 2**64 - 1], got {_shown(v)}")
    return values


def _source(key, item) -> str:
    """One adapter source: a tiny name, hub id, folder or file, as a non-empty string; a tiny name
    must be one of the embedded adapters of its kind."""
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    if not isinstance(item, str) or not item.strip():
        raise ValidationError(
            f"`{key}` sources must be non-empty strings (a hub id, a folder, a .safetensors file or a tiny "
            f"name such as 'tiny/sd15-lora'), got {item!r}"
        )
    if item.startswith("tiny/"):
        check_tiny_adapter("ip_adapter" if key.startswith("ip_adapter") else "lora", item)
    return item


def tiny_adapters(kind: str) -> list[str]:
    """The embedded tiny LoRAs (`kind` "lora") or IP-Adapters ("ip_adapter"), by their names."""
    return [name for name in tiny_models() if (tiny_adapter(name) or (None,))[0] == kind]


def check_tiny_adapter(kind: str, name: str) -> None:
    """A tiny name given as adapter `kind` must be one of the embedded tiny adapters of that kind."""
    names = tiny_adapters(kind)
    if name not in names:
        what = TINY_ADAPTER_SUFFIXES[kind][1]
        raise ValidationError(f"`{kind}` {name!r} is not an embedded tiny {what}; the tiny ones are "
                              f"{names}{suggest(name, names)}")


def _weight(key, source, weight) -> float:
    if not is_number(weight) or not math.isfinite(float(weight)):
        raise ValidationError(f"`{key}` weight of {source!r} must be a finite number, got {weight!r}")
    return float(weight)


def _loras(key, value) -> list:
    """Each value: None (the base model), a source, or several at once: a list of sources (weight
    1 each) or a mapping source -> weight; stored as a tuple of (source, weight) pairs."""
    out = []
    for item in _items(key, value):
        if item is None or _is_none_text(item):
            out.append(None)
            continue
        if isinstance(item, Mapping):
            pairs = [(_source(key, s), _weight(key, s, w)) for s, w in item.items()]
        elif isinstance(item, (list, tuple)):  # sources (weight 1), or (source, weight) pairs as a spec stores them
            pairs = [(_source(key, s[0]), _weight(key, s[0], s[1])) if isinstance(s, (list, tuple)) and len(s) == 2
                     else (_source(key, s), 1.0) for s in item]
        else:
            pairs = [(_source(key, item), 1.0)]
        if not pairs:
            raise ValidationError(f"`{key}` has an empty combination {item!r}; use null for the base model")
        names = [s for s, _ in pairs]
        twice = sorted({s for s in names if names.count(s) > 1})
        if twice:
            raise ValidationError(f"`{key}` combination {item!r} names {twice[0]!r} twice")
        out.append(tuple(pairs))
    return out


def _lora_scales(key, value) -> list:
    """Each value: None (the weights as given), a number multiplying every LoRA's weight, or a
    mapping source -> number for each LoRA (the others keep theirs)."""
    out = []
    for item in _items(key, value):
        if item is None:
            out.append(None)
        elif isinstance(item, Mapping):
            if not item:
                raise ValidationError(f"`{key}` is an empty mapping; give source: scale pairs or a number")
            out.append(FrozenDict({_source(key, s): _weight(key, s, w) for s, w in sorted(item.items())}))
        else:
            out.append(_number(key, item, integer=False) if not isinstance(item, str) else
                       _one(key, number_text(key, item, False)))
            if not math.isfinite(out[-1]):
                raise ValidationError(f"`{key}` must be a finite number, got {item!r}")
    return out


def _one(key, values: list):
    if len(values) != 1:
        raise ValidationError(f"`{key}` takes one number per value here, got the range {values!r}; list them")
    return values[0]


def _ip_adapters(key, value) -> list:
    return [None if item is None or _is_none_text(item) else _source(key, item) for item in _items(key, value)]


def _is_none_text(item) -> bool:
    """"none" / "None" / "null" as an adapter source: the base model, as `--lora none` writes it
    (YAML reads only `null` and `~` as None)."""
    return isinstance(item, str) and item.strip().lower() in ("none", "null")


@_or_default
def _ip_adapter_images(key, value) -> list:
    try:
        return _images(key, value)
    except ValidationError:
        raise ValidationError(
            f"`ip_adapter_image` must be a sample name ('astronaut', 'cat'), a file path, a URL, a PIL image or "
            f"None, got {value!r}"
        ) from None


def _prompt_sr(key, value) -> list:
    """A1111's prompt search/replace: the terms, the first being the one every other replaces."""
    if value is None or (isinstance(value, (list, tuple)) and list(value) == [None]):
        return [None]
    terms = _texts(key, value, allow_none=False)
    if not terms[0]:
        raise ValidationError(f"`prompt_sr` first term (what the others replace) must be non-empty, got {terms!r}")
    return terms


# the axes a variant may set (one value each), besides any pipeline call keyword
_VARIANT_AXES = tuple(a for a in AXES if a not in ("variants", "prompt_sr", "image", "model"))


def _variants(key, value) -> list:
    """Named groups of arguments, one axis: {name: {key: one value, ...}} -> (name, args) pairs."""
    if value is None or (isinstance(value, (list, tuple)) and list(value) == [None]):
        return [None]
    stored = isinstance(value, (list, tuple)) and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value)
    if stored:
        value = dict(value)  # the (name, args) pairs a spec stores, each argument one normalised value
    if not isinstance(value, Mapping) or not value:
        raise ValidationError(
            f"`variants` must be a mapping of names to argument groups, e.g. {{'soft': {{'strength': 0.3}}, "
            f"'strong': {{'strength': 0.8, 'guidance_scale': 9}}}}, got {value!r}"
        )
    out = []
    for name, args in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ValidationError(f"`variants` names must be non-empty strings, got {name!r}")
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ValidationError(f"`variants` {name!r} must be a mapping of arguments, got {args!r}")
        clean = {}
        for arg, raw in args.items():
            if stored:
                raw = [raw]  # already one value (a LoRA combination, a pair): not an axis of its items
            if arg in _VARIANT_AXES:
                values = normalise_axis(arg, raw)
            elif isinstance(arg, str) and arg in call_parameters():
                values = normalise_param(arg, raw)
            else:
                known = [*_VARIANT_AXES, *call_parameters()]
                raise ValidationError(
                    f"`variants` {name!r} sets `{arg}`={raw!r}, which a variant can't set{suggest(arg, known)}: a "
                    f"variant sets axes ({', '.join(_VARIANT_AXES)}) or pipeline call keywords, one value each"
                )
            if len(values) != 1:
                raise ValidationError(
                    f"`variants` {name!r} sets `{arg}` to {len(values)} values {raw!r}; a variant sets one value "
                    f"per key (wrap a list-valued argument in one more list)"
                )
            clean[arg] = values[0]
        out.append((name, FrozenDict(clean)))
    return out


_AXIS_VALUES = {
    "model": lambda key, value: _texts(key, value, allow_none=False, allow_empty=False),
    "prompt": lambda key, value: _texts(key, value, allow_none=False),
    "image": _images,
    "negative_prompt": lambda key, value: _texts(key, value, allow_none=True),
    "scheduler": _schedulers,
    "strength": _strengths,
    "guidance_scale": _non_negative,
    "num_inference_steps": _step_counts,
    "seed": _seeds,
    "lora": _loras,
    "lora_scale": _lora_scales,
    "ip_adapter": _ip_adapters,
    "ip_adapter_scale": _non_negative,
    "ip_adapter_image": _ip_adapter_images,
    "prompt_sr": _prompt_sr,
    "variants": _variants,
}
assert set(_AXIS_VALUES) == set(AXES)  # the axes and their checks change together


def normalise_axis(key, value) -> tuple:
    """One axis' raw value (a value, a list, a range) -> a tuple of clean, distinct values.

    Example:
        >>> normalise_axis("strength", "0.3-0.9 (+0.2)")
        (0.3, 0.5, 0.7, 0.9)
    """
    if value is None and key in _REQUIRED:
        raise ValidationError(_REQUIRED[key])
    return _unique(key, _AXIS_VALUES[key](key, value))


# --------------------------------------------------------------------------------------------
# call keywords and options


def normalise_param(key, value) -> tuple:
    """One pipeline call keyword's raw value -> a tuple of clean, distinct, frozen values.

    Numbers must be finite (NaN and inf are refused, bools are no numbers), sizes positive
    integers, and the keywords of `PARAM_BOUNDS` inside their bounds.

    Example:
        >>> normalise_param("eta", [0.0, 0.5])
        (0.0, 0.5)
    """
    kind, _ = call_parameters()[key]
    if kind in ("float", "int"):
        values = []
        for item in _items(key, value):
            values.extend([None] if item is None else _numbers(key, [item], integer=kind == "int", allow_lists=True))
        for v in values:
            _check_number(key, v)
    elif kind == "bool":
        values = _items(key, value)
        for v in values:
            if v is not None and not isinstance(v, bool):
                raise ValidationError(f"`{key}` must be True or False, got {v!r}")
    elif kind == "str":
        values = _texts(key, value, allow_none=True)
    else:
        values = _items(key, value)
    if key in PAIR_ARGUMENTS:
        for v in values:
            _check_pair(key, v)
    if key == "clip_skip" and any(v is not None for v in values):
        _check_clip_skip(values)
    return _unique(key, [freeze(key, v) for v in values])


def _check_number(key, value) -> None:
    """A numeric keyword's value (a number, None, or a list of numbers): finite, within its bounds."""
    if value is None:
        return
    if isinstance(value, tuple):
        if key in _SCALAR_ONLY:
            raise ValidationError(f"`{key}` takes one number, got the list {list(value)!r}")
        for item in value:
            _check_number(key, item)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"`{key}` must be a finite number, got {value!r}")
    low, high = PARAM_BOUNDS.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        what = "an integer" if isinstance(value, int) else "a number"
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValidationError(f"`{key}` must be {what} {bounds}, got {_shown(value)}")


def _check_pair(key, value) -> None:
    """SDXL's (height, width) and (top, left) conditioning pairs: two whole numbers >= the lowest."""
    if value is None:
        return
    low = PAIR_ARGUMENTS[key]
    pair = list(value) if isinstance(value, (list, tuple)) else None
    if pair is None or len(pair) != 2 or not all(is_number(v) and float(v).is_integer() and v >= low for v in pair):
        name = "[top, left]" if "crops" in key else "[height, width]"
        raise ValidationError(f"`{key}` must be {name}, two integers >= {low}, got {value!r}")


@functools.lru_cache(maxsize=1)
def clip_skip_broken() -> str | None:
    """Why `clip_skip` fails with the installed libraries, or None when it works.

    diffusers' SD 1.x/2.x `encode_prompt` applies `text_encoder.text_model.final_layer_norm` to
    the skipped layer's output; a transformers whose `CLIPTextModel` has no `text_model` makes
    every such call fail. A feature check, not a version list, so `clip_skip` works again as
    soon as either side changes. (Imports torch and transformers, only when `clip_skip` is set.)
    """
    import importlib.metadata as md

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
    reason = clip_skip_broken()
    if reason is not None:
        shown = values[0] if len(values) == 1 else list(values)
        raise ValidationError(f"`clip_skip`={shown!r} can't be used: {reason}; remove `clip_skip` from the spec "
                              f"until a transformers/diffusers pair supports it")


def normalise_option(key, value):
    """One `load_pipeline` option as a spec stores it (a torch dtype by its name); `load_pipeline`
    checks the value itself."""
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        value = str(value).replace("torch.", "")
    return freeze(key, value)


def check_value(key, value) -> None:
    """The checks a spec runs on one key, without building a spec.

    Example:
        >>> check_value("strength", 1.5)
        Traceback (most recent call last):
        ValidationError: `strength` must be in [0, 1], got 1.5
    """
    if key in AXES:
        normalise_axis(key, value)
    elif key in call_parameters():
        normalise_param(key, value)
    elif key in option_names():
        normalise_option(key, value)
    elif key == "name" and value is not None and not isinstance(value, str):
        raise ValidationError(f"`name` must be a string or None, got {value!r}")
    elif key in ("compel", "exact") and not isinstance(value, bool):
        raise ValidationError(f"`{key}` must be true or false, got {value!r}")


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
        raise ValidationError(unknown_key_message(key, text))
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
    check_value(key, parsed)
    return key, parsed


# --------------------------------------------------------------------------------------------
# sizes against a loaded pipeline


def size_multiple(pipe) -> int | None:
    """The multiple a call's `height` and `width` must be for `pipe` to give exactly that size.

    Its model family's answer (`Family.size_multiple`): the factor the pipeline's image processor
    rounds every size down to (the VAE's `vae_scale_factor`: 8 for Stable Diffusion and SDXL, 4
    for the x4 upscaler), times what its denoiser needs besides (Kandinsky 2.2's UNet); None
    when the pipeline has no such factor.
    """
    return family_of(pipe).size_multiple(pipe)


def check_sizes(pipe, model, call: Mapping) -> None:
    """`height` and `width` of a call must be multiples of the pipeline's VAE factor.

    Otherwise diffusers rounds them down silently (`height: 63` gives 56 px); checked after the
    pipeline is loaded and before any cell runs, with the two nearest sizes that work.

    Example:
        >>> check_sizes(lab.load_pipeline("tiny/sd15"), "tiny/sd15", {"height": 63})
        Traceback (most recent call last):
        ValidationError: `height` must be a multiple of 8 for StableDiffusionImg2ImgPipeline (model 'tiny/sd15'), got 63 (use 56 or 64)
    """
    factor = size_multiple(pipe)
    if factor is None:
        return
    for name in SIZE_ARGUMENTS:
        value = call.get(name)
        if value is None or not is_number(value) or value % factor == 0:
            continue
        below = int(value // factor * factor)
        nearest = f"{below} or {below + factor}" if below > 0 else f"{below + factor}"
        raise ValidationError(
            f"`{name}` must be a multiple of {factor} for {type(pipe).__name__} (model {str(model)!r}), "
            f"got {value!r} (use {nearest})"
        )
