"""The catalog of model families: the key table as one DataFrame, `lab.families()`.

One row per image-to-image pipeline of the key table (`families.entries()`): its key, its key
in diffusers' `AUTO_IMAGE2IMAGE_PIPELINES_MAPPING`, the pipeline class, the family module, the
tiny twin (and the load options that make this pipeline from it), the knobs its `__call__` takes
(read from the installed diffusers' source, no import), what a cell runs with where a spec is
silent, its speed path, a typical real checkpoint, single-file loading and a note.
`markdown()` is the README's "Model families" table, made from the same rows (a test compares
them). Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import pandas as pd

from .families import Entry, entries, family_of_class, tiny_call
from .knobs import taken
from .validation import pipeline_adapters, pipeline_call_defaults

# The knobs a row says whether its pipeline takes: diffusers' call argument names.
KNOBS = ("strength", "guidance_scale", "true_cfg_scale", "negative_prompt", "prompt_2", "prompt_3")
# Call arguments that hold a control picture (the ControlNet and FLUX Control pipelines').
CONTROL_ARGUMENTS = ("control_image",)
# The arguments a spec leaves at None by default (vocab.DEFAULTS): what a cell runs with there.
SILENT = ("strength", "guidance_scale", "true_cfg_scale", "num_inference_steps")
# The columns of `markdown()` and `text()` (`img2img-lab models`): the frame's, with the knobs in one.
SUMMARY_COLUMNS = ("key", "mapping_key", "pipeline", "tiny", "knobs", "adapters", "defaults", "speed", "checkpoint",
                   "single_file", "requires")
# The adapter axes a row's pipeline takes (its diffusers loader mixins), as the summary names them.
ADAPTERS = {"lora": "LoRA", "ip_adapter": "IP-Adapter"}
# The summary columns that hold names, shown as code in markdown.
CODE_COLUMNS = ("key", "mapping_key", "pipeline", "checkpoint")

__all__ = ["ADAPTERS", "CONTROL_ARGUMENTS", "KNOBS", "SILENT", "SUMMARY_COLUMNS", "families", "markdown", "summary", "text"]


def _text(value) -> str:
    return value if isinstance(value, str) else repr(value)


def _tiny(entry: Entry, owners: dict) -> str:
    """"tiny/sd15 + enable_pag=True (sd15's layout)": the twin, the options, whose layout it shares."""
    if entry.tiny is None:
        return ""
    text = entry.tiny + "".join(f" + {k}={_text(v)}" for k, v in entry.load.items())
    owner = owners.get(entry.tiny)
    return text if owner in (None, entry.key) else f"{text} ({owner}'s layout)"


def _defaults(entry: Entry, accepted: frozenset) -> str:
    """"guidance_scale=3.5, num_inference_steps=28, ...": the family's default, else the signature's."""
    family = family_of_class(entry.pipeline).call_defaults.get(entry.pipeline, {})
    signature = pipeline_call_defaults(entry.pipeline)
    values = {name: family.get(name, signature.get(name)) for name in SILENT if name in accepted}
    return ", ".join(f"{name}={value!r}" for name, value in values.items() if value is not None)


def families() -> pd.DataFrame:
    """The image-to-image families img2img_lab knows, one row per pipeline of the key table.

    Columns: `key` (`tiny/<key>`, `bench_sweep.py --family <key>`), `mapping_key` (diffusers'
    `AUTO_IMAGE2IMAGE_PIPELINES_MAPPING` key; missing for the upscalers, which it doesn't list), `pipeline`,
    `family` (the `families/` module's key), `tiny` (the twin and the `load_pipeline` options that
    make this pipeline from it; "(sd15's layout)" where it shares another row's twin), `tiny_call`
    (the call arguments the twin's cells always get), one boolean column per knob of `KNOBS` and
    `control_image` (read from the pipeline's `__call__`), `image_list` (several reference
    pictures as `image`), `lora` and `ip_adapter` (whether its pipeline loads LoRAs / IP-Adapters:
    the spec's adapter axes), `defaults` (what a cell runs with where the spec is silent: the family's
    value, e.g. FLUX.1's guidance_scale 3.5, else the signature's), `speed` ("batched" or
    "per cell: <why>"), `checkpoint` (a typical real id), `single_file`, `requires` (packages
    beyond img2img_lab's requirements that loading it needs: torchvision for Qwen-Image-Edit and
    FLUX.2-dev under transformers 5), `note`.

    Example:
        >>> import img2img_lab as lab
        >>> kontext = lab.families().set_index("key").loc["flux-kontext"]
        >>> bool(kontext["strength"]), kontext["defaults"]
        (False, 'guidance_scale=3.5, true_cfg_scale=1.0, num_inference_steps=28')
    """
    table = entries()
    owners: dict = {}
    for e in table:  # a twin belongs to the first row that loads it without options
        if e.tiny is not None and not e.load:
            owners.setdefault(e.tiny, e.key)
    rows = []
    for e in table:
        family = family_of_class(e.pipeline)
        accepted = taken(e.pipeline)
        rows.append({
            "key": e.key,
            "mapping_key": e.mapping_key,
            "pipeline": e.pipeline,
            "family": family.key,
            "tiny": _tiny(e, owners),
            "tiny_call": ", ".join(f"{k}={v!r}" for k, v in tiny_call(e.tiny).items()) if e.tiny else "",
            **{name: name in accepted for name in KNOBS},
            "control_image": any(name in accepted for name in CONTROL_ARGUMENTS),
            "image_list": e.image_list,
            **{kind: kind in pipeline_adapters(e.pipeline) for kind in ADAPTERS},
            "defaults": _defaults(e, accepted),
            "speed": family.speed_path(e.pipeline),
            "checkpoint": e.checkpoint,
            "single_file": e.single_file,
            "requires": ", ".join(e.requires),
            "note": e.note,
        })
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame | None = None) -> pd.DataFrame:
    """`families()` in `SUMMARY_COLUMNS`: the knobs taken in one column, the speed path without its reason.

    Example:
        >>> summary().set_index("key").loc["sd15", "knobs"]
        'strength, guidance_scale, negative_prompt'
    """
    df = families() if df is None else df
    knob_columns = KNOBS + ("control_image", "image_list")
    out = df.assign(
        knobs=df[list(knob_columns)].apply(
            lambda row: ", ".join(name.replace("image_list", "image list") for name in knob_columns if row[name]),
            axis=1),
        adapters=df[list(ADAPTERS)].apply(lambda row: ", ".join(ADAPTERS[k] for k in ADAPTERS if row[k]), axis=1),
        speed=df["speed"].str.split(":").str[0],
        mapping_key=df["mapping_key"].fillna(""),
    )
    return out[list(SUMMARY_COLUMNS)]


def text(df: pd.DataFrame | None = None) -> str:
    """`summary()` as a plain-text table, columns left-aligned: what `img2img-lab models` prints."""
    table = summary(df).astype(str)
    widths = {c: max(len(c), table[c].str.len().max()) for c in table.columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in table.columns).rstrip()]
    lines += ["  ".join(v.ljust(widths[c]) for c, v in zip(table.columns, row)).rstrip()
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def markdown(df: pd.DataFrame | None = None) -> str:
    """`summary()` as a GitHub markdown table: the README's "Model families" section.

    Example:
        >>> markdown().splitlines()[0]
        '| key | mapping_key | pipeline | tiny | knobs | adapters | defaults | speed | checkpoint | single_file | requires |'
    """
    table = summary(df)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(name, value) for name, value in zip(table.columns, row)) + " |")
    return "\n".join(lines) + "\n"


def _cell(name: str, value) -> str:
    """One markdown cell: booleans as "yes"/blank, names as code, pipes escaped."""
    text = "yes" if value is True else "" if value is False else str(value)
    text = text.replace("|", "\\|")
    return f"`{text}`" if text and name in CODE_COLUMNS else text
