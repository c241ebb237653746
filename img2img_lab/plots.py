"""Charts of numbers: trade-off curves (how a metric, fidelity to the init image or prompt adherence,
moves with a parameter) and the memory estimate's bars (`memory.memory_table` against the cards)."""

from __future__ import annotations

import numbers

import numpy as np

from .errors import ValidationError
from .memory import DEFAULT_OVERHEAD, memory_table
from .grid import axis_values, filter_rows, value_labels
from .values import norm_value
from .vocab import OK, is_metric_column

# What a higher value means, for the y-axis label.
_READING = {
    "ssim": "1 = same as init",
    "psnr": "dB, higher = closer to init",
    "mean_abs_change": "0..255, 0 = same as init",
    "lpips": "0 = same as init",
    "lpips_clip": "0 = same as init",
    "clip_score": "higher = closer to prompt",
}
_LINESTYLES = ("-", "--", ":", "-.")
LEGEND_INSIDE = 6  # legends with more entries go outside the axes
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_tradeoff(
    result,
    x: str = "strength",
    y: str = "ssim",
    hue: str | None = "guidance_scale",
    where=None,
    style: str | None = None,
    *,
    spread: str | None = "band",
    figsize: tuple[float, float] = (6.4, 4.2),
    title: str | None = None,
):
    """Plot a metric against a parameter: one line per ``hue`` value (and ``style`` value).

    Each line is the mean over the rows sharing its x value (other swept columns, seeds); the
    spread around it is the min-max band (``spread="band"``) or every row as a point
    (``spread="points"``). Failed rows and non-finite values (``psnr`` is ``inf`` for an output
    identical to its init) are left out.

    Args:
        result: a `SweepResult` with the metric column (see `add_metrics`).
        x: parameter on the x axis (numeric values are spaced by value, others evenly).
        y: metric column, e.g. ``"ssim"``, ``"psnr"``, ``"mean_abs_change"``, ``"clip_score"``.
        hue: column giving each line its colour (legend titled with its name); None for one line.
        where: rows to use, as in `plot_grid` (dict, query string or callable).
        style: optional column giving each line its dash pattern and marker.
        spread: ``"band"``, ``"points"`` or None.
        figsize: figure size in inches.
        title: figure title; default ``"<y> vs <x>"``.

    Returns:
        A `matplotlib.figure.Figure` (not attached to pyplot; in a notebook it displays itself
        when it is the cell's last value, or save it with ``fig.savefig(...)``).

    Example:
        >>> result = lab.add_metrics(result, ["ssim"])
        >>> lab.plot_tradeoff(result, x="strength", y="ssim", hue="guidance_scale")
    """
    from .figures import LabFigure  # matplotlib: imported on the first plot, not with the package

    # 1. validate
    _check_tradeoff_columns(result, x, y, hue, style)
    if spread not in ("band", "points", None):
        raise ValidationError(f"`spread` must be 'band', 'points' or None, got {spread!r}")

    # 2. rows with a finite value
    df = _finite_rows(result.df, y, where)

    # 3. x positions: by value when numeric, evenly spaced otherwise
    x_values = axis_values(df[x])
    numeric_x = _all_numbers(x_values)
    position = {norm_value(v): (float(v) if numeric_x else i) for i, v in enumerate(x_values)}

    # 4. one line per (hue, style); a numeric hue gets colours in its order
    hue_values = axis_values(df[hue]) if hue else [None]
    style_values = axis_values(df[style]) if style else [None]
    colors = _line_colors(hue_values, numeric=hue is not None and _all_numbers(hue_values))
    fig = LabFigure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    # legend entries and category ticks: URLs, paths and hub ids by their short names
    hue_labels = value_labels(hue, hue_values) if hue else [None]
    style_labels = value_labels(style, style_values) if style else [None]
    hue_key = df[hue].map(norm_value) if hue else None
    style_key = df[style].map(norm_value) if style else None
    for hi_, hv in enumerate(hue_values):
        for si, sv in enumerate(style_values):
            mask = np.ones(len(df), dtype=bool)
            if hue:
                mask &= (hue_key == norm_value(hv)).to_numpy()
            if style:
                mask &= (style_key == norm_value(sv)).to_numpy()
            part = df[mask]
            if part.empty:
                continue
            label = ", ".join(text for text, col in ((hue_labels[hi_], hue), (style_labels[si], style)) if col)
            _plot_line(ax, part, x, y, position, spread, color=colors[hi_], style_index=si, label=label or None)

    # 5. labels
    if not numeric_x:
        ax.set_xticks(range(len(x_values)), value_labels(x, x_values))
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} ({_READING[y]})" if y in _READING else y)
    ax.grid(True, alpha=0.3)
    _add_legend(ax, ", ".join(c for c in (hue, style) if c))
    if title is None:
        title = f"{y} vs {x}" + {"band": " (mean, min-max band)", "points": " (mean and every row)"}.get(spread, " (mean)")
    ax.set_title(title)
    return fig


def _all_numbers(values) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def _check_tradeoff_columns(result, x, y, hue, style) -> None:
    """`y` is a column (a missing metric says how to compute it); `x`, `hue`, `style` are columns or None."""
    df = result.df
    if y not in df.columns:
        if y in _READING or is_metric_column(y):
            raise ValidationError(
                f"`y`={y!r}: the sweep has no {y!r} column yet; compute it with "
                f"`result = lab.add_metrics(result, metrics=[{y!r}])`"
            )
        metrics = [c for c in df.columns if is_metric_column(c)]
        raise ValidationError(f"`y` must be a column of the sweep, got {y!r}; metric columns: {metrics}")
    for name, column in (("x", x), ("hue", hue), ("style", style)):
        if column is not None and column not in df.columns:
            raise ValidationError(
                f"`{name}` must be a column of the sweep, got {column!r}; swept columns: {result.swept}"
            )


def _finite_rows(df, y: str, where):
    """The rows ``where`` selects that ran (status "ok") and have a finite ``y``; refused when none."""
    df = filter_rows(df, where)
    if "status" in df.columns:
        df = df[df["status"] == OK]
    values = df[y].astype("float64")
    df = df[np.isfinite(values.to_numpy())]
    if df.empty:
        raise ValidationError(
            f"`y`={y!r} has no finite values in the selected rows; run `lab.add_metrics(result, metrics=[{y!r}])` "
            f"or change `where`"
        )
    return df


def _line_colors(hue_values: list, *, numeric: bool) -> list:
    """One colour per hue value: along viridis by value for several numbers, else tab10's in turn."""
    from matplotlib import colormaps

    if numeric and len(hue_values) > 1:
        cmap, lo, hi = colormaps["viridis"], min(hue_values), max(hue_values)
        return [cmap(0.9 * (v - lo) / (hi - lo)) for v in hue_values]
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(len(hue_values))]


def _plot_line(ax, part, x: str, y: str, position: dict, spread, *, color, style_index: int, label) -> None:
    """The mean of ``y`` over ``part``'s rows at each x position, with its spread (band or points)."""
    xs = part[x].map(lambda v: position[norm_value(v)]).to_numpy(dtype=float)
    ys = part[y].to_numpy(dtype=float)
    order = sorted(set(xs))
    mean = np.array([ys[xs == p].mean() for p in order])
    marker = _MARKERS[style_index % len(_MARKERS)]
    ax.plot(order, mean, color=color, linestyle=_LINESTYLES[style_index % len(_LINESTYLES)], marker=marker,
            label=label)
    if spread == "band" and len(order) > 1:
        low = np.array([ys[xs == p].min() for p in order])
        high = np.array([ys[xs == p].max() for p in order])
        ax.fill_between(order, low, high, color=color, alpha=0.15, linewidth=0)
    elif spread == "points":
        ax.scatter(xs, ys, color=color, s=12, alpha=0.6, marker=marker)


def _add_legend(ax, title: str) -> None:
    """The legend, titled with the line columns; more than `LEGEND_INSIDE` entries go beside the plot."""
    if not title:
        return
    entries = len(ax.get_legend_handles_labels()[1])
    if entries > LEGEND_INSIDE:  # a long legend goes beside the plot, not over its lines
        ax.legend(title=title, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1),
                  borderaxespad=0, ncols=1 + (entries - 1) // 16)
    else:
        ax.legend(title=title, fontsize="small")


def plot_memory(table=None, *, overhead: float = DEFAULT_OVERHEAD, figsize: tuple[float, float] | None = None):
    """Bars of what each checkpoint needs at each precision (weights plus `overhead`), against the cards.

    Args:
        table: a `memory_table(...)` DataFrame (its precisions and cards); None: `memory_table()`.
        overhead: the margin added to the weights, as `memory_table`'s verdicts add it.
        figsize: figure size in inches; None: one row of bars per checkpoint.

    Returns:
        A `LabFigure` (shown as a picture as a notebook cell's last value). Nothing is measured:
        the x-axis label says the figures are estimated from parameter counts.

    Example:
        >>> lab.plot_memory(lab.memory_table(precisions=["bf16", "nf4"], cards=[24, 80]))
    """
    from .figures import LabFigure  # matplotlib: imported on the first plot, not with the package

    table = memory_table() if table is None else table
    missing = {"checkpoint", "precision", "weights_gib"} - set(table.columns)
    if missing:
        raise ValidationError(f"`table` must be a memory_table() DataFrame, got one without {sorted(missing)}")
    cards = [int(c.split()[0]) for c in table.columns if c.endswith(" GiB")]
    need = table.assign(gib=table["weights_gib"] * (1 + overhead)).pivot_table(
        index="checkpoint", columns="precision", values="gib", sort=False)
    need = need[list(dict.fromkeys(table["precision"]))]
    fig = LabFigure(figsize=figsize or (9.0, 0.45 * len(need) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(need.columns)
    rows = np.arange(len(need))
    for n, precision in enumerate(need.columns):
        ax.barh(rows + (n - (len(need.columns) - 1) / 2) * height, need[precision], height=height, label=precision)
    for card in cards:
        ax.axvline(card, color="0.4", linestyle="--", linewidth=1)
        ax.annotate(f"{card} GiB", (card, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", color="0.3", fontsize=9)
    ax.set_yticks(rows, need.index)
    ax.invert_yaxis()
    ax.set_xlabel(f"GiB: weights + {overhead:.0%} (estimated from parameter counts, not measured)")
    ax.legend(title="precision", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
