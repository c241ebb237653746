"""Knobs: which call arguments each pipeline of a sweep takes, and what it runs with where the spec is silent.

A spec names call arguments in diffusers' names (`strength`, `true_cfg_scale`, `prompt_3`, ...);
the pipelines of one sweep need not take the same ones (FLUX.1 Kontext has no `strength`, SD 1.5
no `true_cfg_scale`). Three rules, applied before any cell runs:

1. **Silent means the pipeline's default.** An argument the spec leaves at None (`strength`,
   `guidance_scale`, `num_inference_steps` by default) runs with the family's default
   (`Family.call_defaults`, e.g. FLUX.1's distilled guidance 3.5) or else the pipeline's
   `__call__` default (SDXL strength 0.3); an argument the pipeline lacks is left out. The row
   records the value used and names the arguments so filled (`pipeline_defaults`).
2. **An axis some model takes applies there only.** A value set for an argument that only some
   models of the sweep take is passed to those and recorded for the others as not applied
   (`not_applied` column), never dropped silently.
3. **An axis no model takes is an error** naming the axis, the value and the families, with what
   to use instead (`Family.knob_hints`); so is a value every model would ignore
   (`Family.knob_problem`, e.g. a negative prompt on FLUX.1 without `true_cfg_scale` > 1).

`check_knobs` runs rule 2 and 3 over a sweep's calls per pipeline class (before loading for tiny
models, whose classes are known, and again once every model is loaded); `resolve_call` applies
rule 1 and 2 to one call of a loaded pipeline.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import ValidationError
from .families import entries, family_of_class, tiny_call
from .validation import pipeline_call_arguments
from .vocab import SIZE_ARGUMENTS, is_tiny

# Arguments every pipeline gets one way or another: the runner resizes the init image for
# pipelines without height/width (validation.check_sizes checks them against each model).
ALWAYS_TAKEN = frozenset(SIZE_ARGUMENTS)
# Arguments the runner passes itself, never from a spec.
RUNNER_ARGUMENTS = frozenset({"image", "generator", "output_type", "callback_on_step_end", "callback", "callback_steps"})


def taken(class_name: str) -> frozenset:
    """The keywords a diffusers pipeline class's `__call__` names (its `**kwargs` aside)."""
    return frozenset(pipeline_call_arguments(class_name))


def signature_defaults(pipe_or_class) -> dict:
    """`{argument: default}` of a pipeline's `__call__` (a class or an instance)."""
    cls = pipe_or_class if isinstance(pipe_or_class, type) else type(pipe_or_class)
    params = inspect.signature(cls.__call__).parameters
    return {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}


def pipeline_default(pipe, name: str):
    """What `pipe` runs with when `name` is not passed: its family's default, else its signature's."""
    class_name = type(pipe).__name__
    family_defaults = family_of_class(class_name).call_defaults.get(class_name, {})
    if name in family_defaults:
        return family_defaults[name]
    return signature_defaults(pipe).get(name)


@dataclass
class Resolved:
    """One call as the loaded pipeline gets it, and what its row records about that."""

    call: dict                                   # the keywords passed to the pipeline (image aside)
    used: dict = field(default_factory=dict)     # argument -> the pipeline default it ran with
    not_applied: tuple = ()                      # arguments set by the spec that this pipeline doesn't take


def resolve_call(pipe, call: Mapping[str, Any]) -> Resolved:
    """Rule 1 and 2 for one call: fill None arguments with `pipe`'s defaults, leave out what it lacks.

    Example:
        >>> resolve_call(flux_kontext, {"prompt": "a cat", "strength": None, "guidance_scale": None}).call
        {'prompt': 'a cat', 'guidance_scale': 3.5}
    """
    accepted = taken(type(pipe).__name__) | ALWAYS_TAKEN
    out, used, not_applied = {}, {}, []
    class_name = type(pipe).__name__
    ignored = family_of_class(class_name).knob_problem(class_name, call, getattr(pipe, "config", None)) or {}
    for name, value in call.items():
        if name in ignored and value is not None:
            not_applied.append(name)  # passed as given (the pipeline ignores it), recorded as not applied
        if name not in accepted:
            if value is not None:
                not_applied.append(name)
            continue
        if value is None:
            default = pipeline_default(pipe, name)
            if default is None:
                continue  # passing nothing is the pipeline's default
            used[name] = out[name] = default
            continue
        out[name] = value
    return Resolved(out, used, tuple(not_applied))


def known_class(model, options: Mapping[str, Any]) -> str | None:
    """The img2img class `model` will load as, when that is known without loading it: a tiny twin
    (through the key table: `tiny/sd15` with `enable_pag=True` is the PAG pipeline), else None."""
    if not is_tiny(str(model)):
        return None
    wanted = {k: options.get(k) for k in ("enable_pag", "controlnet") if options.get(k) not in (None, False)}
    for entry in entries():
        if entry.tiny == str(model) and dict(entry.load) == wanted:
            return entry.pipeline
    return None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(models: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{model!r} ({family_of_class(cls).title}, {cls})" for model, cls in models)


def check_knobs(calls: Mapping[str, tuple[str, list]], configs: Mapping[str, Mapping] | None = None) -> dict:
    """Rule 2 and 3 over a sweep, before any cell runs.

    Args:
        calls: model -> (its pipeline class name, the call keywords of its cells).
        configs: model -> its loaded pipeline's config, where loaded (what `knob_problem` may read).

    Returns:
        model -> the set of arguments its cells record as not applied because another model of
        the sweep takes them (a value its family's `knob_problem` says it ignores is recorded per
        cell by `resolve_call`).

    Raises:
        ValidationError: an argument set in the spec that no model of the sweep takes (or every
            one would ignore), naming the axis, the value, the families and what to use instead.
    """
    set_names: dict[str, Any] = {}  # argument -> one value the spec sets for it
    for model, (_, cell_calls) in calls.items():
        own = tiny_call(str(model))  # a twin's own small-size options are its own, not the sweep's axes
        for call in cell_calls:
            for name, value in call.items():
                if value is not None and name not in RUNNER_ARGUMENTS and name not in own and name not in set_names:
                    set_names[name] = value
    skipped: dict[str, set] = {model: set() for model in calls}
    for name, value in set_names.items():
        takers = [m for m, (cls, _) in calls.items() if name in ALWAYS_TAKEN or name in taken(cls)]
        if not takers:
            hints = {family_of_class(cls).knob_hints.get(name) for _, (cls, _) in calls.items()} - {None}
            only = "the only model" if len(calls) == 1 else "any model"
            raise ValidationError(
                f"`{name}`={_shown(value)} is not an argument of {only} of this sweep: "
                f"{_where((m, cls) for m, (cls, _) in calls.items())}"
                + (f"; {'; '.join(sorted(hints))}" if hints else "; remove it from the spec or add a model that takes it")
            )
        for model, (cls, _) in calls.items():
            if model not in takers:
                skipped[model].add(name)
    # values a taker would ignore (FLUX.1's negative prompt without true CFG): fine where another
    # cell of the sweep uses them (each such cell records it as not applied), an error where none does
    problems: dict[str, dict[str, str]] = {}
    used: set = set()
    for model, (cls, cell_calls) in calls.items():
        family, accepted = family_of_class(cls), taken(cls) | ALWAYS_TAKEN
        for call in cell_calls:
            ignored = family.knob_problem(cls, call, (configs or {}).get(model)) or {}
            for name, value in call.items():
                if value is None or name not in accepted:
                    continue
                if name in ignored:
                    problems.setdefault(name, {}).setdefault(model, ignored[name])
                else:
                    used.add(name)
    for name, by_model in problems.items():
        if name not in used:
            raise ValidationError(f"`{name}`={_shown(set_names.get(name))}: " + "; ".join(
                f"{why} (model {model!r})" for model, why in by_model.items()))
    return skipped
