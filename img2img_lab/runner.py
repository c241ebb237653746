"""Running a sweep: every cell of a `SweepSpec` becomes one image and one row of a DataFrame.

`run_sweep` reads as numbered steps: validate, expand the grid, skip cells already on disk, run
the rest (batched through the denoiser where that is exact, one pipeline call per cell otherwise),
and collect the table. Each cell's image is what a direct call of the same pipeline with the same
arguments and `torch.Generator("cpu").manual_seed(seed)` returns.
"""

from __future__ import annotations

import math
import platform
import socket
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import ValidationError
from .result import SweepResult
from .store import SweepStore

# Statuses of a row.
OK, ERROR, NAN = "ok", "error", "nan"
DONE_STATUSES = (OK, NAN)  # these are not recomputed on a re-run; errors are retried


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("img2img_lab", "torch", "diffusers", "transformers", "accelerate", "compel", "numpy", "pandas"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def effective_steps(call: dict) -> int:
    """Denoising steps diffusers actually runs: `min(int(num_inference_steps * strength), steps)`."""
    steps = int(call.get("num_inference_steps", 50))
    strength = call.get("strength")
    return steps if strength is None else min(int(steps * float(strength)), steps)


def is_nan_image(array: np.ndarray) -> bool:
    """NaN anywhere, or an all-black picture (what an fp16 VAE overflow decodes to)."""
    return bool(np.isnan(array).any() or float(np.nanmax(array)) <= 1.0 / 255.0)


@dataclass
class _Prepared:
    """A cell ready to run: its spec cell, init image, content key and base row."""

    cell: object
    image: object
    image_hash: str
    key: str
    row: dict = field(default_factory=dict)


def _as_spec(spec):
    from .spec import SweepSpec

    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, (str, Path)):
        return SweepSpec.from_yaml(spec)
    if isinstance(spec, dict):
        return SweepSpec.from_dict(spec)
    raise ValidationError(f"`spec` must be a SweepSpec, a YAML path or a dict, got {type(spec).__name__}")


def _model_label(model, pipe) -> str:
    if model is not None:
        return str(model)
    info = getattr(pipe, "img2img_lab_info", None) or {}
    return str(info.get("model") or getattr(pipe, "name_or_path", None) or type(pipe).__name__)


@contextmanager
def _quiet_progress(pipe):
    """Silence the pipeline's own per-call progress bar while the sweep shows one over cells."""
    old = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        pipe._progress_bar_config = old


@contextmanager
def _scheduler(pipe, name):
    """Use the named scheduler for a group of cells, then put the pipeline's own back."""
    if name is None:
        yield
        return
    from .loaders import set_scheduler

    original = pipe.scheduler
    set_scheduler(pipe, name)
    try:
        yield
    finally:
        pipe.scheduler = original


def _generator(seed: int):
    import torch

    # A CPU generator gives the same draws on every device (diffusers moves the noise to the GPU).
    return torch.Generator(device="cpu").manual_seed(int(seed))


def run_cell(pipe, call: dict, seed: int):
    """One direct pipeline call, exactly as a user would write it; returns (PIL image, status).

    The output is taken as a float array (`output_type="np"`) so NaN can be detected, then
    converted with the pipeline's own `numpy_to_pil`, which is what `output_type="pil"` does.
    """
    out = pipe(**call, generator=_generator(seed), output_type="np")
    array = out.images[0]
    status = NAN if is_nan_image(array) else OK
    image = pipe.numpy_to_pil(np.nan_to_num(array, nan=0.0)[None])[0]
    return image, status


def _pipe_row(pipe, model_label: str) -> dict:
    from .loaders import denoiser_name

    denoiser = getattr(pipe, denoiser_name(pipe), None)
    dtype = getattr(denoiser, "dtype", None) if denoiser is not None else None
    device = getattr(pipe, "device", None)
    return {
        "model": model_label,
        "pipeline_class": type(pipe).__name__,
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else "",
        "device": str(device) if device is not None else "",
    }


def _prepare(spec, store: SweepStore) -> list[_Prepared]:
    """Expand the grid, load each distinct init image once, and give each cell its content key."""
    from .images import image_hash, load_image

    images: dict = {}
    prepared = []
    for cell in spec.cells():
        source = cell.image
        if source not in images:
            image = load_image(source)
            digest = image_hash(image)
            images[source] = (image, digest, store.write_input(digest, image))
        image, digest, rel = images[source]
        key = cell.key(digest)
        row = {
            "key": key,
            "model": str(cell.model),
            "image": str(source) if not hasattr(source, "size") else f"<{type(source).__name__}>",
            "image_hash": digest,
            "init_image_path": rel,
            "seed": int(cell.seed),
            "scheduler": cell.scheduler,
            **{k: v for k, v in cell.call.items() if k != "image"},
        }
        row["effective_steps"] = effective_steps(cell.call)
        prepared.append(_Prepared(cell, image, digest, key, row))
    return prepared


def run_sweep(spec, out_dir, pipe=None, progress=True, *, batched=True, max_batch_size=8) -> SweepResult:
    """Run (or resume, or extend) a sweep; every image is one row of `result.df`.

    Args:
        spec: a `SweepSpec`, the path of a YAML spec, or a flat dict of spec keys.
        out_dir: the sweep folder. Cells already finished there (same content key) are skipped,
            so a re-run resumes an interrupted sweep and an extended spec computes only new cells.
        pipe: an already loaded pipeline to use instead of loading `spec.model`.
        progress: show a `tqdm.auto` bar over cells (fine in notebooks and terminals).
        batched: run cells that share a timestep grid as one batch through the denoiser
            (identical images; falls back to one call per cell where batching is not exact).
        max_batch_size: the largest batch; halved and retried on out-of-memory.

    Returns:
        A `SweepResult` with the whole table of `out_dir` (earlier cells included).

    Example:
        >>> spec = lab.SweepSpec(model="tiny/sd15", prompt="a cat", image="cat",
        ...                      strength=[0.4, 0.6, 0.8], guidance_scale=[3.0, 7.5])
        >>> result = lab.run_sweep(spec, "runs/cat")
        >>> result.df[["strength", "guidance_scale", "status", "image_path"]]
    """
    from tqdm.auto import tqdm

    # 1. validate (the spec validated itself when it was built) and open the folder
    spec = _as_spec(spec)
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValidationError(f"`max_batch_size` must be an int >= 1, got {max_batch_size!r}")
    store = SweepStore(out_dir)
    started = datetime.now(timezone.utc).isoformat()

    # 2. expand the grid into cells with content keys
    prepared = _prepare(spec, store)

    # 3. skip cells already finished in this folder
    table = store.read_table()
    done = set(table.loc[table["status"].isin(DONE_STATUSES), "key"]) if not table.empty else set()
    todo = [p for p in prepared if p.key not in done]

    # 4. run the rest, grouped by model and scheduler so each pipeline loads once
    store.write_spec(spec)
    groups = defaultdict(list)
    for p in todo:
        groups[(str(p.cell.model), p.cell.scheduler)].append(p)
    bar = tqdm(total=len(todo), desc="sweep", unit="img", disable=not progress or not todo)
    computed = 0
    try:
        for (model, scheduler), cells in groups.items():
            from .loaders import load_pipeline

            group_pipe = pipe if pipe is not None else load_pipeline(model, **spec.options)
            base = _pipe_row(group_pipe, model if pipe is None else _model_label(model, pipe))
            with _quiet_progress(group_pipe), _scheduler(group_pipe, scheduler):
                base["scheduler"] = type(group_pipe.scheduler).__name__ if scheduler is None else scheduler
                for p, image, status, error, seconds, batch_size in _execute(
                    group_pipe, cells, batched=batched, max_batch_size=max_batch_size
                ):
                    row = {**p.row, **base, "scheduler_class": type(group_pipe.scheduler).__name__}
                    row.update(status=status, error=error, seconds=round(seconds, 4), batch_size=batch_size,
                               created=datetime.now(timezone.utc).isoformat())
                    if image is not None:
                        row["width"], row["height"] = image.size
                        row["image_path"] = store.write_image(p.key, image, {**row, **p.cell.call_text()}
                                                              if hasattr(p.cell, "call_text") else row)
                    else:
                        row["image_path"] = ""
                    store.write_row(row)
                    computed += 1
                    bar.update(1)
                    bar.set_postfix_str(f"{status} {seconds:.2f}s", refresh=False)
    finally:
        bar.close()
        # 5. collect: fold finished rows into the table, even after an interruption
        order = [p.key for p in prepared]
        meta = store.update_meta(
            versions=library_versions(),
            runs=[{"started": started, "finished": datetime.now(timezone.utc).isoformat(),
                   "host": socket.gethostname(), "cells": len(prepared), "computed": computed,
                   "skipped": len(prepared) - len(todo)}],
            generator="torch.Generator('cpu').manual_seed(seed)",
        )
        df = store.consolidate(order=order, metadata={"img2img_lab": {"spec": spec.to_dict(), "versions": meta["versions"]}})
    return SweepResult(df=df, out_dir=store.root, spec=spec, meta=meta)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _execute(pipe, cells: list[_Prepared], *, batched: bool, max_batch_size: int):
    """Yield (prepared, image, status, error, seconds, batch_size) for each cell, in order of completion."""
    import torch

    batch_engine = None
    if batched:
        try:
            from . import batched as batch_engine
        except ImportError:  # pragma: no cover
            batch_engine = None
    direct = []
    if batch_engine is not None:
        batchable = [p for p in cells if batch_engine.can_batch(pipe, {**p.cell.call, "image": p.image})]
        direct = [p for p in cells if p not in batchable]
        if batchable:
            yield from _execute_batched(batch_engine, pipe, batchable, max_batch_size)
    else:
        direct = cells
    for p in direct:
        call = {**p.cell.call, "image": p.image}
        start = time.perf_counter()
        try:
            image, status = run_cell(pipe, call, p.cell.seed)
            error = ""
        except Exception as exc:  # recorded, and the sweep goes on
            if _is_oom(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            image, status, error = None, ERROR, f"{type(exc).__name__}: {exc}"[:2000]
        yield p, image, status, error, time.perf_counter() - start, 1


def _execute_batched(engine, pipe, cells: list[_Prepared], max_batch_size: int):
    calls = [{**p.cell.call, "image": p.image, "generator": _generator(p.cell.seed)} for p in cells]
    start = time.perf_counter()
    outputs = engine.run_batched(pipe, calls, max_batch_size=max_batch_size)
    per_cell = (time.perf_counter() - start) / max(len(cells), 1)
    for p, out in zip(cells, outputs):
        if out.error:
            yield p, None, ERROR, out.error, per_cell, out.batch_size
        else:
            yield p, out.image, NAN if out.nan else OK, "", per_cell, out.batch_size


def load_sweep(out_dir) -> SweepResult:
    """Reopen a sweep folder written by `run_sweep` (its table, spec and metadata).

    Example:
        >>> result = lab.load_sweep("runs/cat")
        >>> result.df.groupby("strength")["ssim"].mean()
    """
    store = SweepStore(out_dir, create=False)
    df = store.read_table()
    if df.empty and not (store.root / "spec.yaml").exists():
        raise ValidationError(f"`out_dir` {str(store.root)!r} holds no sweep (no results.parquet or spec.yaml)")
    return SweepResult(df=df, out_dir=store.root, spec=store.read_spec(), meta=store.read_meta())
