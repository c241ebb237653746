"""The interactive explorer of a sweep: an ipywidgets grid, a cell's detail, sort and filter.

This is the only module that touches ipywidgets. It uses standard widgets only (no custom
JavaScript), so the explorer works in JupyterLab, the classic notebook, Voila and Colab, and its
state can be saved into an exported HTML page (see `img2img_lab.htmlexport`).

Text that comes from the sweep (prompts, image sources, error messages) is HTML-escaped wherever
it lands in HTML (the edge labels, the parameter table, the ranking message); widgets that show
plain text (`Label`, `Textarea`, `Dropdown`/`Select` options) get it unescaped.
"""

from __future__ import annotations

import html
import io
import json
import numbers
from contextlib import contextmanager
from types import SimpleNamespace

import ipywidgets as widgets
import numpy as np
import pandas as pd

from .adapters import ip_adapter_code, lora_code
from .errors import ValidationError
from .grid import GridLayout, axis_values, cell_image, grid_layout, placeholder_tile
from .result import BOOKKEEPING_COLUMNS, parameter_columns
from .validation import pipeline_call_arguments
from .values import NONE_TEXT, format_value, is_null, norm_value
from .vocab import ADAPTER_AXES, BATCHED_TOLERANCE, LABEL_AXES, OK, SCHEDULER_NAMES, is_metric_column

PREFERRED_AXES = ("strength", "guidance_scale")
NO_AXIS = "(none)"  # y option for a one-row grid
# Row columns that are not keywords of the pipeline call (they go to load_pipeline, load_image, the generator).
_NOT_CALL = frozenset({"model", "image", "seed", "scheduler", "compel", *ADAPTER_AXES, *LABEL_AXES})
_RANKED_ROWS = 10
SORT_EXTRAS = ("effective_steps", "seconds", "status")  # rankable besides the swept columns and metrics
# On-screen sizes. Every image is shown at a set size (CSS object-fit), whatever its pixel size, so
# a 3x3 sweep's explorer fits one 1280x800 JupyterLab view with 64 px and with 1024 px images.
MAX_WIDTH = "1100px"  # a JupyterLab output area at 1280 px window width
DETAIL_SIDE = 240  # px, the selected image and the init image
DETAIL_MIN_WIDTH = "300px"  # the details column never gets narrower than this
_DETAIL_PIXELS = 512  # detail PNGs are shrunk to this side before they are sent to the browser
_BUTTON_HEIGHT = "24px"
_LABEL_COLUMN = "10em"  # the grid's first column: the corner and the y values
_TAB_PADDING = 34  # px, a Tab panel's padding and border (ipywidgets' CSS)
_LONG_WORD = 40  # longer unbroken runs in a parameter value are shortened (full text in a tooltip)
_TH_STYLE = "text-align:left;vertical-align:top;padding:1px 1em 1px 0;white-space:nowrap;line-height:1.35"
_TD_STYLE = "text-align:left;vertical-align:top;padding:1px 0;white-space:pre-wrap;line-height:1.35"
# Shown in the parameter table even when constant: what the image is of.
_ALWAYS_SHOWN = ("model", "prompt")
# Folded under "run details" in the parameter table.
_RUN_DETAILS = ("status", "key", "width", "height", "pipeline_class", "scheduler_class", "dtype", "device",
                "seconds", "batch_size", "image_requested", "lora_sha256", "ip_adapter_sha256", "same_image_as")
# DOM classes, for styling and for the browser tests.
CSS = {
    "root": "img2img-lab-explorer",
    "cell": "img2img-lab-cell",
    "select": "img2img-lab-select",
    "header": "img2img-lab-header",
    "detail": "img2img-lab-detail",
    "init": "img2img-lab-init",
    "params": "img2img-lab-params",
    "code": "img2img-lab-code",
    "corner": "img2img-lab-corner",
    "details": "img2img-lab-details",
    "tabs": "img2img-lab-tabs",
}


# ----------------------------------------------------------------------------------------------
# pure helpers: values, images, the reproducing snippet


def _plain(value):
    """A cell value as plain Python (numpy scalars and arrays unwrapped), for repr and labels."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _png_bytes(image, max_side: int | None = None) -> bytes:
    """PNG bytes of a PIL image, shrunk (never enlarged) so its longer side is at most `max_side`."""
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _accepts_height(pipeline_class) -> bool:
    """Whether the pipeline's `__call__` takes `height`/`width` (read from diffusers' source)."""
    if not isinstance(pipeline_class, str) or not pipeline_class:
        return False
    try:
        return "height" in pipeline_call_arguments(pipeline_class)
    except Exception:  # not a diffusers class (a custom pipeline): assume the img2img layout
        return False


def code_snippet(result, which) -> str:
    """Python code that reproduces one image of a sweep exactly, ready to paste in a notebook.

    Every call keyword of the row is written with `repr`, the scheduler swap and loading options
    included, and `torch.Generator("cpu").manual_seed(seed)` as the runner uses. Pipelines without
    `height`/`width` (Stable Diffusion img2img) get the init image resized, as the runner does.

    Args:
        result: a `SweepResult`.
        which: row position, content key or row (`pandas.Series`).

    Example:
        >>> print(lab.widgets.code_snippet(result, 0))
        >>> exec(lab.widgets.code_snippet(result, 0)); image    # the same pixels as result.image(0)
    """
    row = result.row(which)
    spec = getattr(result, "spec", None)
    # 1. the pipeline: model, loading options, scheduler swap
    load_args = _load_arguments(row, spec)
    # 2. the init image, resized where the runner resized it (by the pipeline when it takes a size)
    source, size = _init_source(result, row), _run_size(result, row, spec)
    call_size = size is not None and _accepts_height(row.get("pipeline_class"))
    size_arg = f", size=({size[0]}, {size[1]})" if size is not None and not call_size else ""
    # 3. the call: every keyword of the row, in table order
    args = _call_arguments(result, row, spec, size if call_size else None)
    # 4. the code
    exact = row.get("exact") is True or _plain(row.get("exact")) is True
    lines = [
        *reproduction_note(row),
        "import torch",
        "import img2img_lab as lab",
        "",
        *(["torch.use_deterministic_algorithms(True, warn_only=True)  # as the sweep's exact mode"] if exact else []),
        f"pipe = lab.load_pipeline({load_args})",
        *_adapter_lines(row),
        f"init = lab.load_image({source!r}{size_arg})",
        "image = pipe(",
        "    image=init,",
        *[f"    {a}," for a in args],
        *_reference_lines(result, row),
        f'    generator=torch.Generator("cpu").manual_seed({int(_plain(row["seed"]))}),',
        ").images[0]",
    ]
    return "\n".join(lines) + "\n"


def _adapter_lines(row) -> list[str]:
    """The LoRAs and the IP-Adapter of the row, loaded and set as the runner did."""
    lines = []
    weights = _plain(row.get("lora_weights"))
    files = _plain(row.get("lora_files"))
    if isinstance(weights, str) and weights:
        lines += lora_code(json.loads(weights), json.loads(files) if isinstance(files, str) and files else None)
    ip_adapter = _plain(row.get("ip_adapter"))
    if isinstance(ip_adapter, str) and ip_adapter:
        scale = _plain(row.get("ip_adapter_scale"))
        lines += ip_adapter_code(ip_adapter, 1.0 if is_null(scale) else scale)
    return lines


def _reference_lines(result, row) -> list[str]:
    """The IP-Adapter's reference picture as a call argument (its stored copy when given in memory)."""
    if is_null(_plain(row.get("ip_adapter"))):
        return []
    source = _plain(row.get("ip_adapter_image"))
    if not isinstance(source, str) or source.startswith("<") or not source:
        source = str(result.out_dir / row["ip_adapter_image_path"])
    return [f"    ip_adapter_image=lab.load_image({source!r}),"]


def _load_arguments(row, spec) -> str:
    """The arguments of the snippet's `load_pipeline`: the model, the spec's loading options (when
    the row's model is the spec's), the dtype and the scheduler swap."""
    options = {}
    if spec is not None and row.get("model") in [str(m) for m in getattr(spec, "model", ())]:
        options.update({k: _plain(v) for k, v in dict(getattr(spec, "options", None) or {}).items()})
    if "dtype" not in options and not is_null(row.get("dtype")) and row.get("dtype"):
        options["dtype"] = str(row["dtype"])
    scheduler = row.get("scheduler")
    if isinstance(scheduler, str) and scheduler in SCHEDULER_NAMES:
        options["scheduler"] = scheduler
    if _adapter_lines(row):  # adapters change the pipeline they are loaded into: not the shared cached one
        options["cache"] = False
    return ", ".join([repr(str(row["model"]))] + [f"{k}={v!r}" for k, v in options.items()])


def _init_source(result, row) -> str:
    """Where the snippet loads the init image from: the row's `image`, or the stored copy of an
    image that was given in memory."""
    source = row.get("image")
    if not isinstance(source, str) or source.startswith("<") or not source:
        source = str(result.out_dir / row["init_image_path"])
    return source


def _run_size(result, row, spec) -> tuple[int, int] | None:
    """(width, height) the cell ran at when the runner resized its init image (the row's size
    differs from the stored init image's, or the spec sets a size); None when it did not."""
    spec_params = dict(getattr(spec, "params", None) or {}) if spec is not None else {}
    width, height = _plain(row.get("width")), _plain(row.get("height"))
    init = result.init_image(row)
    sized = not is_null(width) and not is_null(height) and init is not None and init.size != (width, height)
    if "width" in spec_params or "height" in spec_params:
        sized = True
        width = spec_params["width"] if isinstance(spec_params.get("width"), numbers.Integral) else width
        height = spec_params["height"] if isinstance(spec_params.get("height"), numbers.Integral) else height
    return (int(width), int(height)) if sized else None


def _call_arguments(result, row, spec, call_size: tuple[int, int] | None) -> list[str]:
    """The snippet's pipeline keywords (``name=repr``): every call column of the row in table
    order (but those the row's pipeline does not take, its `not_applied`), the size when the pipeline takes one, a control image sized like the init image, and
    compel embeddings in place of the prompts when the spec used compel."""
    kwargs = {}
    not_applied = set(filter(None, str(_plain(row.get("not_applied")) or "").split(",")))  # the pipeline lacks them
    for column in result.df.columns:
        if column in _NOT_CALL or column in BOOKKEEPING_COLUMNS or is_metric_column(column) or column in not_applied:
            continue
        value = _plain(row.get(column))
        if is_null(value) and column != "negative_prompt":  # absent for this row (or dropped: upscalers)
            continue
        if isinstance(value, float) and value.is_integer() and _padded_int_column(result.df[column]):
            value = int(value)  # an int argument (max_sequence_length) that other models' rows lack
        kwargs[column] = None if is_null(value) else value
    if call_size is not None:
        kwargs.update(height=call_size[1], width=call_size[0])
    args = [f"{k}={v!r}" for k, v in kwargs.items() if k not in ("control_image",)]
    if kwargs.get("control_image") is not None:  # loaded and sized like the init image, as the runner does
        args.append(f"control_image=lab.prepare_control_image({kwargs['control_image']!r}, init.size)")
    if getattr(spec, "compel", False):  # the runner passes compel embeddings; the row keeps the texts
        args = [a for a in args if not a.startswith(("prompt=", "negative_prompt="))]
        args.insert(0, f"**lab.encode_weighted(pipe, {kwargs.get('prompt')!r}, {kwargs.get('negative_prompt')!r})")
    return args


def _padded_int_column(series) -> bool:
    """Whether a float column is an int argument that pandas turned float for the rows without it
    (a mixed sweep: `max_area` on Kontext's rows, missing on SD's): missing values, the rest whole."""
    if series.dtype.kind != "f" or not series.isna().any():
        return False
    present = series.dropna()
    return bool(len(present)) and bool((present == present.round()).all())


def reproduction_note(row) -> list[str]:
    """Comment lines that open a cell's snippet: how closely the code reproduces the cell's image.

    A cell run as one call (`batched=False`, `exact=True`, or alone in its batch) is reproduced
    bit for bit when the code runs at the same thread count; a cell that went through the batched
    engine within `BATCHED_TOLERANCE` 8-bit levels.
    """
    batch = _plain(row.get("batch_size"))
    engine = _plain(row.get("batched"))
    if is_null(engine):  # tables written before the `batched` column: a batch of more than one
        engine = not is_null(batch) and int(batch) > 1
    threads = _plain(row.get("threads"))
    at = (f" with {int(threads)} CPU thread{'s' if int(threads) != 1 else ''} (torch.get_num_threads())"
          if not is_null(threads) else "")
    if engine is True:
        size = f"in a batch of {int(batch)}" if not is_null(batch) else "batched"
        return [f"# This cell ran {size}: this code gives its image within {BATCHED_TOLERANCE} 8-bit level per pixel",
                "# (batched float rounding). Run the sweep with exact=True for cells reproduced bit for bit."]
    mode = "in exact mode (one call, deterministic algorithms)" if _plain(row.get("exact")) is True else "as one call"
    return [f"# This cell ran {mode}{at}:", "# this code gives the same pixels at the same thread count."]


def _value_html(text: str) -> str:
    """Escaped text for a table cell, wrapped only where a reader expects it.

    Text wraps at spaces and is never broken mid-word. A path or URL too long for a line may also
    wrap after each "/"; any other unbroken run longer than `_LONG_WORD` characters is shortened,
    with the whole text in the cell's tooltip.
    """
    if max((len(word) for word in text.split()), default=0) <= _LONG_WORD:
        return html.escape(text)
    if "/" in text:
        return "/<wbr>".join(html.escape(part) for part in text.split("/"))
    short = " ".join(w if len(w) <= _LONG_WORD else w[: _LONG_WORD - 1] + "…" for w in text.split(" "))
    return f"<span title='{html.escape(text, quote=True)}'>{html.escape(short)}</span>"


def _table_html(pairs, css_class: str) -> str:
    """An HTML table of (name, value) pairs, one pair a line, every name and value escaped."""
    rows = "".join(
        f"<tr><th style='{_TH_STYLE}'>{html.escape(str(k))}</th>"
        f"<td style='{_TD_STYLE}'>{_value_html(str(v))}</td></tr>"
        for k, v in pairs
    )
    return f"<table class='{css_class}' style='border-collapse:collapse'>{rows}</table>"


def _folded_html(summary: str, pairs, css_class: str) -> str:
    """A table behind a closed `<details>` (empty when there is nothing to fold)."""
    if not pairs:
        return ""
    return (f"<details><summary style='cursor:pointer'>{html.escape(summary)}</summary>"
            f"{_table_html(pairs, css_class)}</details>")


def _corner_html(x, y) -> str:
    """The grid's corner: which column runs across (→) and which down (↓)."""
    def name(column):  # long names may wrap after an underscore, never elsewhere
        return "_<wbr>".join(html.escape(part) for part in str(column).split("_"))

    across = f"<div style='text-align:right'>{name(x)}&nbsp;→</div>" if x else ""
    down = f"<div>{name(y)}&nbsp;↓</div>" if y else ""
    return f"<div class='{CSS['corner']}' style='line-height:1.3'>{across}{down}</div>"


def _value_text(value) -> str:
    value = _plain(value)
    if is_null(value):
        return NONE_TEXT  # as the grid, the axis controls and the tables say it
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# the explorer


class Explorer(widgets.VBox):
    """The sweep explorer widget; build it with `explore`.

    Layout (it fits one 1280x800 JupyterLab view for a 3x3 sweep, whatever the image size): the
    axis dropdowns and fixed-value sliders on top, a message line, then a `Tab` (the grid, the
    ranked list with sort and filter, the reproducing code) beside the details column (selected
    and init image, parameters one a line with the constant ones folded, metrics).

    Attributes (the parts, for tests and for embedding elsewhere): `x_axis`, `y_axis` (axis
    dropdowns), `fixed` (column -> slider or dropdown of each other swept column), `grid`
    (`GridBox` of edge labels and cells), `cells` (the cell widgets in grid order, each a `VBox`
    of an `Image` and a "select" `Button`), `detail_image`, `init_image`, `params`, `metrics`,
    `code`, `code_box`, `sort_by`, `ascending`, `query`, `message`, `ranked`, `tabs`, `details`;
    `selected` is the selected key. The selection follows its image (its key) through sorting,
    filtering and axis changes; a filter that hides it says so in `message`.
    """

    def __init__(self, result, x=None, y=None, *, thumb: int = 128):
        # 1. validate; the state the callbacks share
        swept = _explorable_columns(result, x, y, thumb)
        self.result, self.thumb, self.swept = result, thumb, swept
        self.selected = None
        self._thumbs: dict = {}
        self._rows_shown = result.df  # rows passing the filter
        self._syncing = False  # True while the explorer itself sets widget values
        self._ranked_text = ""
        self._ranked_keys: list = []  # the ranked list's keys, in its order

        # 2. the axis dropdowns and a control fixing each other swept column
        self._make_axis_controls(x, y)
        # 3. grid and details; every image has a set on-screen size, whatever its pixel size
        self._make_grid_and_details()
        # 4. sort and filter: the ranked list shares a Tab with the grid, so it adds no height
        self._make_ranking()

        # 5. put it together and select the first image that worked
        super().__init__([
            widgets.HBox([self.x_axis, self.y_axis, self.fixed_box], layout=widgets.Layout(flex_flow="row wrap")),
            self.message,
            widgets.HBox([self.tabs, self.details],
                         layout=widgets.Layout(width="100%", align_items="flex-start", grid_gap="8px")),
        ], layout=widgets.Layout(width="100%", max_width=MAX_WIDTH))
        self.add_class(CSS["root"])
        self._on_axes()
        self._update_ranked()
        first = next((row for row in self._layout.cells.values() if row.get("status", OK) == OK), None)
        if first is None and len(result.df):
            first = result.df.iloc[0]
        self.select(first["key"])

    def _make_axis_controls(self, x, y):
        """`x_axis` and `y_axis` (preferred axes if swept, else the first swept columns) and
        `fixed`: a slider (numbers) or dropdown (text) per swept column."""
        df, swept = self.result.df, self.swept
        preferred = [c for c in PREFERRED_AXES if c in swept] + [c for c in swept if c not in PREFERRED_AXES]
        x = x or (preferred[0] if preferred else None)
        # a y axis only where it varies for one x (a model comparison whose strength goes with the
        # model is one row, not a diagonal of a grid that is mostly empty)
        y = y or next((c for c in preferred if c != x and not _determined(df, [x], c)), None)
        options = swept or [NO_AXIS]
        axis_layout = {"width": "max-content", "max_width": "260px"}
        self.x_axis = widgets.Dropdown(options=options, value=x or NO_AXIS, description="x",
                                       layout=widgets.Layout(**axis_layout), style={"description_width": "1.5em"})
        self.y_axis = widgets.Dropdown(options=[NO_AXIS] + swept, value=y or NO_AXIS, description="y",
                                       layout=widgets.Layout(**axis_layout), style={"description_width": "1.5em"})
        self._axes = (self.x, self.y)
        self.fixed = {}
        for column in swept:
            values = axis_values(df[column])
            labelled = [(format_value(v), i) for i, v in enumerate(values)]
            numeric = all(isinstance(_plain(v), numbers.Real) and not is_null(v) for v in values)
            control = (widgets.SelectionSlider if numeric else widgets.Dropdown)(
                options=labelled, value=0, description=column, continuous_update=False,
                style={"description_width": "initial"}, layout=widgets.Layout(max_width="360px"),
            )
            control._values = values
            control.observe(self._on_change, names="value")
            self.fixed[column] = control
        self.fixed_box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))

    def _make_grid_and_details(self):
        """The (empty) `grid` and the details column: selected and init image, `params`, `metrics`;
        and the `code` tab."""
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_gap="4px", align_items="center", width="100%"))
        self.cells: list = []
        self._headers: list = []
        side = f"{DETAIL_SIDE}px"
        # a set box (narrower where the column is), the picture scaled into it keeping its aspect
        image_layout = {"width": side, "max_width": "100%", "height": "auto", "max_height": side,
                        "object_fit": "contain"}
        self.detail_image = widgets.Image(format="png", layout=widgets.Layout(**image_layout))
        self.detail_image.add_class(CSS["detail"])
        self.init_image = widgets.Image(format="png", layout=widgets.Layout(**image_layout))
        self.init_image.add_class(CSS["init"])
        self.params = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.params.add_class(CSS["params"])
        self.metrics = widgets.HTML(layout=widgets.Layout(width="100%"))
        # the snippet has its own tab: however long, it never makes the explorer taller
        self.code = widgets.Textarea(layout=widgets.Layout(width="100%", height="26em"))
        self.code.add_class(CSS["code"])
        self.code_box = widgets.VBox([widgets.Label("code that reproduces the selected image:"), self.code],
                                     layout=widgets.Layout(width="100%"))
        figure = {"flex": "1 1 0%", "min_width": "0", "align_items": "center"}
        self.details = widgets.VBox([
            widgets.HBox([
                widgets.VBox([widgets.Label("selected"), self.detail_image], layout=widgets.Layout(**figure)),
                widgets.VBox([widgets.Label("init image"), self.init_image], layout=widgets.Layout(**figure)),
            ], layout=widgets.Layout(width="100%")),
            self.params,
            self.metrics,
        ], layout=widgets.Layout(flex="1 1 0%", min_width=DETAIL_MIN_WIDTH, overflow="hidden"))
        self.details.add_class(CSS["details"])

    def _make_ranking(self):
        """`sort_by`, `ascending`, `query`, `message` and the `ranked` list; the `tabs` holding the
        grid, the ranked list and the code; every control's callback."""
        df, swept = self.result.df, self.swept
        metric_columns = [c for c in df.columns if is_metric_column(c)]
        # what a ranking is for: the swept values, the metrics, and how each cell ran (not file names or keys)
        sortable = list(dict.fromkeys(
            swept + metric_columns + [c for c in SORT_EXTRAS if c in df.columns]
        )) or [c for c in df.columns if c not in BOOKKEEPING_COLUMNS][:1] or ["key"]
        self.sort_by = widgets.Dropdown(options=sortable, value=(metric_columns or sortable)[0], description="sort by",
                                        layout=widgets.Layout(width="max-content", max_width="260px"))
        self.ascending = widgets.ToggleButton(value=True, description="ascending",
                                              layout=widgets.Layout(width="8em"))
        self.query = widgets.Text(
            value="", placeholder="e.g. strength > 0.5 (a pandas query)",
            description="filter", continuous_update=False, layout=widgets.Layout(flex="1 1 16em", min_width="12em"),
        )
        self.message = widgets.HTML()
        self.ranked = widgets.Select(options=[], rows=_RANKED_ROWS, layout=widgets.Layout(width="100%"))
        for control in (self.x_axis, self.y_axis):
            control.observe(self._on_axes, names="value")
        for control in (self.sort_by, self.ascending, self.query):
            control.observe(self._on_filter, names="value")
        self.ranked.observe(self._on_ranked, names="value")
        self._ranked_panel = widgets.VBox([
            widgets.HBox([self.sort_by, self.ascending, self.query], layout=widgets.Layout(flex_flow="row wrap")),
            self.ranked,
        ], layout=widgets.Layout(width="100%"))
        self.tabs = widgets.Tab(children=[self.grid, self._ranked_panel, self.code_box],
                                titles=("grid", "ranked list", "code"),
                                layout=widgets.Layout(flex="0 1 auto", min_width="0", max_width="100%"))
        self.tabs.add_class(CSS["tabs"])

    # -- reading the state

    @property
    def x(self):
        return None if self.x_axis.value == NO_AXIS else self.x_axis.value

    @property
    def y(self):
        return None if self.y_axis.value == NO_AXIS else self.y_axis.value

    def fixed_values(self) -> dict:
        """The value each non-axis swept column is fixed at (columns the axes determine are free)."""
        return {c: w._values[w.value] for c, w in self.fixed.items() if c in self._free_columns()}

    def _free_columns(self) -> list:
        """Swept columns off the axes that still vary for one grid cell: each gets a control."""
        axes = [c for c in (self.x, self.y) if c is not None]
        return [c for c in self.fixed if c not in axes and not (axes and _determined(self.result.df, axes, c))]

    def visible_keys(self) -> list:
        """Content keys of the cells in grid order (row by row); None where a cell is empty."""
        return [getattr(cell, "_key", None) for cell in self.cells[: self._n_cells]]

    # -- callbacks

    @contextmanager
    def _quietly(self):
        """Set widget values without their callbacks acting on them (they see `_syncing`)."""
        outer, self._syncing = self._syncing, True
        try:
            yield
        finally:
            self._syncing = outer

    def _on_axes(self, change=None):
        if self._syncing:
            return
        if self.x is not None and self.x == self.y:  # one column on both axes: swap instead of refusing
            changed = change["owner"] if change else self.x_axis
            other = self.y_axis if changed is self.x_axis else self.x_axis
            old = change["old"] if change else NO_AXIS
            if old == NO_AXIS and other is self.x_axis:  # x can't be "(none)": take another column
                old = next((c for c in self.swept if c != self.y), None)
                if old is None:
                    other, old = self.y_axis, NO_AXIS
            with self._quietly():
                other.value = old
        # a column that leaves the axes is fixed at the selected image's value: the selection stays in view
        newly_fixed = [c for c in self._axes if c is not None and c not in (self.x, self.y)]
        self._axes = (self.x, self.y)
        if self.selected is not None:
            row = self.result.row(self.selected)
            with self._quietly():
                for column in newly_fixed:
                    control = self.fixed[column]
                    position = _position(control._values, row[column])
                    if position is not None:
                        control.value = position
        self.fixed_box.children = [self.fixed[c] for c in self._free_columns()]
        self._update_grid()

    def _on_change(self, change=None):
        if not self._syncing:
            self._update_grid()

    def _on_filter(self, change=None):
        self._update_ranked()
        self._update_grid()

    def _on_ranked(self, change):
        # The explorer's own updates (new options reset the index) are ignored; so is a frontend
        # clearing or echoing the selection: only a choice of another image selects it.
        if self._syncing or change["new"] == self.selected:
            return
        if change["new"] is None:  # cleared in the frontend: the list shows the selection again
            self._sync_ranked()
            return
        self.select(change["new"])

    # -- updates (existing widgets get new values; new ones are only made when the grid grows)

    def _layout_rows(self) -> pd.DataFrame:
        df = self.result.df
        for column, value in self.fixed_values().items():
            df = df[df[column].map(norm_value) == norm_value(value)]
        return df

    def _update_grid(self):
        df = self._layout_rows()
        x, y = self.x, self.y
        if df.empty:  # a sparse sweep without this combination of fixed values
            layout = _one_row_layout(df.assign(__x=0), "__x")
        elif x is None:
            layout = _one_row_layout(df.assign(__x=0), "__x")
        elif y is None:
            layout = _one_row_layout(df, x)
        else:
            layout = grid_layout(SimpleNamespace(df=df, swept=self.swept), x, y, caller="explore")
        self._layout = layout
        nx, ny = len(layout.x_values), len(layout.y_values)
        shown = set(self._rows_shown["key"])

        # headers: a corner naming the axes, the x values across the top, the y value of each row
        texts = ([_corner_html(x, y)] + [self._label(x, v) for v in layout.x_values]
                 + [self._label(y, v) for v in layout.y_values])
        while len(self._headers) < len(texts):
            header = widgets.HTML()
            header.add_class(CSS["header"])
            self._headers.append(header)
        for header, text in zip(self._headers, texts):
            header.value = text
        while len(self.cells) < nx * ny:
            self.cells.append(self._new_cell())
        children = list(self._headers[: 1 + nx])
        for yi in range(ny):
            children.append(self._headers[1 + nx + yi])
            for xi in range(nx):
                cell = self.cells[yi * nx + xi]
                row = layout.cells.get((0, yi, xi))
                self._fill_cell(cell, row, shown)
                children.append(cell)
        self._n_cells = nx * ny
        # A set label column (longer labels wrap at spaces) and columns of at most `thumb` px that
        # narrow when the output area does. The Tab is as wide as the full-size grid whichever tab
        # shows, so switching tabs never moves the details column.
        self.grid.layout.grid_template_columns = f"{_LABEL_COLUMN} repeat({nx}, minmax(0, {self.thumb}px))"
        self.tabs.layout.width = f"max(24em, calc({_LABEL_COLUMN} + {nx * (self.thumb + 4) + _TAB_PADDING}px))"
        if list(self.grid.children) != children:
            self.grid.children = children
        self._update_message()

    def _label(self, column, value) -> str:
        if column is None:
            return ""
        text = format_value(value)
        full = "None" if is_null(value) else str(_plain(value))
        return (f"<span title='{html.escape(column, quote=True)} = {html.escape(full, quote=True)}'>"
                f"{html.escape(text)}</span>")

    def _new_cell(self):
        side = f"{self.thumb}px"  # at most; less when the grid's column is narrower
        image = widgets.Image(format="png", layout=widgets.Layout(
            width="100%", max_width=side, height="auto", max_height=side, object_fit="contain"))
        image.add_class(CSS["cell"])
        button = widgets.Button(description="select", layout=widgets.Layout(width="100%", height=_BUTTON_HEIGHT))
        button.add_class(CSS["select"])
        cell = widgets.VBox([image, button], layout=widgets.Layout(width="100%", min_width="0"))
        cell._key = None
        button.on_click(lambda _b, cell=cell: cell._key is not None and self.select(cell._key))
        return cell

    def _fill_cell(self, cell, row, shown: set):
        image_widget, button = cell.children
        key = None if row is None else row["key"]
        cell._key = key
        if key is not None and key not in shown:
            data, reason = self._placeholder("filtered"), "filtered"
        elif key is None:
            data, reason = self._placeholder("missing"), "missing"
        else:
            data, reason = self._thumbs.get(key), None
            if data is None:
                image, reason = cell_image(self.result, row)
                data = _png_bytes(image, self.thumb) if image is not None else self._placeholder(reason)
                self._thumbs[key] = data
        if image_widget.value != data:
            image_widget.value = data
        button.disabled = key is None
        button.description = "selected" if key is not None and key == self.selected else "select"
        button.button_style = "info" if key is not None and key == self.selected else ""
        button.tooltip = reason or ""

    def _placeholder(self, reason: str) -> bytes:
        cache_key = ("placeholder", reason)
        if cache_key not in self._thumbs:
            self._thumbs[cache_key] = _png_bytes(placeholder_tile((self.thumb, self.thumb), reason))
        return self._thumbs[cache_key]

    def _update_ranked(self):
        df = self.result.df
        try:
            rows = df.query(self.query.value) if self.query.value.strip() else df
            column = self.sort_by.value
            rows = rows.sort_values(column, ascending=self.ascending.value, na_position="last", kind="stable",
                                    key=lambda s: s.map(_sort_key))
        except Exception as exc:  # a half-typed query must not break the explorer
            self._ranked_text = (f"<span style='color:#a00'>filter {html.escape(repr(self.query.value))} failed: "
                                 f"{html.escape(f'{type(exc).__name__}: {exc}')}</span>")
            self._update_message()
            return
        self._rows_shown = rows
        self._ranked_text = html.escape(f"{len(rows)} of {len(df)} images, sorted by {column} "
                                        f"({'ascending' if self.ascending.value else 'descending'})")
        shown_columns = list(dict.fromkeys(self.swept + [column] + [c for c in df.columns if is_metric_column(c)]))
        options = []
        for _, row in rows.iterrows():
            parts = [f"{c}={format_value(row[c], 20)}" for c in shown_columns if c in row.index]
            status = row.get("status", OK)
            options.append(("  ".join(parts) + ("" if status == OK else f"  [{status}]"), row["key"]))
        # New options reset the index to 0; the selection is put back by its key, in the same
        # message to the frontend, and no callback acts on the intermediate values.
        with self._quietly(), self.ranked.hold_sync():
            self.ranked.options = options
            self._ranked_keys = [key for _, key in options]
            self._sync_ranked()
        self._update_message()

    def _sync_ranked(self):
        keys = self._ranked_keys
        index = keys.index(self.selected) if self.selected in keys else None
        if self.ranked.index != index:
            with self._quietly():
                self.ranked.index = index

    def _describe(self, row) -> str:
        """The selected image by its swept values, e.g. "strength=0.8, guidance_scale=5"."""
        return ", ".join(f"{c}={format_value(row[c])}" for c in self.swept) or str(row["key"])

    def _update_message(self):
        """The ranking summary, and where the selected image is when it is not in view."""
        note = ""
        if self.selected is not None:
            row = self.result.row(self.selected)
            if self.selected not in set(self._rows_shown["key"]):
                note = f"the selected image ({self._describe(row)}) is hidden by the filter"
            elif hasattr(self, "_n_cells") and self.selected not in self.visible_keys():
                fixed = ", ".join(f"{c}={format_value(row[c])}" for c, v in self.fixed_values().items()
                                  if norm_value(row[c]) != norm_value(v))
                note = f"the selected image ({self._describe(row)}) is not in this grid; it has {fixed}"
        note_html = f" · <b>{html.escape(note)}</b>" if note else ""
        self.message.value = self._ranked_text + note_html

    def select(self, key):
        """Show one cell (content key) in the detail view: image, init image, parameters, metrics, code."""
        result = self.result
        row = result.row(key)
        self.selected = row["key"]
        image, reason = cell_image(result, row)
        self.detail_image.value = _png_bytes(image, _DETAIL_PIXELS) if image is not None else self._placeholder(reason)
        init = result.init_image(row)
        self.init_image.value = _png_bytes(init, _DETAIL_PIXELS) if init is not None else self._placeholder("missing")
        self.params.value = _params_html(result, row, self.swept)
        metric_pairs = [(c, _value_text(row[c])) for c in result.df.columns if is_metric_column(c)]
        self.metrics.value = _table_html(metric_pairs, "img2img-lab-metrics") if metric_pairs else ""
        try:
            self.code.value = code_snippet(result, row)
        except Exception as exc:  # the detail view must still show
            self.code.value = f"# no snippet: {type(exc).__name__}: {exc}"
        for cell in self.cells[: getattr(self, "_n_cells", 0)]:
            selected = cell._key is not None and cell._key == self.selected
            cell.children[1].description = "selected" if selected else "select"
            cell.children[1].button_style = "info" if selected else ""
        self._sync_ranked()
        self._update_message()


def _explorable_columns(result, x, y, thumb) -> list:
    """The swept columns of a result `explore` can show, with ``x``, ``y`` and ``thumb`` checked."""
    if isinstance(thumb, bool) or not isinstance(thumb, int) or thumb < 16:
        raise ValidationError(f"`thumb` must be an int >= 16 (pixels), got {thumb!r}")
    if result.df.empty:
        raise ValidationError(f"`result` has no rows to explore ({result.out_dir})")
    swept = list(result.swept)
    for name, column in (("x", x), ("y", y)):
        if column is not None and column not in swept:
            raise ValidationError(f"`{name}` must be a swept column, got {column!r}; swept columns: {swept}")
    if x is not None and x == y:
        raise ValidationError(f"`x` and `y` must differ, both are {x!r}")
    return swept


def _position(values, value):
    """Index of `value` among a control's values (None, NaN and numpy scalars compared by `norm_value`)."""
    wanted = norm_value(value)
    return next((i for i, v in enumerate(values) if norm_value(v) == wanted), None)


def _params_html(result, row, swept) -> str:
    """The selected row's parameters, one a line: what the image is of and what the sweep varies
    first; constant parameters and run bookkeeping folded behind `<details>` with their count."""
    columns = parameter_columns(result.df)
    shown = [c for c in columns if c in _ALWAYS_SHOWN or c in swept]
    pairs = [(c, _value_text(row[c])) for c in shown]
    if "effective_steps" in row.index:
        pairs.append(("effective_steps", _value_text(row["effective_steps"])))
    status = row.get("status", OK)
    if not is_null(status) and status not in (OK, ""):
        pairs += [(c, _value_text(row[c])) for c in ("status", "error") if c in row.index]
    constant = [(c, _value_text(row[c])) for c in columns if c not in shown]
    run = [(c, _value_text(row[c])) for c in _RUN_DETAILS if c in row.index and not is_null(row[c])]
    return (_table_html(pairs, CSS["params"])
            + _folded_html(f"{len(constant)} constant parameter{'s' if len(constant) != 1 else ''}",
                           constant, "img2img-lab-constant")
            + _folded_html("run details", run, "img2img-lab-run"))


def _determined(df, axes: list, column: str) -> bool:
    """Whether rows that share the values of `axes` always share one value of `column`."""
    keys = [df[a].map(norm_value) for a in axes]
    return bool((df[column].map(norm_value).groupby(keys, sort=False).nunique(dropna=False) <= 1).all())


def _sort_key(value):
    value = _plain(value)
    return value if isinstance(value, (numbers.Number, str)) or is_null(value) else repr(value)


def _one_row_layout(df, x):
    """A grid with one row (no y axis), as `grid_layout` would give it."""
    x_values = axis_values(df[x])
    index = {norm_value(v): i for i, v in enumerate(x_values)}
    cells = {}
    for _, row in df.iterrows():
        cell = (0, 0, index[norm_value(row[x])])
        if cell not in cells or (cells[cell].get("status") != OK and row.get("status") == OK):
            cells[cell] = row
    return GridLayout(x, "__y", None, x_values, [None], [None], cells, df)


def explore(result, x=None, y=None, *, thumb: int = 128) -> Explorer:
    """An interactive explorer of a sweep, as an ipywidgets widget (display it, or leave it last in a cell).

    Dropdowns choose the x and y axes among the swept columns (default `strength` and
    `guidance_scale` when swept); every other swept column becomes a slider (numbers) or a dropdown
    (text) that fixes its value. Clicking a cell's "select" button shows its image beside the
    init image with its parameters and metrics; the "code" tab holds a snippet that reproduces
    exactly that image. The "ranked list" tab ranks the images by any column (a metric too) and
    filters them by a pandas query (cells filtered out are greyed in the grid; a bad query shows a
    message). The selection stays on its image through sorting, filtering and axis changes.
    Every image is shown at a set size whatever its pixels, so a 3x3 sweep fits one screen.

    Works in JupyterLab, the classic notebook and Voila as is. In Colab, enable the widget manager
    once per notebook first::

        from google.colab import output
        output.enable_custom_widget_manager()

    Args:
        result: a `SweepResult` (from `run_sweep` or `load_sweep`).
        x, y: the swept columns shown across and down; None for the defaults.
        thumb: the largest side of the grid's thumbnails on screen, in pixels (they narrow with
            the output area).

    Returns:
        An `Explorer` (an `ipywidgets.VBox`).

    Example:
        >>> result = lab.load_sweep("runs/cat")
        >>> lab.explore(result)                          # last line of a cell: the widget shows
        >>> lab.explore(result, x="guidance_scale", y="seed", thumb=96)
    """
    return Explorer(result, x, y, thumb=thumb)
