"""Model families: one module per kind of pipeline, as diffusers keeps `pipelines/<family>/`.

Each module defines one `FAMILY`, an instance of a `base.Family` subclass with the five parts of
the interface (detect, load, tiny twin, knobs, per-step batching pieces; see `base`). The rest
of the package asks the lookups below instead of naming pipeline classes:

- `family_of(pipe)` / `family_of_class(name)`: the family of a loaded pipeline or a class name
  (`base.GENERIC`, the defaults, when none covers it);
- `family_of_tiny(name)`: the family that builds a tiny model;
- `family_of_checkpoint(model_type)`: the family of a single-file layout (diffusers' name);
- `tiny_models()`, `call_pipelines()`: every family's tiny models and call-keyword pipelines;
- `entries()` / `entry(key)`: the key table, one `Entry` per image-to-image pipeline (the rows of
  `lab.families()`, the names of `tiny/<key>` and `bench_sweep.py --family <key>`);
- `tiny_call(name)`: the call arguments a tiny twin's cells always get (small working sizes).

Adding a family: write `families/<name>.py` with its `FAMILY`, and add its module name to
`REGISTRY` below. Nothing here imports torch or diffusers.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import ValidationError
from .base import GENERIC, Entry, Family, LoadContext, StepBatching, TinyModel

# The registry: one line per family module, in lookup order (the first family that detects a
# pipeline class is its family) and in the order of TINY_MODELS.
REGISTRY = (
    "sd",
    "sdxl",
    "kandinsky22",
    "lcm",
    "kandinsky",
    "sd3",
    "kandinsky3",
    "deepfloyd_if",
    "flux",
    "qwenimage",
    "zimage",
    "flux2",
    "controlnet",
    "upscalers",
)

FAMILIES: tuple[Family, ...] = tuple(import_module(f"{__name__}.{name}").FAMILY for name in REGISTRY)

__all__ = [
    "FAMILIES", "GENERIC", "REGISTRY", "Entry", "Family", "LoadContext", "StepBatching", "TinyModel",
    "by_key", "call_pipelines", "entries", "entry", "family_of", "family_of_checkpoint", "family_of_class",
    "family_of_tiny", "tiny_call", "tiny_models",
]


def by_key(key: str) -> Family:
    """The registered family with this `key` (e.g. "sd", "kandinsky22")."""
    for family in FAMILIES:
        if family.key == key:
            return family
    raise ValidationError(f"`key` must be one of {[f.key for f in FAMILIES]}, got {key!r}")


def family_of_class(class_name: str) -> Family:
    """The family covering the diffusers pipeline class `class_name`; `GENERIC` when none does.

    Example:
        >>> family_of_class("StableDiffusionXLImg2ImgPipeline").key
        'sdxl'
    """
    for family in FAMILIES:
        if family.detect(class_name):
            return family
    return GENERIC


def family_of(pipe) -> Family:
    """The family of a loaded pipeline (by its class); `GENERIC` when none covers it."""
    return family_of_class(type(pipe).__name__)


def family_of_tiny(name: str) -> Family:
    """The family that builds tiny model `name` (e.g. "tiny/sdxl-refiner" -> the SDXL family)."""
    for family in FAMILIES:
        if any(model.name == name for model in family.tiny_models):
            return family
    raise ValidationError(f"`name` must be one of {sorted(tiny_models())}, got {name!r}")


def family_of_checkpoint(model_type: str) -> Family | None:
    """The family whose single-file layout diffusers calls `model_type` ("v1", "xl_base", ...), or None."""
    for family in FAMILIES:
        if family.checkpoint_types and str(model_type).startswith(family.checkpoint_types):
            return family
    return None


def tiny_models() -> dict[str, str]:
    """Every family's tiny models: name -> description, in registry order."""
    return {model.name: model.description for family in FAMILIES for model in family.tiny_models}


def call_pipelines() -> dict[str, str]:
    """The pipelines whose `__call__` keywords a spec may set: class -> its file in diffusers."""
    return {cls: path for family in FAMILIES for cls, path in family.call_pipelines.items()}


def entries() -> tuple[Entry, ...]:
    """The key table: every family's entries, in registry order (one per image-to-image pipeline)."""
    return tuple(e for family in FAMILIES for e in family.entries)


def entry(key: str) -> Entry:
    """The key table's entry `key` ("flux-kontext", "sd15", ...)."""
    for e in entries():
        if e.key == key:
            return e
    raise ValidationError(f"`family` must be one of {[e.key for e in entries()]}, got {key!r}")


def tiny_call(name: str) -> dict:
    """The call arguments every cell of tiny model `name` gets (e.g. Kontext's `max_area`), or {}."""
    for family in FAMILIES:
        for model in family.tiny_models:
            if model.name == name:
                return dict(model.call)
    return {}
