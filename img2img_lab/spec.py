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

The pieces live by concept: `vocab` (the names), `ranges` (numbers and ranges as written),
`validation` (which keys exist and the checks on each value), `cells` (the grid's points and their
content keys), `frozen` (read-only plain data); this module is the spec itself and its YAML.
Pure: it imports neither torch nor diffusers.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from .cells import KEY_LENGTH, KEY_VERSION, Cell, expand_cells, key_options, lora_plain, tiny_size_note
from .errors import ValidationError
from .frozen import FrozenDict, plain
from .ranges import MAX_RANGE, expand_range
from .validation import (
    CALL_PIPELINES,
    call_parameters,
    check_value,
    known_keys,
    normalise_axis,
    normalise_option,
    normalise_param,
    option_names,
    parse_set,
    route,
)
from .vocab import (
    ADAPTER_AXES,
    AXES,
    CALL_AXES,
    DEFAULTS,
    LABEL_AXES,
    MAX_SEED,
    PIXEL_OPTIONS,
    PROMPT_TEXTS,
    SCHEDULER_NAMES,
    SETTINGS,
    effective_steps,
    suggest,
)

__all__ = [  # the names other modules and users read from here
    "AXES", "CALL_AXES", "CALL_PIPELINES", "DEFAULTS", "KEY_LENGTH", "KEY_VERSION", "MAX_RANGE", "MAX_SEED",
    "PIXEL_OPTIONS", "SCHEDULER_NAMES", "SETTINGS", "Cell", "SweepSpec", "call_parameters", "check_value",
    "expand_range", "key_options", "known_keys", "option_names", "parse_set", "tiny_size_note",
]


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




def _variant_plain(key, value):
    """A variant's value as YAML holds it: one value (a list wrapped once more, as in a spec)."""
    value = lora_plain(value) if key == "lora" else plain(value)
    return [value] if isinstance(value, list) else value


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
        strength: in [0, 1]; default None: the pipeline's own (0.8 for SD 1.5, 0.3 for SDXL; Kontext
            and Qwen-Image-Edit take none). Each row records the value used.
        guidance_scale: >= 0; default None: the pipeline's own (7.5 SD 1.5, 5.0 SDXL, 3.5 FLUX.1).
        negative_prompt: a string or None (default).
        seed: an integer in [0, 2**64 - 1]; default 0.
        num_inference_steps: an integer >= 1; default None: the pipeline's own (50 SD, 28 FLUX.1,
            4 LCM). Every cell must run at least one
            denoising step: `int(num_inference_steps * strength) >= 1`.
        scheduler: a name from `SCHEDULER_NAMES`, or None (default) for the model's own.
        lora: LoRAs to load into the model (diffusers' `load_lora_weights`, then `set_adapters`).
            Like every axis, a list is one cell per item: `lora: [null, a, b]` is the base model,
            then LoRA a, then LoRA b. An item is None (`null` in YAML, or "none": the base model,
            the default), a source (hub id, `owner/name/file.safetensors`, folder, `.safetensors`
            file, `tiny/sd15-lora`), or several LoRAs at once: a list of sources inside the list
            (`[[a, b]]`) or a mapping source -> weight (`{a: 0.8, b: 0.5}`). Each LoRA is loaded
            once per model, before its first cell; switching between cells does not reload the model.
        lora_scale: a number multiplying every LoRA's weight (0 gives the base model's image),
            or a mapping source -> scale per LoRA; default None: the weights as given (1.0). The
            base model's cells (lora None) do not depend on it: each scale's base cell is the same
            picture, computed once (its row says `same_image_as`).
        ip_adapter: an IP-Adapter (diffusers' `load_ip_adapter`): a folder or `.safetensors`/`.bin`
            file with an `image_encoder/` folder beside it, `owner/name/sub/file.safetensors` on the
            Hub, or `tiny/sd15-ip-adapter`; default None.
        ip_adapter_scale: `set_ip_adapter_scale` (>= 0); default None: 1.0, diffusers' default.
        ip_adapter_image: the reference image(s) for the IP-Adapter, as `image`.
        prompt_sr: prompt search/replace as in AUTOMATIC1111's X/Y/Z plot: `["jungle", "desert"]`
            makes one cell per term, each replacing "jungle" in every prompt text (prompt,
            prompt_2, negative prompts) where it occurs; the first term must occur in one of them.
        variants: named groups of arguments as one axis with readable labels, e.g.
            `{"soft": {"strength": 0.3, "guidance_scale": 4}, "strong": {"strength": 0.8}}`: each
            variant sets axes or call keywords (one value each) that the spec does not sweep; a
            value it sets replaces the spec's single value for that variant's cells.
        params: any other keyword of the pipeline call (see `call_parameters`), fixed or swept,
            e.g. `{"eta": 0.0, "controlnet_conditioning_scale": [0.5, 1.0]}`. They may also be
            given flat, as in YAML: `SweepSpec(..., eta=0.0, offload="model")` routes call keywords
            to `params` and load_pipeline options to `options`. Numbers must be finite (not bools);
            `height`/`width` are whole pixels in [1, 16384], and `run_sweep` checks them against
            the model's VAE factor (a multiple of 8 for Stable Diffusion) before any cell runs.
        options: `load_pipeline` options, not swept, e.g. `{"dtype": "float16", "offload": "model"}`.
        name: a title for reports.
        compel: weight prompts with compel (`"a (red)1.3 cat"`, `"cat++"`): prompts and negative
            prompts are encoded by `prompts.encode_weighted` and passed as embeddings; default False.
        exact: the reproducibility mode (`run_sweep(exact=...)`, `--exact`): one pipeline call per
            cell under deterministic algorithms, so every image equals its snippet bit for bit at
            the same thread count; recorded per row. Default False (batched where possible, within
            `vocab.BATCHED_TOLERANCE`).

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
    lora: Any = DEFAULTS["lora"]
    lora_scale: Any = DEFAULTS["lora_scale"]
    ip_adapter: Any = DEFAULTS["ip_adapter"]
    ip_adapter_scale: Any = DEFAULTS["ip_adapter_scale"]
    ip_adapter_image: Any = DEFAULTS["ip_adapter_image"]
    prompt_sr: Any = DEFAULTS["prompt_sr"]
    variants: Any = DEFAULTS["variants"]
    params: Mapping[str, Any] = field(default_factory=FrozenDict)
    options: Mapping[str, Any] = field(default_factory=FrozenDict)
    name: str | None = None
    compel: bool = False
    exact: bool = False

    def __init__(self, **keys):
        # Flat keys, as in YAML: axes and settings are fields, any other pipeline call keyword goes
        # to `params` and any load_pipeline option to `options` (unknown keys: one clear error).
        routed = route(keys)
        for f in fields(self):
            if f.name in routed:
                value = routed[f.name]
            else:
                value = f.default_factory() if f.default is MISSING else f.default
            object.__setattr__(self, f.name, value)
        self.__post_init__()

    def __post_init__(self):
        # 1. axes: each a tuple of clean, distinct values
        for key in AXES:
            object.__setattr__(self, key, normalise_axis(key, getattr(self, key)))
        # 2. call keywords and loading options
        object.__setattr__(self, "params", self._checked_params())
        object.__setattr__(self, "options", self._checked_options())
        # 3. settings
        if self.name is not None and not isinstance(self.name, str):
            raise ValidationError(f"`name` must be a string or None, got {self.name!r}")
        for setting in ("compel", "exact"):
            if not isinstance(getattr(self, setting), bool):
                raise ValidationError(f"`{setting}` must be true or false, got {getattr(self, setting)!r}")
        # 4. axes that go together: an adapter's settings need the adapter, a search term a prompt
        self._check_adapters()
        self._check_prompt_sr()
        self._check_variants()
        # 5. per cell: every (num_inference_steps, strength) pair must denoise at least once
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

    def _checked_params(self) -> FrozenDict:
        params = self._mapping("params", self.params)
        for key in params:
            if key not in call_parameters():
                if key in AXES:
                    hint = f" (it is an axis: pass SweepSpec({key}=...))"
                elif key in option_names():
                    hint = " (it is a load_pipeline option: put it in `options`)"
                else:
                    hint = suggest(key, call_parameters())
                raise ValidationError(f"`params` has no pipeline call keyword `{key}`={params[key]!r}{hint}")
        return FrozenDict({k: normalise_param(k, params[k]) for k in sorted(params)})

    def _checked_options(self) -> FrozenDict:
        options = self._mapping("options", self.options)
        for key in options:
            if key not in option_names():
                hint = " (it is an axis of the spec: set `scheduler` directly)" if key == "scheduler" else ""
                raise ValidationError(
                    f"`options` has no load_pipeline option `{key}`={options[key]!r}"
                    f"{hint or suggest(key, option_names())}"
                )
        return FrozenDict({k: normalise_option(k, options[k]) for k in sorted(options)})

    def _variant_values(self, key) -> list:
        """The values `key` takes in this spec: the axis' (or param's) own and any a variant sets."""
        own = getattr(self, key) if key in AXES else self.params.get(key, (None,))
        values = list(own)
        for variant in self.variants:
            if variant is not None and key in variant[1] and variant[1][key] not in values:
                values.append(variant[1][key])
        return values

    def _check_adapters(self):
        loras = [v for v in self._variant_values("lora") if v is not None]
        if not loras and any(v is not None for v in self._variant_values("lora_scale")):
            raise ValidationError(f"`lora_scale`={list(self.lora_scale)!r} is set but `lora` is not: name a LoRA "
                                  f"(e.g. lora: tiny/sd15-lora), or drop lora_scale")
        sources = {s for combo in loras for s, _ in combo}
        for scale in self._variant_values("lora_scale"):
            for source in (scale if isinstance(scale, Mapping) else ()):
                if source not in sources:
                    raise ValidationError(f"`lora_scale` names {source!r}, which no `lora` value loads "
                                          f"(the LoRAs: {sorted(sources)}){suggest(source, sources)}")
        adapters = [v for v in self._variant_values("ip_adapter") if v is not None]
        for key in ("ip_adapter_scale", "ip_adapter_image"):
            if not adapters and any(v is not None for v in self._variant_values(key)):
                raise ValidationError(f"`{key}` is set but `ip_adapter` is not: name an IP-Adapter "
                                      f"(e.g. ip_adapter: tiny/sd15-ip-adapter), or drop {key}")
        if adapters and None in self._variant_values("ip_adapter_image"):
            setters = [name for name, args in (v for v in self.variants if v is not None) if "ip_adapter" in args]
            where = f" (set by variant {setters[0]!r})" if setters and self.ip_adapter == (None,) else ""
            raise ValidationError(f"`ip_adapter`={adapters[0]!r}{where} needs a reference picture: set "
                                  f"`ip_adapter_image` (a sample name, path or URL, or a list of them to sweep)")

    def _prompt_texts(self) -> list[str]:
        texts = []
        for key in PROMPT_TEXTS:
            texts.extend(v for v in self._variant_values(key) if isinstance(v, str))
        return texts

    def _check_prompt_sr(self):
        if self.prompt_sr == (None,):
            return
        term = self.prompt_sr[0]
        texts = self._prompt_texts()
        if not any(term in text for text in texts):
            shown = ", ".join(repr(t) for t in texts[:4]) + (", ..." if len(texts) > 4 else "")
            raise ValidationError(
                f"`prompt_sr` term {term!r} occurs in none of the prompts ({shown}): the first term is the one "
                f"every other term replaces (AUTOMATIC1111's Prompt S/R), so it must be written in a prompt"
            )

    def _check_variants(self):
        swept = set(self.swept)
        for variant in self.variants:
            if variant is None:
                continue
            name, args = variant
            clash = sorted(set(args) & swept)
            if clash:
                values = getattr(self, clash[0]) if clash[0] in AXES else self.params.get(clash[0], ())
                shown = [lora_plain(v) for v in values] if clash[0] == "lora" else [plain(v) for v in values]
                raise ValidationError(
                    f"`variants` {name!r} sets `{clash[0]}`, which the spec also sweeps over {shown!r}: a variant "
                    f"may set only arguments with one value in the spec (move `{clash[0]}` into every variant instead)"
                )

    def _check_effective_steps(self):
        # With `denoising_start` (SDXL refiner style) the schedule ignores strength.
        starts = self._variant_values("denoising_start")
        for steps, strength, start in itertools.product(self._variant_values("num_inference_steps"),
                                                        self._variant_values("strength"), starts):
            runs = effective_steps({"num_inference_steps": steps, "strength": strength})
            if start is None and runs is not None and runs < 1:  # None: the pipeline's default, checked when loaded
                raise ValidationError(
                    f"cell strength={strength!r}, num_inference_steps={steps!r} runs "
                    f"int({steps}*{strength!r})={runs} denoising steps; diffusers would "
                    f"silently return the init image (SD 1.5) or fail deep inside (SDXL): raise `strength` "
                    f"or `num_inference_steps` so that their product is at least 1"
                )

    # ---- the grid

    def axis_values(self) -> list[tuple[str, tuple]]:
        """`(name, values)` of every axis in cell order: the spec's axes, then the params by name."""
        return [(k, getattr(self, k)) for k in AXES] + list(self.params.items())

    @property
    def swept(self) -> tuple[str, ...]:
        """Names of the axes with more than one value, in cell order."""
        return tuple(k for k, values in self.axis_values() if len(values) > 1)

    def __len__(self) -> int:
        return math.prod(len(values) for _, values in self.axis_values())

    def cells(self) -> list[Cell]:
        """Expand the grid into cells.

        The order is `itertools.product` over model, image, prompt, negative_prompt, seed,
        num_inference_steps, scheduler, strength, guidance_scale, then the params by name: the
        last axis varies fastest, so with `strength=[a, b]` and `guidance_scale=[x, y]` the cells
        are (a, x), (a, y), (b, x), (b, y). A tiny model in a spec without a size runs at
        `TINY_SIZE` (see `tiny_size_note`).

        Returns:
            A list of `Cell`, `len(spec)` long.

        Example:
            >>> [(c.call["strength"], c.call["guidance_scale"]) for c in spec.cells()]
            [(0.4, 5.0), (0.4, 7.5), (0.8, 5.0), (0.8, 7.5)]
        """
        return expand_cells(self)

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
        return cls(**route({**data, **overrides}))

    def to_dict(self) -> dict:
        """The spec as flat, YAML-ready builtins: a lone value as a scalar, several as a list.

        A lone list value is wrapped (`[[1024, 1024]]`) so that reading it back gives the same spec.
        """
        def flat(values):
            if len(values) == 1:
                value = plain(values[0])
                return [value] if isinstance(value, list) else value
            return [plain(v) for v in values]

        out: dict[str, Any] = {"name": self.name} if self.name is not None else {}
        if self.compel:
            out["compel"] = True
        if self.exact:
            out["exact"] = True
        for k, v in self.axis_values():
            if k in (*ADAPTER_AXES, *LABEL_AXES) and v == (None,):
                continue  # not used: left out, so specs without them read as before
            if k == "lora":
                out[k] = flat(tuple(lora_plain(combo) for combo in v))
            elif k == "variants":
                out[k] = {name: {a: _variant_plain(a, x) for a, x in args.items()} for name, args in v}
            else:
                out[k] = flat(v)
        out.update({k: plain(v) for k, v in self.options.items()})
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
        for name in ("image", "ip_adapter_image"):
            for value in getattr(self, name):
                if value is not None and not isinstance(value, str):
                    raise ValidationError(
                        f"`{name}` {value!r} is an in-memory picture; save it and give its path to write the spec as YAML"
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
        return type(self)(**route({**current, **changes}))

