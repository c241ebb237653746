"""Labelled X/Y/Z grids of a sweep, as a matplotlib figure or as one PIL image.

Both are pure: they read the sweep's images and return a new object; nothing is displayed or
written. The layout follows the web UIs' X/Y/Z plot: `x` values across the top, `y` values down
the left, one panel per `z` value, the init image beside the grid as reference, and a grey crossed
placeholder (labelled "error", "nan" or "missing") where a cell has no usable image.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .errors import ValidationError
from .result import BOOKKEEPING_COLUMNS, METRIC_COLUMNS

BACKGROUND = (255, 255, 255)
PLACEHOLDER_FILL = (200, 200, 200)
PLACEHOLDER_CROSS = (140, 140, 140)
PLACEHOLDER_TEXT = (170, 0, 0)
MAX_SIDE = 16384  # px; larger images break most viewers and many encoders
_LABEL_CHARS = 28  # labels longer than this (prompts, URLs) are shortened
_NULL = "\x00<null>"  # stands for None/NaN when grouping cell values


# ----------------------------------------------------------------------------------------------
# rows, axes and cells (shared by plot_grid, grid_image, plots and the widget explorer)


def _is_null_value(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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
            wanted = {_norm(v) for v in values}
            mask &= df[column].map(_norm).isin(wanted)
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


def _norm(value):
    """A hashable stand-in for a cell value: None/NaN become one value, lists/dicts their repr."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _NULL
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return _NULL
    if isinstance(value, (list, dict, tuple, set, np.ndarray)):
        return repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return value


def format_value(value, max_chars: int = _LABEL_CHARS, ellipsis: str = "…") -> str:
    """A short label for a parameter value: ``0.75``, ``""`` for an empty prompt, long text shortened."""
    if _norm(value) == _NULL:
        return "None"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = '""' if value == "" else " ".join(value.split())
    else:
        text = str(value)
    if len(text) > max_chars:
        text = text[: max_chars - len(ellipsis)].rstrip() + ellipsis
    return text


def is_metric_column(column: str) -> bool:
    """Whether a column holds a metric (the known names, ``lpips_clip``, or any ``metric_*``)."""
    from .metrics import METRIC_NAMES

    return column in METRIC_COLUMNS or column in METRIC_NAMES or column.startswith("metric_")


def parameter_columns(df: pd.DataFrame) -> list[str]:
    """Columns holding parameters: everything that is not bookkeeping or a metric."""
    return [c for c in df.columns if c not in BOOKKEEPING_COLUMNS and not is_metric_column(c)]


def _axis_values(series: pd.Series) -> list:
    """Distinct values of an axis: numbers sorted, anything else in order of first appearance."""
    seen = {}
    for value in series:
        seen.setdefault(_norm(value), value)
    values = list(seen.values())
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and _norm(v) != _NULL for v in values)
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

    def init_paths(self) -> list[tuple[str, str]]:
        """Distinct init images of the grid's rows, as ``(init_image_path, label)``."""
        if "init_image_path" not in self.df.columns:
            return []
        out = {}
        for _, row in self.df.iterrows():
            path = row.get("init_image_path")
            if _norm(path) == _NULL or path == "" or path in out:
                continue
            out[path] = format_value(row.get("image", "")) if "image" in self.df.columns else ""
        return list(out.items())


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
    normed = df.map(_norm) if hasattr(df, "map") else df.applymap(_norm)
    others = [c for c in parameter_columns(df) if c not in axis_columns]
    if others:
        counts = normed.groupby(axis_columns, dropna=False, sort=False)[others].nunique(dropna=False).max()
        varying = [c for c in others if counts[c] > 1]
        if varying:
            examples = ", ".join(
                f"{c}: {[format_value(v) for v in _axis_values(df[c])][:4]}" for c in varying
            )
            first = varying[0]
            value = _axis_values(df[first])[0]
            hint = f"pick one with `where={{{first!r}: {None if _is_null_value(value) else value!r}}}`"
            if z is None:
                hint += f" or make it a panel axis with `z={first!r}`"
            raise ValidationError(
                f"`{caller}`: several rows fall in one ({', '.join(axis_columns)}) cell because "
                f"{varying} also vary ({examples}); {hint}"
            )

    # 4. place rows
    x_values, y_values = _axis_values(df[x]), _axis_values(df[y])
    z_values = _axis_values(df[z]) if z is not None else [None]
    x_index = {_norm(v): i for i, v in enumerate(x_values)}
    y_index = {_norm(v): i for i, v in enumerate(y_values)}
    z_index = {_norm(v): i for i, v in enumerate(z_values)}
    cells = {}
    for (_, row), (_, nrow) in zip(df.iterrows(), normed.iterrows()):
        zi = z_index[nrow[z]] if z is not None else 0
        cell = (zi, y_index[nrow[y]], x_index[nrow[x]])
        # Rows that agree on every parameter are re-runs of the same cell: prefer one that worked.
        if cell not in cells or (cells[cell].get("status") != "ok" and row.get("status") == "ok"):
            cells[cell] = row
    return GridLayout(x, y, z, x_values, y_values, z_values, cells, df)


def cell_image(result, row) -> tuple[Image.Image | None, str | None]:
    """The image of a grid cell and, when there is none to show, why: "error", "nan" or "missing"."""
    if row is None:
        return None, "missing"
    status = row.get("status", "ok")
    if _norm(status) != _NULL and status not in ("ok", ""):
        return None, str(status) if status in ("error", "nan") else "error"
    image = result.image(row)
    return (image, None) if image is not None else (None, "missing")


def _placeholder(size: tuple[int, int], reason: str | None = None, font=None) -> Image.Image:
    """A grey tile with a cross, and ``reason`` written in the middle when given."""
    w, h = size
    tile = Image.new("RGB", size, PLACEHOLDER_FILL)
    draw = ImageDraw.Draw(tile)
    width = max(1, min(w, h) // 40)
    draw.line([(0, 0), (w - 1, h - 1)], fill=PLACEHOLDER_CROSS, width=width)
    draw.line([(0, h - 1), (w - 1, 0)], fill=PLACEHOLDER_CROSS, width=width)
    if reason:
        font = font or _font(max(8, min(w, h) // 8))
        box = draw.textbbox((0, 0), reason, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        x0, y0 = (w - tw) // 2, (h - th) // 2
        draw.rectangle([x0 - 3, y0 - 3, x0 + tw + 3, y0 + th + 3], fill=PLACEHOLDER_FILL)
        draw.text((x0 - box[0], y0 - box[1]), reason, fill=PLACEHOLDER_TEXT, font=font)
    return tile


def _reference_size(result, layout: GridLayout) -> tuple[int, int]:
    """(width, height) of the grid's images, read from a PNG header (nothing is decoded)."""
    for row in layout.cells.values():
        path = result.image_file(row)
        if path is not None and path.exists() and row.get("status", "ok") == "ok":
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
    placeholders as ``[(yi, xi, reason)]``. With ``font`` the reason is written on the tile."""
    _, ny, nx = layout.shape
    tiles, placeholders = [], []
    for yi in range(ny):
        for xi in range(nx):
            image, reason = cell_image(result, layout.cells.get((zi, yi, xi)))
            if image is None:
                fitted = _placeholder(box, reason if font is not None else None, font)
                placeholders.append((yi, xi, reason))
            else:
                fitted = ImageOps.pad(image, box, method=Image.Resampling.LANCZOS, color=BACKGROUND)
            tile = Image.new("RGB", (box[0] + gutter, box[1] + gutter), BACKGROUND)
            tile.paste(fitted, (gutter // 2, gutter // 2))
            tiles.append(tile)
    return tiles, placeholders


def _mosaic(tiles: list[Image.Image], rows: int, cols: int) -> Image.Image:
    from diffusers.utils import make_image_grid

    return make_image_grid(tiles, rows=rows, cols=cols)


def _panel_shape(nz: int) -> tuple[int, int]:
    """(rows, cols) of z panels: side by side up to 3, then a near-square arrangement."""
    if nz <= 3:
        return 1, nz
    cols = math.ceil(math.sqrt(nz))
    return math.ceil(nz / cols), cols


def _default_title(layout: GridLayout) -> str:
    parts = [f"x: {layout.x}", f"y: {layout.y}"] + ([f"z: {layout.z}"] if layout.z else [])
    title = "   ".join(parts)
    if "prompt" in layout.df.columns and layout.df["prompt"].map(_norm).nunique() == 1:
        title += f"\nprompt: {format_value(layout.df['prompt'].iloc[0], 80)}"
    return title


def _z_title(layout: GridLayout, zi: int) -> str:
    return f"{layout.z}={format_value(layout.z_values[zi])}" if layout.z else ""


# ----------------------------------------------------------------------------------------------
# matplotlib


def plot_grid(
    result,
    x: str = "strength",
    y: str = "guidance_scale",
    z: str | None = None,
    where=None,
    *,
    thumb: int = 160,
    max_figsize: tuple[float, float] = (16.0, 12.0),
    show_init: bool = True,
    title: str | None = None,
):
    """Plot a sweep as a labelled X/Y(/Z) grid of images.

    Each z value gets one panel (an Axes showing the panel's cells as one image), titled
    ``z=value``, with the x values along its top, the y values down its left and the parameter
    names as axis titles. The init image(s) are shown to the left as reference. Failed or missing
    cells are grey with a cross and the reason ("error", "nan", "missing"). Thumbnails are at most
    ``thumb`` pixels and the figure never exceeds ``max_figsize``, so large grids stay light.

    Args:
        result: a `SweepResult`.
        x, y: columns for the grid's columns and rows (diffusers names, e.g. ``"strength"``).
        z: optional column with one panel per value.
        where: rows to show: a dict ``{column: value or [values]}``, a pandas query string or a
            callable on the DataFrame (see `filter_rows`). Every other swept column must end up
            with one value per cell.
        thumb: longest side of each thumbnail, in pixels (lowered automatically for large grids).
        max_figsize: (width, height) bound of the figure in inches.
        show_init: show the init image(s) beside the grid.
        title: figure title; by default the axes and, when it is the same for all rows, the prompt.

    Returns:
        A `matplotlib.figure.Figure` (not attached to pyplot; in a notebook it displays itself
        when it is the cell's last value, or save it with ``fig.savefig(...)``).

    Example:
        >>> fig = lab.plot_grid(result, x="strength", y="guidance_scale", z="negative_prompt",
        ...                     where={"seed": 0})
        >>> fig.savefig("grid.png")
    """
    from matplotlib.figure import Figure

    # 1. validate and place rows in cells
    if not isinstance(thumb, int) or thumb < 8:
        raise ValidationError(f"`thumb` must be an int of at least 8 pixels, got {thumb!r}")
    if len(max_figsize) != 2 or min(max_figsize) <= 0:
        raise ValidationError(f"`max_figsize` must be (width, height) in inches, got {max_figsize!r}")
    layout = grid_layout(result, x, y, z, where, caller="plot_grid")
    nz, ny, nx = layout.shape
    zr, zc = _panel_shape(nz)
    inits = layout.init_paths() if show_init else []
    shown_inits = inits[:4]

    # 2. sizes: thumbnails small enough that a panel stays under ~2k px, figure within max_figsize
    thumb = min(thumb, max(16, 2048 // max(nx, ny)))
    box = _box(_reference_size(result, layout), thumb)
    gutter = max(2, thumb // 40)
    aspect = (box[1] + gutter) / (box[0] + gutter)
    fixed_w, fixed_h = 1.6, 0.9 + 0.6 * zr  # labels, titles
    ref_cols = 1 if shown_inits else 0
    cols, rows = ref_cols + zc * nx, zr * ny
    cell_in = min(1.6, (max_figsize[0] - fixed_w) / cols, (max_figsize[1] - fixed_h) / (rows * aspect))
    cell_in = max(cell_in, 0.05)
    figsize = (min(max_figsize[0], fixed_w + cols * cell_in), min(max_figsize[1], fixed_h + rows * cell_in * aspect))
    fontsize = float(np.clip(cell_in * 6, 5, 10))

    # 3. figure: a reference column, then the z panels
    fig = Figure(figsize=figsize, layout="constrained")
    fig.suptitle(_default_title(layout) if title is None else title, fontsize=fontsize + 2)
    if shown_inits:
        outer = fig.add_gridspec(1, 2, width_ratios=[ref_cols * cell_in, zc * nx * cell_in])
        ref_spec, main_spec = outer[0].subgridspec(len(shown_inits), 1), outer[1]
        for i, (rel, label) in enumerate(shown_inits):
            ax = fig.add_subplot(ref_spec[i])
            with Image.open(result.out_dir / rel) as im:
                ax.imshow(np.asarray(ImageOps.contain(im.convert("RGB"), box, Image.Resampling.LANCZOS)))
            ax.images[-1].set_gid("init")
            name = "init image" if len(inits) == 1 or not label else f"init image\n{label}"
            if i == len(shown_inits) - 1 and len(inits) > len(shown_inits):
                name += f"\n(+{len(inits) - len(shown_inits)} more)"
            ax.set_title(name, fontsize=fontsize)
            ax.set_axis_off()
    else:
        main_spec = fig.add_gridspec(1, 1)[0]
    panel_spec = main_spec.subgridspec(zr, zc)

    # 4. one Axes per z panel, showing the panel's cells as one image
    pitch_x, pitch_y = box[0] + gutter, box[1] + gutter
    x_labels = [format_value(v) for v in layout.x_values]
    y_labels = [format_value(v) for v in layout.y_values]
    for zi in range(nz):
        ax = fig.add_subplot(panel_spec[zi // zc, zi % zc])
        tiles, placeholders = _tiles(result, layout, zi, box, gutter)
        ax.imshow(np.asarray(_mosaic(tiles, ny, nx)), interpolation="antialiased")
        ax.images[-1].set_gid(f"panel:{zi}")
        ax.set_xticks([pitch_x * (i + 0.5) for i in range(nx)], x_labels, fontsize=fontsize,
                      rotation=45 if nx > 6 else 0, ha="left" if nx > 6 else "center")
        ax.set_yticks([pitch_y * (i + 0.5) for i in range(ny)], y_labels, fontsize=fontsize)
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
        ax.tick_params(length=0)
        ax.set_xlabel(x, fontsize=fontsize + 1, fontweight="bold")
        ax.set_ylabel(y, fontsize=fontsize + 1, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_visible(False)
        if z is not None:
            ax.set_title(_z_title(layout, zi), fontsize=fontsize + 1)
        for yi, xi, reason in placeholders:
            ax.text(pitch_x * (xi + 0.5), pitch_y * (yi + 0.5), reason, ha="center", va="center",
                    color="#aa0000", fontsize=fontsize, fontweight="bold", gid=f"placeholder:{reason}")
    return fig


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


def _geometry(layout: GridLayout, box: tuple[int, int], n_inits: int, title: str) -> _Geometry:
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
    widest = max([font.getlength(format_value(v, ellipsis="...")) for v in layout.y_values] + [bold.getlength(layout.y)])
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
    cell_size: int = 256,
    max_pixels: int | None = None,
    max_side: int = MAX_SIDE,
    show_init: bool = True,
    title: str | None = None,
) -> Image.Image:
    """The same labelled grid as `plot_grid`, as one PIL image for saving or sharing.

    The size is computed first, and a grid past ``max_side`` pixels a side or ``max_pixels`` in
    all is refused before any image is allocated (a smaller ``cell_size`` or a ``where=`` filter
    makes it fit).

    Args:
        result: a `SweepResult`.
        x, y, z, where: as in `plot_grid`.
        cell_size: longest side of each cell, in pixels.
        max_pixels: limit on width x height; default PIL's ``Image.MAX_IMAGE_PIXELS``
            (the decompression-bomb threshold, ~89 Mpx).
        max_side: limit on either side, in pixels.
        show_init: draw the init image(s) in a column on the left.
        title: text above the grid; by default the axes and, when shared, the prompt; "" for none.

    Example:
        >>> lab.grid_image(result, x="strength", y="guidance_scale", cell_size=192).save("grid.png")
    """
    # 1. validate and place rows in cells
    if not isinstance(cell_size, int) or cell_size < 16:
        raise ValidationError(f"`cell_size` must be an int of at least 16 pixels, got {cell_size!r}")
    if max_pixels is None:
        max_pixels = Image.MAX_IMAGE_PIXELS or 89_478_485
    layout = grid_layout(result, x, y, z, where, caller="grid_image")
    nz, ny, nx = layout.shape
    inits = layout.init_paths() if show_init else []
    title = _default_title(layout) if title is None else title

    # 2. size, refused before anything is allocated
    box = _box(_reference_size(result, layout), cell_size)
    geo = _geometry(layout, box, len(inits), title)
    width, height = geo.size
    if width > max_side or height > max_side or width * height > max_pixels:
        scale = min(max_side / width, max_side / height, math.sqrt(max_pixels / (width * height)))
        raise ValidationError(
            f"`grid_image` would be {width} x {height} px ({nz * ny * nx} cells at `cell_size`={cell_size}), "
            f"past the limit of {max_side} px a side and {max_pixels:,} px in all; pass a smaller "
            f"`cell_size` (about {max(16, int(cell_size * scale * 0.95))}) or fewer cells with `where=`"
        )

    # 3. draw
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(geo.font_size)
    bold = _font(round(geo.font_size * 1.15))
    ink = (0, 0, 0)
    pad, line = geo.pad, geo.line
    for i, text in enumerate(title.split("\n") if title else []):
        draw.text((pad, pad + i * line), _fit_text(bold, text, width - 2 * pad), fill=ink, font=bold)
    top = pad + geo.title_h

    for i, (rel, label) in enumerate(inits):
        y0 = top + geo.header_h + i * (box[1] + line + pad)
        name = "init image" if len(inits) == 1 or not label else f"init: {label}"
        draw.text((pad, y0 - line + 2), _fit_text(font, name, geo.init_w - pad), fill=ink, font=font)
        with Image.open(result.out_dir / rel) as im:
            canvas.paste(ImageOps.pad(im.convert("RGB"), box, method=Image.Resampling.LANCZOS, color=BACKGROUND), (pad, y0))

    cell_w = box[0] + geo.gutter
    for zi in range(nz):
        px = pad + geo.init_w + (zi % geo.zc) * (geo.panel_w + 2 * pad)
        py = top + (zi // geo.zc) * (geo.panel_h + 2 * pad)
        cells_x = px + geo.label_w
        y_text = py
        if layout.z:
            draw.text((cells_x, y_text), _fit_text(bold, _z_title(layout, zi), nx * cell_w), fill=ink, font=bold)
            y_text += line
        # axis titles: x centred over the columns, y in the corner above the row labels
        x_title = _fit_text(bold, x, nx * cell_w)
        draw.text((cells_x + (nx * cell_w - bold.getlength(x_title)) / 2, y_text), x_title, fill=ink, font=bold)
        draw.text((px, y_text + line), _fit_text(bold, y, geo.label_w - pad), fill=ink, font=bold)
        y_text += line
        for xi, value in enumerate(layout.x_values):
            text = _fit_text(font, format_value(value, ellipsis="..."), cell_w - pad)
            draw.text((cells_x + xi * cell_w + (cell_w - font.getlength(text)) / 2, y_text), text, fill=ink, font=font)
        cells_y = py + geo.header_h
        for yi, value in enumerate(layout.y_values):
            text = _fit_text(font, format_value(value, ellipsis="..."), geo.label_w - pad)
            draw.text((cells_x - pad - font.getlength(text), cells_y + yi * (box[1] + geo.gutter) + box[1] // 2 - line // 2), text, fill=ink, font=font)
        tiles, _ = _tiles(result, layout, zi, box, geo.gutter, font=font)
        canvas.paste(_mosaic(tiles, ny, nx), (cells_x, cells_y))
    return canvas
