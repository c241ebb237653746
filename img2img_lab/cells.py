"""Cells: the points of a sweep's grid, each one pipeline call with a content key.

`expand_cells(spec)` is the product of a spec's axes in a fixed order; each `Cell` holds the
call keywords, the seed, the scheduler and the loading options that change pixels, and its
`key()` is the sha256 of their canonical JSON with the init image's content hash. Pure Python.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ValidationError
from .families import tiny_call
from .frozen import KEY_LENGTH, FrozenDict, content_key, plain, thaw
from .validation import call_parameters
from .vocab import (CALL_AXES, DEFAULT_OPTIONS, DTYPES, PIXEL_OPTIONS, PROMPT_TEXTS, TINY_SIZE, effective_steps,
                    is_tiny)

KEY_VERSION = 1  # bump when the key's payload changes (old folders then recompute, never mix)


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
    swept: Mapping[str, Any] = field(default_factory=FrozenDict)
    options: Mapping[str, Any] = field(default_factory=FrozenDict)
    compel: bool = False
    lora: tuple | None = None  # ((source, weight), ...) or None: the base model
    lora_scale: Any = None  # a number, a FrozenDict source -> scale, or None (the weights as given)
    ip_adapter: str | None = None
    ip_adapter_scale: float | None = None
    ip_adapter_image: Any = None  # the reference picture's source, as `image`
    labels: Mapping[str, Any] = field(default_factory=FrozenDict)  # prompt_sr / variants: the value naming this cell

    @property
    def lora_weights(self) -> dict:
        """`{source: weight}` as `set_adapters` gets them: each LoRA's weight times its scale."""
        if self.lora is None:
            return {}
        scale = self.lora_scale
        def factor(source):
            if isinstance(scale, Mapping):
                return float(scale.get(source, 1.0))
            return 1.0 if scale is None else float(scale)
        return {source: weight * factor(source) for source, weight in self.lora}

    @property
    def effective_steps(self) -> int:
        """`int(num_inference_steps * strength)`: the denoising steps diffusers' img2img runs."""
        return effective_steps(self.call)

    def as_dict(self) -> dict:
        """The cell flat, for a table row or PNG text: model, image, seed, scheduler and the call."""
        return {"model": self.model, "image": self.image, "seed": self.seed, "scheduler": self.scheduler,
                **plain(dict(self.call))}

    def adapter_row(self) -> dict:
        """What a row records of the cell's adapters and labels, in the spec's names: `lora` as a
        label ("a", "a + b×0.5"), `lora_scale`, `ip_adapter`, `ip_adapter_scale`, `prompt_sr`,
        `variants`; only the ones the cell uses (a sweep without them adds no columns). A scale left
        unset is recorded as the 1.0 it runs with."""
        row = {}
        if self.lora is not None:
            row["lora"] = lora_label(self.lora)
            row["lora_scale"] = 1.0 if self.lora_scale is None else lora_scale_value(self.lora_scale)
            row["lora_weights"] = json.dumps(self.lora_weights)  # in the spec's order: set_adapters' order
        elif self.lora_scale is not None:
            row.update(lora=None, lora_scale=lora_scale_value(self.lora_scale))
        if self.ip_adapter is not None:
            row.update(ip_adapter=self.ip_adapter,
                       ip_adapter_scale=1.0 if self.ip_adapter_scale is None else self.ip_adapter_scale)
        elif self.ip_adapter_scale is not None or self.ip_adapter_image is not None:
            row.update(ip_adapter=None, ip_adapter_scale=self.ip_adapter_scale)
        row.update(plain(dict(self.labels)))
        return row

    def key(self, image_hash: str, dtype: str | None = None, ip_image_hash: str | None = None) -> str:
        """The content key: what names this cell's image file and finds it again on a re-run.

        The first 20 hex digits of the sha256 of a canonical JSON (sorted keys, floats as repr,
        tuples as lists) of: key version, model, scheduler, seed, the init image's content hash,
        every call keyword, and the pixel-changing loading options. The image's source (path, URL)
        is not in it: the same picture from another place is the same cell.

        Args:
            image_hash: the init image's content hash (`images.image_hash`).
            dtype: the dtype the cell runs in ("float32", "float16", ...), when known: the runner
                always passes it, so float16 and float32 images never share a key.
            ip_image_hash: the IP-Adapter reference picture's content hash, for a cell with one.

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
            "call": plain(dict(self.call)),
            "options": plain({**self.options, **({"dtype": dtype} if dtype else {})}),
        }
        if self.compel:  # weighted prompts change pixels; absent when off so older keys stay valid
            payload["compel"] = True
        # adapters and labels, each only when used, so the keys of sweeps without them stay as they were
        if self.lora is not None:
            payload["lora"] = plain(self.lora)
        if self.lora_scale is not None:
            payload["lora_scale"] = plain(self.lora_scale)
        # an adapter's settings stay in its base cells' keys too (adapter None): each grid position is
        # its own cell, the base picture again, as the X/Y/Z plots of A1111 and ComfyUI draw it
        if self.ip_adapter is not None:
            payload["ip_adapter"] = self.ip_adapter
        if self.ip_adapter_scale is not None:
            payload["ip_adapter_scale"] = self.ip_adapter_scale
        if self.ip_adapter_image is not None:
            if not ip_image_hash:
                raise ValidationError(f"`ip_image_hash` is needed for a cell with ip_adapter_image={self.ip_adapter_image!r}")
            payload["ip_adapter_image"] = ip_image_hash
        if self.labels:
            payload["labels"] = plain(dict(self.labels))
        return content_key(payload)


def expand_cells(spec) -> list[Cell]:
    """The cells of a `SweepSpec`: `itertools.product` over its axes, the last varying fastest.

    See `SweepSpec.cells`, which calls this.
    """
    axes = spec.axis_values()
    names = [k for k, _ in axes]
    swept = set(spec.swept)
    seqs = {k: seq for k, (_, seq) in call_parameters().items()}
    options = key_options(spec.options)
    tiny_size = tiny_size_note(spec) is not None  # said once by run_sweep, not here: cells() is pure
    search = spec.prompt_sr[0] if spec.prompt_sr != (None,) else None
    cells = []
    for combo in itertools.product(*(values for _, values in axes)):
        point = dict(zip(names, combo))
        labels = {}
        variant_params = {}
        if point["variants"] is not None:  # a named group of arguments: its axes and call keywords
            name, args = point["variants"]
            labels["variants"] = name
            for arg, value in args.items():
                if arg in point:
                    point[arg] = value
                else:
                    variant_params[arg] = value
        call = {k: point[k] for k in CALL_AXES}
        call.update({k: thaw(point[k], seqs.get(k, list)) for k in spec.params})
        call.update({k: thaw(v, seqs.get(k, list)) for k, v in variant_params.items()})
        if search is not None:  # A1111's Prompt S/R: the first term replaced in every prompt text
            labels["prompt_sr"] = point["prompt_sr"]
            for name in PROMPT_TEXTS:
                if isinstance(call.get(name), str):
                    call[name] = call[name].replace(search, point["prompt_sr"])
        if tiny_size and is_tiny(point["model"]):
            call.update(height=TINY_SIZE, width=TINY_SIZE)  # in the call, so in the key and the row
        # a twin's own small-size options (Kontext's max_area, FLUX.2's text-encoder layers), after the
        # product so a sequence value stays one value; what the spec sets wins
        for name, value in tiny_call(str(point["model"])).items():
            if name not in spec.params and name not in variant_params:
                call[name] = value
        cells.append(Cell(
            model=point["model"],
            image=point["image"],
            seed=point["seed"],
            scheduler=point["scheduler"],
            call=FrozenDict(call),
            swept=FrozenDict({k: labels.get(k, point[k]) for k in names if k in swept}),
            options=options,
            compel=spec.compel,
            lora=point["lora"],
            lora_scale=point["lora_scale"],
            ip_adapter=point["ip_adapter"],
            ip_adapter_scale=point["ip_adapter_scale"],
            ip_adapter_image=point["ip_adapter_image"],
            labels=FrozenDict(labels),
        ))
    return cells


def lora_plain(combo):
    """A `lora` value as a spec writes it: None, a source, a list of sources (weights 1), or a
    mapping source -> weight."""
    if combo is None:
        return None
    if all(weight == 1.0 for _, weight in combo):
        return combo[0][0] if len(combo) == 1 else [source for source, _ in combo]
    return {source: weight for source, weight in combo}


def lora_label(combo) -> str | None:
    """A `lora` value as one readable label: "a", "a + b", "a×0.8 + b×0.5"; None for the base."""
    if combo is None:
        return None
    return " + ".join(source if weight == 1.0 else f"{source}×{weight:g}" for source, weight in combo)


def lora_scale_value(scale):
    """A `lora_scale` as a table holds it: the number, or "a=0.5, b=1" for per-LoRA scales."""
    if isinstance(scale, Mapping):
        return ", ".join(f"{source}={value:g}" for source, value in scale.items())
    return scale


def tiny_size_note(spec) -> str | None:
    """The one line saying that tiny models run at `TINY_SIZE` px here, or None.

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
    tiny = [m for m in spec.model if is_tiny(m)]
    if not tiny:
        return None
    count = len(spec) // len(spec.model) * len(tiny)
    cells = f"{count} cell" + ("s" if count != 1 else "")
    return f"tiny models run at {TINY_SIZE}x{TINY_SIZE} px (the spec sets no height/width): {cells}"


def key_options(options: Mapping[str, Any]) -> FrozenDict:
    """The loading options that change pixels (`PIXEL_OPTIONS`), those not at their default."""
    out = {}
    for name in PIXEL_OPTIONS:
        value = options.get(name, DEFAULT_OPTIONS.get(name))
        if name == "dtype" and isinstance(value, str):
            value = DTYPES.get(value, value)  # "fp16" and "float16" are one setting
        if value != DEFAULT_OPTIONS.get(name):
            out[name] = value
    return FrozenDict(out)
