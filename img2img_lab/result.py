"""`SweepResult`: what a sweep gives back, one row per image, plus where its files are."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from .errors import ValidationError
from .families import tiny_call
from .values import NONE_TEXT, format_value, is_null, norm_value
from .vocab import FAILED_STATUSES, LABEL_AXES, METRIC_NAMES, METRIC_PREFIX, OK, is_metric_column

# Columns that describe bookkeeping rather than a parameter the user chose.
BOOKKEEPING_COLUMNS = frozenset(
    {
        "key", "image_hash", "image_path", "init_image_path", "seconds", "status", "error",
        "effective_steps", "pipeline_class", "dtype", "device", "batch_size", "width", "height",
        "created", "scheduler_class", "offload", "attention", "vae_slicing", "vae_tiling", "compile", "image_requested",
        "exact", "threads", "batched", "pipeline_defaults", "not_applied",
        # what the adapter axes loaded: the files' hashes, the weights set_adapters got, the reference picture
        "lora_weights", "lora_sha256", "lora_files", "ip_adapter_sha256", "ip_adapter_file", "ip_adapter_image_hash",
        "ip_adapter_image_path", "same_image_as",
    }
)
_THUMB = 64  # px: longest side of a row's thumbnail in the notebook table
_HTML_ROWS = 50  # rows the notebook table shows; `df` holds them all
_HTML_CHARS = 60  # text longer than this is shortened in the notebook table (full text on hover)


def parameter_columns(df: pd.DataFrame) -> list[str]:
    """Columns of a sweep table holding parameters: everything that is not bookkeeping or a metric."""
    return [c for c in df.columns if c not in BOOKKEEPING_COLUMNS and not is_metric_column(c)]


def _is_text(series: pd.Series) -> bool:
    return series.dtype == object or isinstance(series.dtype, pd.StringDtype)


def _attr(text) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class SweepResult:
    """The result of a sweep: the table, the folder holding its images, the spec and run metadata.

    Args:
        df: one row per image; parameters under their diffusers names (see docs/ARCHITECTURE.md).
        out_dir: the sweep folder; `image_path` and `init_image_path` are relative to it.
        spec: the `SweepSpec` last run into the folder, if known.
        meta: library versions, runs, and other metadata of the sweep.

    In a notebook a result shows as a compact table (a thumbnail per row, the swept columns, the
    constant ones folded away); `table` gives a DataFrame of the same columns.

    Example:
        >>> result = lab.load_sweep("runs/demo")
        >>> result.df[["strength", "guidance_scale", "status"]]
        >>> result.table(["ssim", "status"])
        >>> result.image(0)            # PIL image of row 0
    """

    df: pd.DataFrame
    out_dir: Path
    spec: Any = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.df)

    def row(self, which) -> pd.Series:
        """One row of `df`: by position (``0``), by content key (``"3f2a..."``), or a row itself.

        Example:
            >>> result.row(0)["strength"]
        """
        if isinstance(which, str):
            rows = self.df[self.df["key"] == which]
            if rows.empty:
                raise KeyError(f"no cell with key {which!r} in {self.out_dir}")
            return rows.iloc[0]
        if isinstance(which, pd.Series):
            return which
        return self.df.iloc[int(which)]

    def image_file(self, which) -> Path | None:
        """Path of the output PNG of a row (position, content key or row), or None if it failed."""
        rel = self.row(which).get("image_path")
        return None if rel is None or pd.isna(rel) or rel == "" else Path(self.out_dir) / rel

    def image(self, which) -> Image.Image | None:
        """The output image of a row (position, content key or row); None for a failed cell."""
        path = self.image_file(which)
        if path is None or not path.exists():
            return None
        with Image.open(path) as im:
            return im.convert("RGB")

    def init_image(self, which) -> Image.Image | None:
        """The init image of a row, as it was given to the pipeline."""
        rel = self.row(which).get("init_image_path")
        if rel is None or pd.isna(rel) or rel == "":
            return None
        with Image.open(Path(self.out_dir) / rel) as im:
            return im.convert("RGB")

    @property
    def parameters(self) -> list[str]:
        """Columns holding parameters (everything that is not bookkeeping or a metric)."""
        return parameter_columns(self.df)

    @property
    def swept(self) -> list[str]:
        """Parameter columns that take more than one value in this result, in table order.

        A tiny twin's own call options (Kontext's `max_area`, FLUX.2's text-encoder layers) differ
        between models of a mixed sweep but follow the model: they are not axes."""
        out = []
        own = {m: tiny_call(str(m)) for m in self.df["model"].unique()} if "model" in self.df.columns else {}
        for col in self.parameters:
            values = self.df[col].map(norm_value)
            if values.nunique(dropna=False) > 1 and not self._follows_model(col, own):
                out.append(col)
        return [col for col in out if not self._follows_label(col, out)]

    def _follows_label(self, col: str, swept: list) -> bool:
        """Whether `col` is set by a swept label axis: the prompts a `prompt_sr` term rewrites, the
        arguments a `variants` name sets (one value of `col` per value of the label)."""
        for label in LABEL_AXES:
            if label == col or label not in swept:
                continue
            per_label = self.df[col].map(norm_value).groupby(self.df[label].map(norm_value), dropna=False)
            if per_label.nunique(dropna=False).max() <= 1:
                return True
        return False

    def _follows_model(self, col: str, own: dict) -> bool:
        """Whether `col` is a tiny twin's own option: that twin's value in its rows, unset elsewhere."""
        if not any(col in options for options in own.values()):
            return False
        for model, value in zip(self.df["model"], self.df[col]):
            options = own[model]
            if col in options:
                if norm_value(value) != norm_value(options[col]):
                    return False
            elif not is_null(value):
                return False
        return True

    @property
    def metrics(self) -> list[str]:
        """Metric columns present in the table."""
        return [c for c in METRIC_NAMES if c in self.df.columns] + [
            c for c in self.df.columns if isinstance(c, str) and c.startswith(METRIC_PREFIX)
        ]

    # ------------------------------------------------------------------------------------------
    # reading it in a notebook

    def _counts(self) -> tuple[int, int]:
        """(done, failed) cells."""
        if "status" not in self.df.columns:
            return len(self.df), 0
        status = self.df["status"]
        return int((status == OK).sum()), int(status.isin(FAILED_STATUSES).sum())

    def __repr__(self) -> str:
        done, failed = self._counts()
        swept = self.swept
        names = ", ".join(swept[:6]) + (f", +{len(swept) - 6} more" if len(swept) > 6 else "")
        return (f"SweepResult({len(self.df)} cells: {done} ok, {failed} failed; swept: {names or 'nothing'}; "
                f"folder: {self.out_dir})")

    def table(self, columns: list[str] | None = None) -> pd.DataFrame:
        """A copy of `df` to read in a notebook: the swept columns first, then ``columns``.

        Args:
            columns: column names to show after the swept ones; default `effective_steps`, the
                metrics present, `seconds` and `status` (those the table has).

        Returns:
            A `pandas.DataFrame` with the rows and index of `df`; None/NaN in its text columns
            read "(none)" (a missing negative prompt), numbers are left as they are.

        Example:
            >>> result.table()
            >>> result.table(["effective_steps", "ssim", "status"])
        """
        df = self.df
        if columns is None:
            columns = [c for c in ("effective_steps", *self.metrics, "seconds", "status") if c in df.columns]
        elif isinstance(columns, str) or not isinstance(columns, (list, tuple)):
            raise ValidationError(
                f"`columns` must be a list of column names or None, got {type(columns).__name__}: {columns!r}"
            )
        else:
            for column in columns:
                if not isinstance(column, str) or column not in df.columns:
                    raise ValidationError(
                        f"`columns` names {column!r}, which the sweep does not have; columns: {list(df.columns)}"
                    )
        out = df[list(dict.fromkeys([*self.swept, *columns]))].copy()
        for column in out.columns:
            if _is_text(out[column]):
                out[column] = out[column].astype(object).where(out[column].notna(), NONE_TEXT)
        return out

    def _repr_html_(self) -> str:
        df = self.df
        done, failed = self._counts()
        swept = self.swept
        # 1. the one-line summary
        parts = [f"{len(df)} cells", f"{done} done", f"{failed} failed"]
        summary = (f"<p><b>SweepResult</b>: {', '.join(parts)}; folder <code>{html.escape(str(self.out_dir))}</code>"
                   f"</p>")
        # 2. the columns that take one value, folded
        constant = [c for c in df.columns if c not in swept and len(df) and df[c].map(norm_value).nunique(dropna=False) == 1]
        folded = ""
        if constant:
            items = "".join(f"<li><code>{html.escape(c)}</code> = {_value_html(df[c].iloc[0])}</li>" for c in constant)
            folded = (f"<details><summary>{len(constant)} constant columns</summary>"
                      f"<ul style='margin:0.2em 0'>{items}</ul></details>")
        # 3. one row per cell: the swept columns, a thumbnail, the metrics, the status
        shown = df.head(_HTML_ROWS)
        body = pd.DataFrame(index=shown.index)
        for column in swept:
            body[html.escape(column)] = shown[column].map(_value_html)
        body["image"] = [self._thumbnail_html(row) for _, row in shown.iterrows()]
        for column in self.metrics:
            body[html.escape(column)] = shown[column].map(_value_html)
        if "status" in shown.columns:
            body["status"] = [_status_html(row) for _, row in shown.iterrows()]
        with pd.option_context("display.max_colwidth", None):
            table = body.to_html(escape=False, border=0, classes="img2img-lab-result")
        more = ""
        if len(df) > len(shown):
            more = (f"<p>... {len(df) - len(shown)} more rows; all of them: <code>.df</code> "
                    f"(or <code>.table()</code>)</p>")
        return summary + folded + table + more

    def _thumbnail_html(self, row) -> str:
        """A row's image as an inline PNG of at most `_THUMB` px, or a grey tile naming its status."""
        status = row.get("status", OK)
        ok = pd.isna(status) or status in (OK, "")
        path = self.image_file(row) if ok else None
        if path is not None and path.exists():
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((_THUMB, _THUMB))
            buffer = io.BytesIO()
            im.save(buffer, format="PNG")
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
            return f"<img src='data:image/png;base64,{data}' width='{im.width}' height='{im.height}' alt='image'>"
        text = "missing" if ok else str(status)
        return (f"<div style='width:{_THUMB}px;height:{_THUMB}px;background:#c8c8c8;color:#a00;display:flex;"
                f"align-items:center;justify-content:center;font-size:11px'>{html.escape(text)}</div>")


def _value_html(value) -> str:
    """A value for the notebook table, HTML-escaped; long text shortened (all of it on hover)."""
    text = format_value(value, _HTML_CHARS)
    full = text if format_value(value, 10**6) == text else " ".join(str(value).split())
    if full != text:
        return f"<span title='{_attr(full)}'>{html.escape(text)}</span>"
    return html.escape(text)


def _status_html(row) -> str:
    """The status of a row; for a failed one with its stored error (shortened, all of it on hover)."""
    status = row.get("status")
    if pd.isna(status):
        return NONE_TEXT
    error = row.get("error")
    if status == OK or error is None or pd.isna(error) or str(error) == "":
        return html.escape(str(status))
    short = format_value(str(error), _HTML_CHARS)
    return f"<span title='{_attr(error)}'>{html.escape(str(status))}: {html.escape(short)}</span>"

