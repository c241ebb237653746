"""`SweepResult`: what a sweep gives back, one row per image, plus where its files are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

# Columns that describe bookkeeping rather than a parameter the user chose.
BOOKKEEPING_COLUMNS = frozenset(
    {
        "key", "image_hash", "image_path", "init_image_path", "seconds", "status", "error",
        "effective_steps", "pipeline_class", "dtype", "device", "batch_size", "width", "height",
        "created", "scheduler_class", "offload", "attention", "vae_slicing", "vae_tiling", "compile", "image_requested",
    }
)
METRIC_COLUMNS = ("ssim", "psnr", "mean_abs_change", "clip_score", "lpips", "lpips_clip")


@dataclass(frozen=True)
class SweepResult:
    """The result of a sweep: the table, the folder holding its images, the spec and run metadata.

    Args:
        df: one row per image; parameters under their diffusers names (see docs/ARCHITECTURE.md).
        out_dir: the sweep folder; `image_path` and `init_image_path` are relative to it.
        spec: the `SweepSpec` last run into the folder, if known.
        meta: library versions, runs, and other metadata of the sweep.

    Example:
        >>> result = lab.load_sweep("runs/demo")
        >>> result.df[["strength", "guidance_scale", "status"]]
        >>> result.image(0)            # PIL image of row 0
    """

    df: pd.DataFrame
    out_dir: Path
    spec: Any = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.df)

    def _row(self, which) -> pd.Series:
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
        rel = self._row(which).get("image_path")
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
        rel = self._row(which).get("init_image_path")
        if rel is None or pd.isna(rel) or rel == "":
            return None
        with Image.open(Path(self.out_dir) / rel) as im:
            return im.convert("RGB")

    @property
    def parameters(self) -> list[str]:
        """Columns holding parameters (everything that is not bookkeeping or a metric)."""
        return [c for c in self.df.columns if c not in BOOKKEEPING_COLUMNS and c not in METRIC_COLUMNS]

    @property
    def swept(self) -> list[str]:
        """Parameter columns that take more than one value in this result, in table order."""
        out = []
        for col in self.parameters:
            values = self.df[col].map(lambda v: repr(v) if isinstance(v, (list, dict)) else v)
            if values.nunique(dropna=False) > 1:
                out.append(col)
        return out

    @property
    def metrics(self) -> list[str]:
        """Metric columns present in the table."""
        return [c for c in METRIC_COLUMNS if c in self.df.columns] + [
            c for c in self.df.columns if c.startswith("metric_")
        ]
