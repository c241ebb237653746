"""Labelled X/Y/Z grids of a sweep, as a matplotlib figure or as one PIL image.

Both are pure: they read the sweep's images and return a new object; nothing is displayed or
written. The layout follows the web UIs' X/Y/Z plot: `x` values across the top, `y` values down
the left, one panel per `z` value, the init image beside the grid as reference, and a grey crossed
placeholder saying why where a cell has no usable image (the stored error, NaN output, not run).
Values that are URLs, paths or hub ids are labelled by their last path part (more of the path
when that is needed to tell two values apart), or by the labels the caller gives.

Limits: a `grid_image` past `MAX_MEGAPIXELS` (200 MP, AUTOMATIC1111's X/Y/Z plot default) or
`MAX_SIDE` px a side, and a `plot_grid` of more than `MAX_CELLS` cells, are refused before
anything is drawn, saying what fits (a smaller cell, ``where=``, ``split_by=``). ``split_by=``
makes one grid per value of a swept column (`SplitGrids`); `save_grid` writes them, one PNG per
value, and `open_grid` reads a grid back past PIL's decompression-bomb limit (about 89 MP with a
warning, 179 MP refused) without changing that limit for anything else.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import numbers
import re
import textwrap
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .errors import ValidationError
from .result import parameter_columns
from .store import read_png, write_png
from .values import LABEL_CHARS, format_value, is_null, norm_value
from .vocab import ERROR, FAILED_STATUSES, OK

BACKGROUND = (255, 255, 255)
PLACEHOLDER_FILL = (200, 200, 200)
PLACEHOLDER_CROSS = (140, 140, 140)
PLACEHOLDER_TEXT = (170, 0, 0)
MAX_SIDE = 16384  # px a side of a `grid_image`; larger images break most viewers and many encoders
# MP (millions of pixels) of one `grid_image` in all: AUTOMATIC1111's X/Y/Z plot's default limit
# ("img_max_size_mp"). PIL's own guard is lower (a warning past ~89 MP, an error past ~179 MP when
# opening a file), so a grid this package wrote is read back with `open_grid`.
MAX_MEGAPIXELS = 200
MAX_CELLS = 1000  # cells of one `plot_grid` figure: past this each would show as a stamp of a few px
MIN_CELL = 256  # px on screen: the least a cell of `plot_grid` shows at (tiny models make 64 px images)
MIN_PANEL_CELL = 128  # px: z panels go on more rows before their cells get smaller than this


# ----------------------------------------------------------------------------------------------
# rows, axes and cells (shared by plot_grid, grid_image, plots and the widget explorer)


def filter_rows(df: pd.DataFrame, where=None) -> pd.DataFrame:
    """Rows of ``df`` selected by ``where``.

    Args:
        df: a sweep table.
        where: None (all rows); a dict ``{column: value or list of values}``; a pandas query string
            (``"strength > 0.5 and seed == 0"``); or a callable taking the DataFrame and returning a
            boolean mask (or the filtered DataFrame).

    Example:
        >>> filter_rows(result.df, {"negative_prompt": "", "seed": [0, 1]})
    """
    if where is None:
        return df
    if isinstance(where, dict):
        mask = pd.Series(True, index=df.index)
        for column, value in where.items():
            if column not in df.columns:
                raise ValidationError(
                    f"`where` names column {column!r}, which the sweep does not have; columns: {list(df.columns)}"
                )
            values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
            wanted = {norm_value(v) for v in values}
            mask &= df[column].map(norm_value).isin(wanted)
        return df[mask]
    if isinstance(where, str):
        try:
            return df.query(where)
        except Exception as exc:  # pandas raises many types for a bad expression
            raise ValidationError(f"`where` query {where!r} failed: {exc}") from exc
    if callable(where):
        selected = where(df)
        if isinstance(selected, pd.DataFrame):
            return selected
        mask = np.asarray(selected, dtype=bool)
        if mask.shape != (len(df),):
            raise ValidationError(
                f"`where` callable must return a boolean mask of {len(df)} rows, got shape {mask.shape}"
            )
        return df[mask]
    raise ValidationError(
        f"`where` must be None, a dict, a query string or a callable, got {type(where).__name__}: {where!r}"
    )


_PATH_LABEL_CHARS = 48  # a path's short name is cut (keeping its end) only past this


def _path_parts(value) -> list[str] | None:
    """The parts of a URL (host, path parts; the query kept on the last), a file path or a hub id
    (``owner/name``); None for any other value."""
    if not isinstance(value, str) or "\n" in value:
        return None
    text = value.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        url = urllib.parse.urlsplit(text)
        parts = [url.netloc] + [p for p in url.path.split("/") if p]
        if url.query:
            parts[-1] += f"?{url.query}"
        return [p for p in parts if p] or None
    if any(c.isspace() for c in text) and not re.match(r"^(/|~|\.{1,2}[\\/]|[A-Za-z]:[\\/])", text):
        return None  # words with a slash ("tiny/sd15 -> tiny/sd15", a chain's models) are no path
    if "/" in text or "\\" in text:
        return [p for p in re.split(r"[\\/]+", text) if p] or None
    return None


def value_labels(column: str | None, values: list, labels: dict | None = None, *,
                 max_chars: int = LABEL_CHARS, ellipsis: str = "…") -> list[str]:
    """Labels for the values of one axis, in order.

    A value with a label in ``labels`` (``{normalised value: label}``, see `label_maps`) gets it.
    URLs, paths and hub ids get their last path part (``img2img-init.png``,
    ``stable-diffusion-v1-5``), with more of the path where two values would read the same.
    Prompts (columns named ``*prompt*``) and everything else read as `format_value` gives them.

    Example:
        >>> value_labels("model", ["a/sd15", "b/sd15", "stabilityai/sdxl-turbo"])
        ['a/sd15', 'b/sd15', 'sdxl-turbo']
    """
    given = [(labels or {}).get(norm_value(v)) for v in values]
    prompt = isinstance(column, str) and "prompt" in column
    parts = [None if prompt or g is not None else _path_parts(v) for v, g in zip(values, given)]
    depth = [1] * len(values)

    def text(i: int) -> str:
        if given[i] is not None:
            return given[i]
        if parts[i] is None:
            return format_value(values[i], max_chars, ellipsis)
        return "/".join(parts[i][-depth[i]:])

    while True:  # show more of a path while its short name is shared with another value
        texts = [text(i) for i in range(len(values))]
        seen = pd.Series(texts).value_counts()
        grow = [i for i, t in enumerate(texts) if parts[i] and seen[t] > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    limit = max(max_chars, _PATH_LABEL_CHARS)
    return [ellipsis + t[len(t) - limit + len(ellipsis):] if parts[i] and len(t) > limit else t
            for i, t in enumerate(texts)]


def label_maps(df: pd.DataFrame, labels, columns: list[str]) -> dict[str, dict]:
    """``labels`` as given to `plot_grid` (``{column: {value: label}}`` or ``{value: label}``, the
    latter for every column in ``columns``), checked against ``df`` and returned as
    ``{column: {normalised value: label}}``. Raises `ValidationError` for a bad one.
    """
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise ValidationError(
            f"`labels` must be a dict {{column: {{value: label}}}} or {{value: label}}, "
            f"got {type(labels).__name__}: {labels!r}"
        )
    nested = [isinstance(v, dict) for v in labels.values()]
    if any(nested) and not all(nested):
        raise ValidationError(
            f"`labels` must be either {{column: {{value: label}}}} or {{value: label}}, not a mix; got {labels!r}"
        )
    flat = not any(nested)
    if flat:
        per_column = {c: labels for c in columns}
    else:
        per_column = labels
        for column in per_column:
            if column not in df.columns:
                raise ValidationError(
                    f"`labels` names column {column!r}, which the sweep does not have; axes: {columns}"
                )
    out, matched = {}, set()
    for column, mapping in per_column.items():
        known = set(df[column].map(norm_value))
        out[column] = {}
        for value, label in mapping.items():
            if not isinstance(label, str):
                raise ValidationError(
                    f"`labels`: the label of {column}={value!r} must be a str, got {type(label).__name__}: {label!r}"
                )
            if norm_value(value) in known:
                out[column][norm_value(value)] = label
                matched.add(norm_value(value))
            elif not flat:
                shown = [format_value(v) for v in axis_values(df[column])]
                raise ValidationError(
                    f"`labels`: column {column!r} has no value {value!r}; its values: {shown[:8]}"
                    + (" ..." if len(shown) > 8 else "")
                )
    if flat:
        unknown = [v for v in labels if norm_value(v) not in matched]
        if unknown:
            raise ValidationError(
                f"`labels`: no value of the axes {columns} is {unknown[0]!r}; label values of those "
                f"columns, or pass {{column: {{value: label}}}}"
            )
    return out


def axis_values(series: pd.Series) -> list:
    """Distinct values of an axis: numbers sorted, anything else in order of first appearance."""
    seen = {}
    for value in series:
        seen.setdefault(norm_value(value), value)
    values = list(seen.values())
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and not is_null(v) for v in values)
    return sorted(values) if numeric else values


@dataclass
class GridLayout:
    """Which row lands in which cell of an X/Y/Z grid (``cells[(zi, yi, xi)]``: a row or absent)."""

    x: str
    y: str
    z: str | None
    x_values: list
    y_values: list
    z_values: list  # [None] when there is no z axis
    cells: dict
    df: pd.DataFrame

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z_values), len(self.y_values), len(self.x_values)

    def init_paths(self, labels: dict | None = None) -> list[tuple[str, str]]:
        """Distinct init images of the grid's rows, as ``(init_image_path, label)``; the label is
        the `image` value's short name (see `value_labels`), or its entry in ``labels``
        (``{normalised value: label}``)."""
        if "init_image_path" not in self.df.columns:
            return []
        out = {}
        for _, row in self.df.iterrows():
            path = row.get("init_image_path")
            if is_null(path) or path == "" or path in out:
                continue
            out[path] = row.get("image", "") if "image" in self.df.columns else ""
        names = value_labels("image", list(out.values()), labels)
        return [(path, name if "image" in self.df.columns else "") for path, name in zip(out, names)]


def grid_layout(result, x: str, y: str, z: str | None = None, where=None, *, caller: str = "plot_grid") -> GridLayout:
    """Validate the axes, filter the rows and place each row in its (z, y, x) cell.

    Raises `ValidationError` if an axis is not a column, if ``where`` selects no rows, or if a
    cell would hold several rows that differ in a column that is not an axis.
    """
    # 1. validate the axes
    df = result.df
    swept = result.swept if hasattr(result, "swept") else []
    axes = {}
    for name, column in (("x", x), ("y", y), ("z", z)):
        if column is None and name == "z":
            continue
        if not isinstance(column, str) or column not in df.columns:
            raise ValidationError(
                f"`{name}` must be a column of the sweep, got {column!r}; swept columns: {swept}"
            )
        for other_name, other in axes.items():
            if other == column:
                raise ValidationError(f"`{name}` must differ from `{other_name}`, both are {column!r}")
        axes[name] = column

    # 2. filter
    df = filter_rows(df, where)
    if df.empty:
        raise ValidationError(f"`where`={where!r} selects no rows of the sweep ({len(result.df)} rows)")

    # 3. refuse ambiguous cells: several rows per cell that differ in a non-axis parameter
    axis_columns = list(axes.values())
    normed = df.map(norm_value) if hasattr(df, "map") else df.applymap(norm_value)
    others = [c for c in parameter_columns(df) if c not in axis_columns]
    if others:
        counts = normed.groupby(axis_columns, dropna=False, sort=False)[others].nunique(dropna=False).max()
        varying = [c for c in others if counts[c] > 1]
        if varying:
            examples = ", ".join(
                f"{c}: {[format_value(v) for v in axis_values(df[c])][:4]}" for c in varying
            )
            first = varying[0]
            value = axis_values(df[first])[0]
            hint = f"pick one with `where={{{first!r}: {None if is_null(value) else value!r}}}`"
            if z is None:
                hint += f" or make it a panel axis with `z={first!r}`"
            if caller in ("plot_grid", "grid_image"):
                hint += f" or make one grid per value with `split_by={first!r}`"
            raise ValidationError(
                f"`{caller}`: several rows fall in one ({', '.join(axis_columns)}) cell because "
                f"{varying} also vary ({examples}); {hint}"
            )

    # 4. place rows
    x_values, y_values = axis_values(df[x]), axis_values(df[y])
    z_values = axis_values(df[z]) if z is not None else [None]
    x_index = {norm_value(v): i for i, v in enumerate(x_values)}
    y_index = {norm_value(v): i for i, v in enumerate(y_values)}
    z_index = {norm_value(v): i for i, v in enumerate(z_values)}
    cells = {}
    for (_, row), (_, nrow) in zip(df.iterrows(), normed.iterrows()):
        zi = z_index[nrow[z]] if z is not None else 0
        cell = (zi, y_index[nrow[y]], x_index[nrow[x]])
        # Rows that agree on every parameter are re-runs of the same cell: prefer one that worked.
        if cell not in cells or (cells[cell].get("status") != OK and row.get("status") == OK):
            cells[cell] = row
    return GridLayout(x, y, z, x_values, y_values, z_values, cells, df)


def cell_image(result, row) -> tuple[Image.Image | None, str | None]:
    """The image of a grid cell and, when there is none to show, why: "error", "nan", "not run"
    (no row: the cell is not in the sweep) or "missing" (its image file is gone)."""
    if row is None:
        return None, "not run"
    status = row.get("status", OK)
    if not is_null(status) and status not in (OK, ""):
        return None, str(status) if status in FAILED_STATUSES else ERROR
    image = result.image(row)
    return (image, None) if image is not None else (None, "missing")


_MESSAGES = {
    "nan": "nan: the output decoded to NaN (a black image)",
    "not run": "not run",
    "missing": "missing: its image file is gone",
}


def cell_message(row, reason: str) -> str:
    """What a placeholder cell says: for "error" the row's stored `error` text, otherwise what
    the reason means ("nan: the output decoded to NaN (a black image)", "not run", ...)."""
    if reason == "error":
        error = row.get("error") if row is not None else None
        text = "" if is_null(error) else " ".join(str(error).split())
        return f"error: {text}" if text else "error"
    return _MESSAGES.get(reason, reason)


def wrap_lines(text: str, width: int, max_lines: int, placeholder: str = " …") -> list[str]:
    """``text`` wrapped to lines of at most ``width`` characters, at most ``max_lines`` of them
    (the last ending in ``placeholder`` when text is left out)."""
    width, max_lines = max(4, width), max(1, max_lines)
    return textwrap.wrap(text, width, max_lines=max_lines, placeholder=placeholder, break_long_words=True) or [""]


def placeholder_tile(size: tuple[int, int], reason: str | None = None, font=None) -> Image.Image:
    """A grey tile with a cross, and ``reason`` written in the middle when given (wrapped and
    shortened to fit the tile)."""
    w, h = size
    tile = Image.new("RGB", size, PLACEHOLDER_FILL)
    draw = ImageDraw.Draw(tile)
    width = max(1, min(w, h) // 40)
    draw.line([(0, 0), (w - 1, h - 1)], fill=PLACEHOLDER_CROSS, width=width)
    draw.line([(0, h - 1), (w - 1, 0)], fill=PLACEHOLDER_CROSS, width=width)
    if reason:
        font = font or _font(max(8, min(w, h) // 8))
        spacing = 2
        line_h = font.getbbox("Ag")[3] + spacing
        chars = int((w - 10) / max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26))
        lines = wrap_lines(reason, chars, (h - 10) // max(1, line_h), placeholder=" ...")
        text = "\n".join(_fit_text(font, line, w - 10) for line in lines)
        box = draw.multiline_textbbox((0, 0), text, font=font, spacing=spacing, align="center")
        tw, th = box[2] - box[0], box[3] - box[1]
        x0, y0 = (w - tw) // 2, (h - th) // 2
        draw.rectangle([x0 - 3, y0 - 3, x0 + tw + 3, y0 + th + 3], fill=PLACEHOLDER_FILL)
        draw.multiline_text((x0 - box[0], y0 - box[1]), text, fill=PLACEHOLDER_TEXT, font=font,
                            spacing=spacing, align="center")
    return tile


def _reference_size(result, layout: GridLayout) -> tuple[int, int]:
    """(width, height) of the grid's images, read from a PNG header (nothing is decoded)."""
    for row in layout.cells.values():
        path = result.image_file(row)
        if path is not None and path.exists() and row.get("status", OK) == OK:
            with Image.open(path) as im:
                return im.size
    for rel, _ in layout.init_paths():
        with Image.open(result.out_dir / rel) as im:
            return im.size
    return (512, 512)


def _box(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """A box of the same aspect as ``size`` whose longest side is ``longest`` pixels."""
    w, h = size
    scale = longest / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _tiles(result, layout: GridLayout, zi: int, box: tuple[int, int], gutter: int, *, font=None):
    """The (y, x) tiles of panel ``zi`` in row-major order, each ``box`` plus a gutter, and the
    placeholders as ``[(yi, xi, reason, message)]`` (see `cell_message`). With ``font`` the
    message is written on the tile."""
    _, ny, nx = layout.shape
    tiles, placeholders = [], []
    for yi in range(ny):
        for xi in range(nx):
            row = layout.cells.get((zi, yi, xi))
            image, reason = cell_image(result, row)
            if image is None:
                message = cell_message(row, reason)
                fitted = placeholder_tile(box, message if font is not None else None, font)
                placeholders.append((yi, xi, reason, message))
            else:
                fitted = ImageOps.pad(image, box, method=Image.Resampling.LANCZOS, color=BACKGROUND)
            tile = Image.new("RGB", (box[0] + gutter, box[1] + gutter), BACKGROUND)
            tile.paste(fitted, (gutter // 2, gutter // 2))
            tiles.append(tile)
    return tiles, placeholders


def _mosaic(tiles: list[Image.Image], rows: int, cols: int) -> Image.Image:
    from diffusers.utils import make_image_grid

    return make_image_grid(tiles, rows=rows, cols=cols)


def _panel_shape(nz: int, per_row: int | None = None) -> tuple[int, int]:
    """(rows, cols) of z panels: side by side up to 3, then a near-square arrangement; at most
    ``per_row`` side by side (more rows instead) when given."""
    cols = nz if nz <= 3 else math.ceil(math.sqrt(nz))
    if per_row is not None:
        cols = max(1, min(cols, per_row))
    return math.ceil(nz / cols), cols


def _default_title(layout: GridLayout) -> str:
    parts = [f"x: {layout.x}", f"y: {layout.y}"] + ([f"z: {layout.z}"] if layout.z else [])
    title = "   ".join(parts)
    if "prompt" in layout.df.columns and layout.df["prompt"].map(norm_value).nunique() == 1:
        title += f"\nprompt: {format_value(layout.df['prompt'].iloc[0], 80)}"
    return title


# ----------------------------------------------------------------------------------------------
# one grid per value of a column (split_by), and the limits on one grid


class SplitGrids(dict):
    """One grid per value of a swept column, as ``split_by=`` gives them: ``{value: grid}``.

    The values come in the axis's order (numbers sorted, anything else in order of first
    appearance, as `axis_values`); each grid is a `plot_grid` figure or a `grid_image` image,
    titled ``axis=value`` under the grid's own title. ``axis`` names the column and ``labels``
    maps each value to the text of its title (``"seed=0"``). In Jupyter the grids show one
    below the other; `save_grid` writes one PNG per value.

    Example:
        >>> grids = lab.grid_image(result, z="negative_prompt", split_by="seed")
        >>> grids.axis, list(grids)
        ('seed', [0, 1])
    """

    def __init__(self, axis: str, grids, labels: dict):
        super().__init__(grids)
        self.axis = axis
        self.labels = dict(labels)

    def _repr_html_(self) -> str:
        images = []
        for grid in self.values():
            png = grid._repr_png_()  # a LabFigure's, or PIL's
            if png:
                data = base64.b64encode(png).decode("ascii")
                images.append(f"<div><img src='data:image/png;base64,{data}' alt='grid'></div>")
        return "".join(images)


@dataclass(frozen=True)
class _Part:
    """The rows of one grid: all of them (``title`` None), or those of one ``split_by`` value."""

    value: object
    title: str | None  # "axis=value" for one grid of a split
    where: object  # as `filter_rows` takes it


def _split_parts(result, split_by, where, maps: dict) -> list[_Part]:
    """One part per grid: the rows ``where`` selects, or one part per value of ``split_by`` among
    them. Raises `ValidationError` for a ``split_by`` that is not a swept column."""
    if split_by is None:
        return [_Part(None, None, where)]
    df = result.df
    swept = list(result.swept) if hasattr(result, "swept") else []
    if not isinstance(split_by, str) or split_by not in df.columns:
        raise ValidationError(
            f"`split_by` must be a swept column of the sweep, got {split_by!r}; swept columns: {swept}"
        )
    if split_by not in swept:
        raise ValidationError(
            f"`split_by` must be a swept column of the sweep, got {split_by!r}, which takes one value "
            f"in it; swept columns: {swept}"
        )
    rows = filter_rows(df, where)
    if rows.empty:
        return [_Part(None, None, where)]  # grid_layout says what `where` selected
    values = axis_values(rows[split_by])
    names = value_labels(split_by, values, maps.get(split_by))
    normed = rows[split_by].map(norm_value)
    parts = []
    for value, name in zip(values, names):
        keep = rows.index[(normed == norm_value(value)).to_numpy()]
        parts.append(_Part(value, f"{split_by}={name}", lambda d, keep=keep: d.loc[d.index.isin(keep)]))
    return parts


def _part_title(title: str, part: _Part) -> str:
    """The grid's title, and under it the ``axis=value`` of its part of a split."""
    return "\n".join(t for t in (title, part.title) if t)


def _one_value_grids(layout: GridLayout):
    """For each of the grid's z, y and x axes with several values: (axis, how many grids a
    ``split_by`` of it makes, the layout of one of them)."""
    for axis, field in ((layout.z, "z_values"), (layout.y, "y_values"), (layout.x, "x_values")):
        values = getattr(layout, field)
        if axis is not None and len(values) > 1:
            yield axis, len(values), dataclasses.replace(layout, **{field: values[:1]})


def _check_count(name: str, value, least: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        none = "None or " if allow_none else ""
        raise ValidationError(f"`{name}` must be {none}an int of at least {least}, got {value!r}")


def _check_cells(caller: str, layout: GridLayout, part: _Part, max_cells: int | None) -> None:
    """Refuse a grid of more than ``max_cells`` cells, naming the count and a ``split_by=`` of
    one of its axes that makes grids under the limit."""
    nz, ny, nx = layout.shape
    cells = nz * ny * nx
    if max_cells is None or cells <= max_cells:
        return
    shape = f"{nz} panels of {ny} x {nx}" if layout.z else f"{ny} x {nx}"
    hints = ["select fewer with `where=`"]
    for axis, count, one in (_one_value_grids(layout) if part.title is None else ()):
        per_grid = math.prod(one.shape)
        if per_grid <= max_cells:
            hints.append(f"make one grid per value with `split_by={axis!r}` ({count} grids of {per_grid:,} cells)")
            break
    hints.append("raise `max_cells`")
    of = f" for {part.title}" if part.title else ""
    raise ValidationError(
        f"`{caller}`{of} would draw {cells:,} cells ({shape}), more than `max_cells`={max_cells:,}; "
        + ", or ".join(hints)
    )


# ----------------------------------------------------------------------------------------------
# matplotlib


def _label_maps(result, labels, x: str, y: str, z: str | None, split_by: str | None = None) -> dict:
    """``labels`` checked against the grid's axes (and `image`, and the ``split_by`` column)."""
    columns = [c for c in (x, y, z, split_by) if isinstance(c, str)]
    columns += ["image"] if "image" in result.df.columns else []
    return label_maps(result.df, labels, list(dict.fromkeys(columns)))


def _axis_names(result, layout: GridLayout, labels, ellipsis: str = "…",
                split_by: str | None = None) -> tuple[dict, list, list, list]:
    """The checked ``labels`` maps and the x, y and z value labels of a grid."""
    maps = _label_maps(result, labels, layout.x, layout.y, layout.z, split_by)
    x_labels, y_labels, z_labels = (
        value_labels(column, values, maps.get(column), ellipsis=ellipsis) if column else [""]
        for column, values in ((layout.x, layout.x_values), (layout.y, layout.y_values), (layout.z, layout.z_values))
    )
    return maps, x_labels, y_labels, z_labels


def _fit_cells(fig, ax, nx: int, ny: int, aspect: float, cell_w: float, max_figsize) -> float:
    """Size ``fig`` so each cell of panel ``ax`` (``nx`` x ``ny`` cells of ``aspect`` height/width)
    is ``cell_w`` inches wide, or as wide as ``max_figsize`` allows; returns the cell width.

    The constrained layout sets aside fixed room for titles and labels and shares the rest out
    in fixed ratios, so the panel's size is linear in the figure's: two layouts measure it.
    """
    engine = fig.get_layout_engine()

    def panel(width: float, height: float) -> tuple[float, float]:
        fig.set_size_inches(width, height)
        engine.execute(fig)
        box = ax.get_position(original=True)
        return box.width * width, box.height * height

    # roomy enough that the layout never collapses
    w0, h0 = max_figsize[0] + nx * cell_w + 2, max_figsize[1] + ny * cell_w * aspect + 2
    pw0, ph0 = panel(w0, h0)
    pw1, ph1 = panel(w0 + 1, h0 + 1)
    slope_w, slope_h = max(pw1 - pw0, 1e-6), max(ph1 - ph0, 1e-6)
    fits = min(
        cell_w,
        (pw0 + (max_figsize[0] - w0) * slope_w) / nx,
        (ph0 + (max_figsize[1] - h0) * slope_h) / (ny * aspect),
    )
    cell_w = max(fits, 0.05)
    width = w0 + (nx * cell_w - pw0) / slope_w
    height = h0 + (ny * cell_w * aspect - ph0) / slope_h
    fig.set_size_inches(min(width, max_figsize[0]), min(height, max_figsize[1]))
    # Lay out at the final size: the next layout starts from these positions, and the images'
    # fixed aspect would otherwise make it measure margins against the last trial size.
    engine.execute(fig)
    return cell_w


def plot_grid(
    result,
    x: str = "strength",
    y: str = "guidance_scale",
    z: str | None = None,
    where=None,
    *,
    split_by: str | None = None,
    labels: dict | None = None,
    thumb: int | None = None,
    max_cells: int | None = MAX_CELLS,
    max_figsize: tuple[float, float] = (16.0, 12.0),
    show_init: bool = True,
    title: str | None = None,
):
    """Plot a sweep as a labelled X/Y(/Z) grid of images.

    Each z value gets one panel (an Axes showing the panel's cells as one image), titled
    ``z=value``, with the x values along its top, the y values down its left and the parameter
    names as axis titles. The init image(s) are shown to the left as reference. A failed or
    missing cell is grey with a cross and says why: the stored error, NaN output, "not run".

    Cells are shown at the images' own size and at least `MIN_CELL` (256) pixels, so one cell
    or a small grid reads at full size; larger grids shrink to fit ``max_figsize``. A grid of
    more than ``max_cells`` cells is refused before anything is drawn.

    Args:
        result: a `SweepResult`.
        x, y: columns for the grid's columns and rows (diffusers names, e.g. ``"strength"``).
        z: optional column with one panel per value.
        where: rows to show: a dict ``{column: value or [values]}``, a pandas query string or a
            callable on the DataFrame (see `filter_rows`). Every other swept column must end up
            with one value per cell.
        split_by: a swept column (``"seed"``): one figure per value of it, each titled
            ``split_by=value`` under ``title``. It may also be one of the axes (one panel, row
            or column per figure).
        labels: labels to show instead of values: ``{column: {value: label}}``, or
            ``{value: label}`` for the values of any axis (and of `image`, naming the init
            images, and of ``split_by``). By default URLs, paths and hub ids show their last
            path part.
        thumb: the thumbnail size: longest side of each cell on screen, in pixels (an int of at
            least 8); default the images' own size, at least 256. Lowered to fit ``max_figsize``.
        max_cells: most cells of one figure (every panel's, placeholders included); default
            `MAX_CELLS` (1,000), past which each cell is a stamp of a few pixels. None: no limit.
        max_figsize: (width, height) bound of the figure in inches.
        show_init: show the init image(s) beside the grid.
        title: figure title; by default the axes and, when it is the same for all rows, the prompt.

    Returns:
        A `matplotlib.figure.Figure` (not attached to pyplot; in a notebook it displays itself
        when it is the cell's last value, or save it with ``fig.savefig(...)``). With
        ``split_by``: a `SplitGrids`, the dict ``{value: figure}`` in the axis's order.

    Example:
        >>> fig = lab.plot_grid(result, x="strength", y="guidance_scale", z="negative_prompt",
        ...                     where={"seed": 0}, labels={"negative_prompt": {None: "no negative"}})
        >>> fig.savefig("grid.png")
        >>> figs = lab.plot_grid(result, z="negative_prompt", split_by="seed")   # {0: fig, 1: fig}
    """
    # 1. validate; one part per figure (all rows, or those of one `split_by` value)
    _check_plot_sizes(thumb, max_figsize)
    _check_count("max_cells", max_cells, 1)
    parts = _split_parts(result, split_by, where, _label_maps(result, labels, x, y, z, split_by))

    # 2. place rows in cells, every figure's before any is drawn
    layouts = []
    for part in parts:
        layout = grid_layout(result, x, y, z, part.where, caller="plot_grid")
        _check_cells("plot_grid", layout, part, max_cells)
        layouts.append(layout)

    # 3. draw
    figures = []
    for part, layout in zip(parts, layouts):
        grid_title = _part_title(_default_title(layout) if title is None else title, part)
        figures.append(_plot_figure(result, layout, labels, split_by, thumb, max_figsize, show_init, grid_title))
    if split_by is None:
        return figures[0]
    return SplitGrids(split_by, ((p.value, f) for p, f in zip(parts, figures)), {p.value: p.title for p in parts})


def _plot_figure(result, layout: GridLayout, labels, split_by, thumb, max_figsize, show_init: bool, title: str):
    """`plot_grid`'s figure of one grid, its rows placed in ``layout``."""
    from .figures import LabFigure  # matplotlib: imported on the first plot, not with the package

    # 1. names; panels side by side while their cells stay readable
    maps, x_labels, y_labels, z_labels = _axis_names(result, layout, labels, split_by=split_by)
    nz, ny, nx = layout.shape
    panel_shape = _panel_shape(nz, per_row=_panels_per_row(nx, max_figsize, show_init))
    inits = layout.init_paths(maps.get("image")) if show_init else []

    # 2. the cell size wanted: the images' own (at least MIN_CELL px) or `thumb`; a first guess
    #    of what fits sets the font size
    fig = LabFigure(layout="constrained")
    ref = _reference_size(result, layout)
    aspect = ref[1] / ref[0]  # height / width of a cell
    longest = thumb if thumb is not None else max(max(ref), MIN_CELL)
    cell_w = longest / fig.dpi / max(1.0, aspect)
    fontsize = _font_size_for(cell_w, aspect, layout, panel_shape, bool(inits), max_figsize)

    # 3. the figure's parts: title, a reference column, one Axes per z panel with its labels
    fig.suptitle(title, fontsize=fontsize + 2)
    init_axes, main_spec = _add_init_axes(fig, inits, panel_shape[1] * nx, fontsize)
    panels = _add_panels(fig, main_spec, layout, panel_shape, (x_labels, y_labels, z_labels), fontsize)

    # 4. size the figure around cells of the wanted size, within max_figsize
    cell_w = _fit_cells(fig, panels[0], nx, ny, aspect, cell_w, max_figsize)

    # 5. the images, made at the size they show at (capped so a panel stays under ~2k px)
    cell_px = cell_w * fig.dpi * max(1.0, aspect)  # longest side of a cell, gutter included
    gutter = max(2, round(cell_px) // 40)
    box = _box(ref, max(4, min(round(cell_px) - gutter, 2048 // max(nx, ny))))
    _show_inits(result, init_axes, inits, box)
    for zi, ax in enumerate(panels):
        _show_panel(result, layout, zi, ax, box, gutter, cell_pt=cell_w * 72, aspect=aspect, fontsize=fontsize)
    return fig


_SHOWN_INITS = 4  # init images beside a `plot_grid`; the last one's title counts the others


def _check_plot_sizes(thumb, max_figsize) -> None:
    """`plot_grid`'s `thumb` and `max_figsize`, or a `ValidationError` naming the bad one."""
    if thumb is not None and (not isinstance(thumb, int) or isinstance(thumb, bool) or thumb < 8):
        raise ValidationError(f"`thumb` must be None or an int of at least 8 pixels, got {thumb!r}")
    if (not isinstance(max_figsize, (tuple, list)) or len(max_figsize) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 for v in max_figsize)):
        raise ValidationError(f"`max_figsize` must be (width, height) in inches, got {max_figsize!r}")


def _panels_per_row(nx: int, max_figsize, show_init: bool) -> int:
    """How many z panels of ``nx`` columns go side by side: as many as keep their cells
    `MIN_PANEL_CELL` px across ``max_figsize``'s width (a 4x4 grid in three panels wraps to two
    rows instead of shrinking every picture to a stamp); at least one."""
    from matplotlib import rcParams

    cell_in = MIN_PANEL_CELL / rcParams["figure.dpi"]
    return max(1, int((max_figsize[0] - 1.6 - (cell_in if show_init else 0)) // (nx * cell_in + 0.6)))


def _font_size_for(cell_w: float, aspect: float, layout: GridLayout, panel_shape, with_inits: bool,
                   max_figsize) -> float:
    """The labels' font size: from a first guess of the cell width that fits ``max_figsize``;
    big cells get big labels, as the figure may be shown scaled down (6 to 13 pt)."""
    _, ny, nx = layout.shape
    zr, zc = panel_shape
    cols, rows = (1 if with_inits else 0) + zc * nx, zr * ny
    guess = min(cell_w, (max_figsize[0] - 1.6) / cols, (max_figsize[1] - 0.9 - 0.6 * zr) / (rows * aspect))
    return float(np.clip(guess * 7, 6, 13))


def _add_init_axes(fig, inits: list, main_width: int, fontsize: float):
    """The reference column of init images (the first `_SHOWN_INITS`, titled), left of a main area
    ``main_width`` columns wide; returns the init Axes and the main area's gridspec slot."""
    shown = inits[:_SHOWN_INITS]
    if not shown:
        return [], fig.add_gridspec(1, 1)[0]
    outer = fig.add_gridspec(1, 2, width_ratios=[1, main_width])
    ref_spec = outer[0].subgridspec(len(shown), 1)
    axes = []
    for i, (_, label) in enumerate(shown):
        ax = fig.add_subplot(ref_spec[i])
        name = "init image" if len(inits) == 1 or not label else f"init image\n{label}"
        if i == len(shown) - 1 and len(inits) > len(shown):
            name += f"\n(+{len(inits) - len(shown)} more)"
        ax.set_title(name, fontsize=fontsize)
        ax.set_axis_off()
        axes.append(ax)
    return axes, outer[1]


def _add_panels(fig, main_spec, layout: GridLayout, panel_shape, labels, fontsize: float) -> list:
    """One Axes per z panel in ``main_spec``: the x values along its top, the y values down its
    left, the axis names as titles (``labels``: the x, y and z value labels)."""
    nz, ny, nx = layout.shape
    zr, zc = panel_shape
    x_labels, y_labels, z_labels = labels
    panel_spec = main_spec.subgridspec(zr, zc)
    panels = []
    for zi in range(nz):
        # data coordinates count cells: cell (yi, xi) spans [xi, xi + 1] x [yi, yi + 1]
        ax = fig.add_subplot(panel_spec[zi // zc, zi % zc], xlim=(0, nx), ylim=(ny, 0))
        ax.set_xticks([i + 0.5 for i in range(nx)], x_labels, fontsize=fontsize,
                      rotation=45 if nx > 6 else 0, ha="left" if nx > 6 else "center")
        ax.set_yticks([i + 0.5 for i in range(ny)], y_labels, fontsize=fontsize)
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
        ax.tick_params(length=0)
        ax.set_xlabel(layout.x, fontsize=fontsize + 1, fontweight="bold")
        ax.set_ylabel(layout.y, fontsize=fontsize + 1, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_visible(False)
        if layout.z is not None:
            ax.set_title(f"{layout.z}={z_labels[zi]}", fontsize=fontsize + 1)
        panels.append(ax)
    return panels


def _show_inits(result, init_axes: list, inits: list, box: tuple[int, int]) -> None:
    """Each init Axes shows its init image, fitted into ``box``."""
    for ax, (rel, _) in zip(init_axes, inits):
        with Image.open(result.out_dir / rel) as im:
            ax.imshow(np.asarray(ImageOps.contain(im.convert("RGB"), box, Image.Resampling.LANCZOS)))
        ax.images[-1].set_gid("init")


def _show_panel(result, layout: GridLayout, zi: int, ax, box: tuple[int, int], gutter: int, *,
                cell_pt: float, aspect: float, fontsize: float) -> None:
    """Panel ``zi``'s cells as one image on ``ax``, each placeholder's message written over it
    (wrapped to a cell ``cell_pt`` points wide)."""
    _, ny, nx = layout.shape
    tiles, placeholders = _tiles(result, layout, zi, box, gutter)
    ax.imshow(np.asarray(_mosaic(tiles, ny, nx)), extent=(0, nx, ny, 0),
              aspect=(box[1] + gutter) / (box[0] + gutter), interpolation="antialiased")
    ax.images[-1].set_gid(f"panel:{zi}")
    for yi, xi, reason, message in placeholders:
        lines = wrap_lines(message, int(0.85 * cell_pt / (0.6 * fontsize)),
                           int(0.8 * cell_pt * aspect / (1.3 * fontsize)))
        ax.text(xi + 0.5, yi + 0.5, "\n".join(lines), ha="center", va="center", color="#aa0000",
                fontsize=fontsize, fontweight="bold", gid=f"placeholder:{reason}", clip_on=True,
                bbox={"facecolor": "#c8c8c8", "edgecolor": "none", "pad": 1})


# ----------------------------------------------------------------------------------------------
# one PIL image


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def _fit_text(font, text: str, width: int) -> str:
    """``text`` shortened with "..." until it fits in ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..." if text else ""


@dataclass
class _Geometry:
    box: tuple[int, int]
    gutter: int
    font_size: int
    line: int  # height of a text line
    pad: int
    title_h: int
    init_w: int
    label_w: int
    panel_w: int
    panel_h: int
    header_h: int  # z title + x title + x values, above the cells of a panel
    zr: int
    zc: int
    size: tuple[int, int]


def _geometry(layout: GridLayout, box: tuple[int, int], n_inits: int, title: str, y_labels: list[str]) -> _Geometry:
    """Where everything goes in `grid_image`; pure arithmetic, so sizes are known before drawing."""
    nz, ny, nx = layout.shape
    zr, zc = _panel_shape(nz)
    cell = max(box)
    font_size = max(10, cell // 14)
    line, pad = round(font_size * 1.4), max(4, font_size // 2)
    gutter = max(2, cell // 64)
    title_h = (title.count("\n") + 1) * line + pad if title else 0
    init_w = box[0] + 2 * pad if n_inits else 0
    font, bold = _font(font_size), _font(round(font_size * 1.15))
    widest = max([font.getlength(text) for text in y_labels] + [bold.getlength(layout.y)])
    label_w = int(min(max(widest + 2 * pad, 4 * font_size), max(box[0], 4 * font_size)))
    header_h = (line if layout.z else 0) + 2 * line
    panel_w = label_w + nx * (box[0] + gutter)
    panel_h = header_h + ny * (box[1] + gutter)
    width = 2 * pad + init_w + zc * panel_w + (zc - 1) * 2 * pad
    height = 2 * pad + title_h + max(zr * panel_h + (zr - 1) * 2 * pad, header_h + n_inits * (box[1] + line + pad))
    return _Geometry(box, gutter, font_size, line, pad, title_h, init_w, label_w, panel_w, panel_h, header_h,
                     zr, zc, (width, height))


def grid_image(
    result,
    x: str = "strength",
    y: str = "guidance_scale",
    z: str | None = None,
    where=None,
    *,
    split_by: str | None = None,
    labels: dict | None = None,
    cell_size: int = 256,
    max_megapixels: float = MAX_MEGAPIXELS,
    max_side: int = MAX_SIDE,
    max_cells: int | None = None,
    show_init: bool = True,
    title: str | None = None,
):
    """The same labelled grid as `plot_grid`, as one PIL image for saving or sharing.

    The size is computed first, and a grid past ``max_megapixels`` in all or ``max_side``
    pixels a side is refused before any image is allocated, with a `ValidationError` that gives
    its size and what fits: a smaller ``cell_size``, fewer cells with ``where=``, or one grid
    per value of one of its axes with ``split_by=``. Save it with `save_grid` (atomic, one file
    per value of a split) and read it back with `open_grid`: PIL's `Image.open` refuses images
    past ~179 MP.

    Args:
        result: a `SweepResult`.
        x, y, z, where, labels: as in `plot_grid`.
        split_by: a swept column (``"seed"``): one image per value of it, each titled
            ``split_by=value`` under ``title``, each within the limits. All of them are held in
            memory; for many large ones, save each with ``where={split_by: value}`` instead.
        cell_size: the thumbnail size: longest side of each cell's image, in pixels (an int of
            at least 16); the labels' font grows with it.
        max_megapixels: limit on width x height of one image, in millions of pixels; default
            `MAX_MEGAPIXELS` (200, as AUTOMATIC1111's X/Y/Z plot).
        max_side: limit on either side of one image, in pixels; default `MAX_SIDE` (16384).
        max_cells: most cells of one image (every panel's, placeholders included); default None,
            no limit beyond the pixels'.
        show_init: draw the init image(s) in a column on the left.
        title: text above the grid; by default the axes and, when shared, the prompt; "" for none.

    Returns:
        A `PIL.Image.Image` (RGB). With ``split_by``: a `SplitGrids`, the dict
        ``{value: image}`` in the axis's order.

    Example:
        >>> lab.save_grid(lab.grid_image(result, x="strength", y="guidance_scale", cell_size=192), "grid.png")
        >>> grids = lab.grid_image(result, z="negative_prompt", split_by="seed")   # {0: image, 1: image}
        >>> lab.save_grid(grids, "grid.png")   # grid_seed=0.png, grid_seed=1.png
    """
    # 1. validate; one part per image (all rows, or those of one `split_by` value)
    _check_image_limits(cell_size, max_megapixels, max_side, max_cells)
    parts = _split_parts(result, split_by, where, _label_maps(result, labels, x, y, z, split_by))

    # 2. place rows and measure every image; one past a limit is refused before any is allocated
    plans = [_plan_image(result, part, (x, y, z), labels, split_by, cell_size, show_init, title,
                         (max_megapixels, max_side, max_cells)) for part in parts]

    # 3. draw: the title, the init images, then each panel (its labels and its cells)
    images = [_draw_image(result, plan) for plan in plans]
    if split_by is None:
        return images[0]
    return SplitGrids(split_by, ((p.value, im) for p, im in zip(parts, images)), {p.value: p.title for p in parts})


def check_cell_size(cell_size) -> None:
    """A grid's `cell_size` (the thumbnail's longest side): an int of at least 16 px."""
    if not isinstance(cell_size, int) or isinstance(cell_size, bool) or cell_size < 16:
        raise ValidationError(f"`cell_size` must be an int of at least 16 pixels, got {cell_size!r}")


def _check_image_limits(cell_size, max_megapixels, max_side, max_cells) -> None:
    """`grid_image`'s sizes and limits, or a `ValidationError` naming the bad one."""
    check_cell_size(cell_size)
    _check_megapixels(max_megapixels)
    _check_count("max_side", max_side, 16, allow_none=False)
    _check_count("max_cells", max_cells, 1)


def _check_megapixels(max_megapixels) -> None:
    if (not isinstance(max_megapixels, numbers.Real) or isinstance(max_megapixels, bool)
            or not math.isfinite(max_megapixels) or max_megapixels <= 0):
        raise ValidationError(f"`max_megapixels` must be a positive number of megapixels, got {max_megapixels!r}")


@dataclass
class _ImagePlan:
    """One image of `grid_image`, measured before anything is drawn."""

    layout: GridLayout
    names: tuple[list, list, list]  # the x, y and z value labels
    inits: list
    title: str
    geo: _Geometry


def _plan_image(result, part: _Part, axes, labels, split_by, cell_size: int, show_init: bool, title,
                limits) -> _ImagePlan:
    """Place the rows of ``part`` and measure its image; refuse it past ``limits``
    (``(max_megapixels, max_side, max_cells)``)."""
    max_megapixels, max_side, max_cells = limits
    layout = grid_layout(result, *axes, part.where, caller="grid_image")
    _check_cells("grid_image", layout, part, max_cells)
    maps, x_labels, y_labels, z_labels = _axis_names(result, layout, labels, ellipsis="...", split_by=split_by)
    inits = layout.init_paths(maps.get("image")) if show_init else []
    title = _part_title(_default_title(layout) if title is None else title, part)
    ref = _reference_size(result, layout)

    def size_at(grid: GridLayout, cell: int, text: str = title) -> tuple[int, int]:
        return _geometry(grid, _box(ref, cell), len(inits), text, y_labels).size

    def fits(size: tuple[int, int]) -> bool:
        return max(size) <= max_side and size[0] * size[1] <= max_megapixels * 1_000_000

    geo = _geometry(layout, _box(ref, cell_size), len(inits), title, y_labels)
    if not fits(geo.size):
        # 1. what is past which limit
        width, height = geo.size
        past = []
        if width * height > max_megapixels * 1_000_000:
            past.append(f"{max_megapixels:g} MP in all (`max_megapixels`)")
        if max(width, height) > max_side:
            past.append(f"{max_side} px a side (`max_side`)")
        # 2. what fits: the largest smaller cell, fewer cells, one grid per value of an axis
        smaller = _largest_fitting(lambda cell: fits(size_at(layout, cell)), 16, cell_size - 1)
        hints = [f"pass a smaller `cell_size` ({smaller} fits)"] if smaller else []
        hints.append("select fewer cells with `where=`")
        for axis, count, one in (_one_value_grids(layout) if part.title is None else ()):
            size = size_at(one, cell_size, f"{title}\n{axis}")
            if fits(size):
                hints.append(f"make one grid per value with `split_by={axis!r}` "
                             f"({count} grids of {size[0]} x {size[1]} px = {size[0] * size[1] / 1e6:.1f} MP)")
                break
        of = f" for {part.title}" if part.title else ""
        raise ValidationError(
            f"`grid_image`{of} would be {width} x {height} px = {width * height / 1e6:,.1f} MP "
            f"({math.prod(layout.shape):,} cells at `cell_size`={cell_size}), past the limit of {' and '.join(past)}; "
            f"to fit it, {', or '.join(hints)}"
            + ("" if smaller else f" (no `cell_size` fits: 16 px cells make {' x '.join(map(str, size_at(layout, 16)))} px)")
        )
    return _ImagePlan(layout, (x_labels, y_labels, z_labels), inits, title, geo)


def _largest_fitting(fits, low: int, high: int) -> int | None:
    """The largest int in [low, high] for which ``fits`` holds (it holds up to some value, then
    no more), or None."""
    best = None
    while low <= high:
        mid = (low + high) // 2
        if fits(mid):
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best


def _draw_image(result, plan: _ImagePlan) -> Image.Image:
    """The image of one measured grid: the title, the init images, then each panel."""
    geo = plan.geo
    canvas = Image.new("RGB", geo.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    fonts = (_font(geo.font_size), _font(round(geo.font_size * 1.15)))  # text, titles
    top = _draw_title(draw, plan.title, geo, fonts[1])
    _draw_inits(canvas, draw, result, plan.inits, geo, top, fonts[0])
    for zi in range(plan.layout.shape[0]):
        _draw_panel(canvas, draw, result, plan.layout, zi, geo, top, fonts, plan.names)
    return canvas


_INK = (0, 0, 0)  # the text of `grid_image`


def _draw_title(draw, title: str, geo: _Geometry, bold) -> int:
    """The title's lines at the top; returns where the grid starts below it (y, px)."""
    for i, text in enumerate(title.split("\n") if title else []):
        draw.text((geo.pad, geo.pad + i * geo.line), _fit_text(bold, text, geo.size[0] - 2 * geo.pad),
                  fill=_INK, font=bold)
    return geo.pad + geo.title_h


def _draw_inits(canvas, draw, result, inits: list, geo: _Geometry, top: int, font) -> None:
    """The init images in a column on the left, each under its name."""
    box, pad, line = geo.box, geo.pad, geo.line
    for i, (rel, label) in enumerate(inits):
        y0 = top + geo.header_h + i * (box[1] + line + pad)
        name = "init image" if len(inits) == 1 or not label else f"init: {label}"
        draw.text((pad, y0 - line + 2), _fit_text(font, name, geo.init_w - pad), fill=_INK, font=font)
        with Image.open(result.out_dir / rel) as im:
            canvas.paste(ImageOps.pad(im.convert("RGB"), box, method=Image.Resampling.LANCZOS, color=BACKGROUND), (pad, y0))


def _draw_panel(canvas, draw, result, layout: GridLayout, zi: int, geo: _Geometry, top: int, fonts, labels) -> None:
    """Panel ``zi`` at its place: its z title, the axis titles, the x and y value labels
    (``labels``: the x, y and z value labels), then its cells."""
    font, bold = fonts
    x_labels, y_labels, z_labels = labels
    _, ny, nx = layout.shape
    box, pad, line = geo.box, geo.pad, geo.line
    cell_w = box[0] + geo.gutter
    px = pad + geo.init_w + (zi % geo.zc) * (geo.panel_w + 2 * pad)
    py = top + (zi // geo.zc) * (geo.panel_h + 2 * pad)
    cells_x = px + geo.label_w
    y_text = py
    if layout.z:
        draw.text((cells_x, y_text), _fit_text(bold, f"{layout.z}={z_labels[zi]}", nx * cell_w), fill=_INK, font=bold)
        y_text += line
    # axis titles: x centred over the columns, y in the corner above the row labels
    x_title = _fit_text(bold, layout.x, nx * cell_w)
    draw.text((cells_x + (nx * cell_w - bold.getlength(x_title)) / 2, y_text), x_title, fill=_INK, font=bold)
    draw.text((px, y_text + line), _fit_text(bold, layout.y, geo.label_w - pad), fill=_INK, font=bold)
    y_text += line
    for xi, label in enumerate(x_labels):
        text = _fit_text(font, label, cell_w - pad)
        draw.text((cells_x + xi * cell_w + (cell_w - font.getlength(text)) / 2, y_text), text, fill=_INK, font=font)
    cells_y = py + geo.header_h
    for yi, label in enumerate(y_labels):
        text = _fit_text(font, label, geo.label_w - pad)
        y0 = cells_y + yi * (box[1] + geo.gutter) + box[1] // 2 - line // 2
        draw.text((cells_x - pad - font.getlength(text), y0), text, fill=_INK, font=font)
    tiles, _ = _tiles(result, layout, zi, box, geo.gutter, font=font)
    canvas.paste(_mosaic(tiles, ny, nx), (cells_x, cells_y))


# ----------------------------------------------------------------------------------------------
# grid files


_FILE_PART_CHARS = 60  # a value's part of a file name is cut past this


def _file_parts(grids: SplitGrids) -> list[str]:
    """``<axis>=<value>`` of each grid of a split, safe in a file name on any system and distinct."""
    names, seen = [], set()
    for i, (value, text) in enumerate(grids.labels.items()):
        label = text[len(grids.axis) + 1:] if text and text.startswith(f"{grids.axis}=") else format_value(value)
        safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", label).strip("-.")[:_FILE_PART_CHARS].strip("-.") or "empty"
        name = f"{re.sub(r'[^A-Za-z0-9._+-]+', '-', grids.axis)}={safe}"
        if name in seen:
            name = f"{name}-{i}"
        seen.add(name)
        names.append(name)
    return names


def save_grid(grids, path) -> Path | dict:
    """Write what `grid_image` returned as PNG, atomically: one image to ``path``; one grid per
    value of a ``split_by`` to one file each beside it, named ``<stem>_<axis>=<value>.png``
    (``grid_seed=0.png``, ``grid_negative_prompt=ugly-deformed.png``: the value as labelled,
    made safe for a file name).

    Args:
        grids: a `PIL.Image.Image`, or the `SplitGrids` of images `grid_image` returns with ``split_by``.
        path: a ``.png`` file; with a split, the name the files start from.

    Returns:
        The `Path` written, or ``{value: Path}`` in the grids' order.

    Example:
        >>> lab.save_grid(lab.grid_image(result, z="negative_prompt", split_by="seed"), "runs/demo/grid.png")
        {0: PosixPath('runs/demo/grid_seed=0.png'), 1: PosixPath('runs/demo/grid_seed=1.png')}
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValidationError(f"`path` must name a .png file, got {str(path)!r}")
    if isinstance(grids, Image.Image):
        return write_png(path, grids)
    if not isinstance(grids, SplitGrids) or not all(isinstance(g, Image.Image) for g in grids.values()):
        raise ValidationError(
            f"`grids` must be what `grid_image` returns (a PIL image, or one per value of `split_by`), "
            f"got {type(grids).__name__}"
        )
    return {value: write_png(path.with_name(f"{path.stem}_{name}{path.suffix}"), image)
            for (value, image), name in zip(grids.items(), _file_parts(grids))}


def open_grid(path, *, max_megapixels: float = MAX_MEGAPIXELS) -> Image.Image:
    """A grid PNG this package wrote (`save_grid`), read whole up to ``max_megapixels``.

    PIL's `Image.open` warns past ``PIL.Image.MAX_IMAGE_PIXELS`` (~89 MP) and refuses twice that
    (`DecompressionBombError`), a guard against unknown files that a grid of up to
    `MAX_MEGAPIXELS` (200 MP) trips. This reads it with PIL's PNG reader and ``max_megapixels``
    as the limit instead; PIL's limit is not changed, not even for a moment, so every other
    reader (other threads included) keeps its guard.

    Example:
        >>> grid = lab.open_grid("runs/demo/grid.png")
    """
    _check_megapixels(max_megapixels)
    return read_png(path, max_pixels=int(max_megapixels * 1_000_000))


def grid_pixel_size(nx: int, ny: int = 1, nz: int = 1, *, image_size: tuple[int, int] = (512, 512),
                    cell_size: int = 256, n_inits: int = 1, x: str = "x", y: str = "y", z: str | None = None,
                    title: str = "grid") -> tuple[int, int]:
    """The (width, height) in pixels `grid_image` would draw for a grid of `nx` x `ny` cells in
    `nz` panels of images of `image_size`, before any image exists (what `lab.plan` reports).

    The same arithmetic as `grid_image` with one-line labels, so it is exact up to the width of
    the longest y label (here a short one is assumed).

    Example:
        >>> grid_pixel_size(4, 3, image_size=(512, 512), cell_size=256)
        (1404, 882)
    """
    check_cell_size(cell_size)
    for name, value in (("nx", nx), ("ny", ny), ("nz", nz), ("n_inits", n_inits)):
        _check_count(name, value, 0 if name == "n_inits" else 1, allow_none=False)
    layout = GridLayout(x=x, y=y, z=z if nz > 1 else None, x_values=[None] * nx, y_values=[None] * ny,
                        z_values=[None] * nz, cells={}, df=pd.DataFrame())
    box = _box(tuple(int(v) for v in image_size), cell_size)
    return _geometry(layout, box, n_inits, title, ["0.00"] * ny).size
