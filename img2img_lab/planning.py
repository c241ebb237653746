"""A sweep's plan before it runs: how many cells, what is done, what loads, how long, how big.

`plan(spec, out_dir)` loads no model (unless `calibrate=True`): it expands the grid, reads and
hashes the init images (as the sweep would, writing nothing), reads the folder's table for what is
finished, and counts what running the rest loads in the runner's cost order. The time estimate
comes from the seconds per denoising step that earlier runs of the same model at the same size on
this kind of device took (`timings.py`); where there are none it says "unknown", and
`calibrate=True` times one short call per kind of cell (which loads the model). `img2img-lab sweep
SPEC --dry-run [--calibrate]` prints the same plan.
"""

from __future__ import annotations

import html
import time
from types import SimpleNamespace
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import check_sources
from .errors import ValidationError
from .families import family_of_class
from .grid import MAX_MEGAPIXELS, check_cell_size, grid_pixel_size
from .knobs import known_class
from .loaders import load_pipeline, validate_options
from .loop import done_keys, resolve_exact
from .runner import (as_spec, call_for, check_knobs_before_loading, count_loads, prepare_cells, run_cell, run_dtype,
                     quiet_progress, same_image_count)
from .store import SweepStore
from .timings import read_timings, record_rows, seconds_per_step
from .torchutil import resolve_device
from .validation import pipeline_call_defaults
from .vocab import TINY_SIZE, effective_steps

BYTES_PER_PIXEL = 2.0  # a PNG of a photo-like image, when the folder has no images to measure yet
PREFERRED_AXES = ("strength", "guidance_scale")  # the grid's x and y when the spec sweeps them


@dataclass(frozen=True)
class GridPlan:
    """The sweep's labelled grid as `grid_image` would draw it: its axes, pixel size, and the axis to
    split it by when it is past `MAX_MEGAPIXELS` (None when nothing is left to split by)."""

    x: str
    y: str | None
    z: str | None
    width: int | None  # None: the init image's size is not known (not readable here)
    height: int | None
    split_by: str | None

    @property
    def megapixels(self) -> float | None:
        return None if self.width is None else self.width * self.height / 1e6


@dataclass
class SweepPlan:
    """What running a spec would do; `str(plan)` is the text the CLI prints, in a notebook a table.

    Attributes:
        cells: the cells of the spec.
        done: of them, those already finished in the folder (a run skips them); None when the
            init images could not be read here (`unread` says why), so the cells' keys are unknown.
        todo: those a run would produce.
        same_image: of `todo`, those giving the same pixels as another cell (the base model at
            each `lora_scale`): a run computes each such picture once and stores it for each cell.
        loads: what running `todo` loads: counts of "model", "lora", "ip_adapter", "scheduler".
        batch: model -> the largest number of images per batch its cells would run in (1: one
            call each), or None when the model's class is unknown before loading it.
        seconds: the estimated time of `todo`, or None when some kind of cell has no timing yet.
        unknown: the kinds of cell ("model at WxH on device dtype") without a timing.
        disk_bytes: the estimated size of the images to write (None: their size is unknown).
        grid: the sweep's grid (`GridPlan`), or None when nothing is swept.
        notes: what the run would say first (tiny models at their small size, a stand-in picture).
        unread: why the init images could not be read (a URL offline), or None.

    Not checked by a plan: the Hub (a hub LoRA or model is found when a run fetches it).
    """

    cells: int
    done: int
    todo: int
    loads: dict
    batch: dict
    seconds: float | None
    unknown: list
    disk_bytes: int
    grid: GridPlan | None
    same_image: int = 0
    notes: list = field(default_factory=list)
    unread: str | None = None

    def lines(self) -> list[tuple[str, str]]:
        """(what, value) pairs, in the order a person reads them."""
        loads = self.loads
        load_text = f"{loads['model']} model{'s' if loads['model'] != 1 else ''}"
        for kind, name in (("lora", "LoRA"), ("ip_adapter", "IP-Adapter"), ("scheduler", "scheduler")):
            if loads.get(kind):
                load_text += f", {loads[kind]} {name}{'s' if loads[kind] != 1 else ''}"
        batches = ", ".join(f"{m}: {'unknown until loaded' if b is None else b}" for m, b in self.batch.items())
        if self.seconds is not None:
            time_text = _duration(self.seconds)
        else:
            time_text = ("unknown (no earlier run of " + "; ".join(self.unknown[:3])
                         + ("; ..." if len(self.unknown) > 3 else "") + "; --calibrate times one short call)")
        todo = f"{self.todo:,}"
        if self.same_image:
            todo += (f" ({self.same_image:,} of them the same picture as another cell, e.g. the base model at each "
                     f"lora_scale: computed once)")
        rows = [
            ("cells", f"{self.cells:,}"),
            ("already done", f"{self.done:,}" if self.done is not None else
             "unknown: the init image can't be read here, so the cells' keys are unknown"),
            ("to compute", todo),
            ("loads", load_text if self.todo else "none"),
            ("images per batch", (batches or "none") if self.todo else "none"),
            ("estimated time", time_text if self.todo else "none"),
            ("disk needed", ("unknown (the images' size)" if self.disk_bytes is None else
                             f"about {_size(self.disk_bytes)}") if self.todo else "none"),
        ]
        if self.grid is not None:
            g = self.grid
            axes = " x ".join(a for a in (g.x, g.y) if a) + (f", panels by {g.z}" if g.z else "")
            if g.width is None:
                rows.append(("grid", f"size unknown until the init image is read ({axes})"))
                return rows
            text = f"{g.width:,} x {g.height:,} px ({g.megapixels:.1f} MP; {axes})"
            if g.megapixels > MAX_MEGAPIXELS:
                text += (f", past the {MAX_MEGAPIXELS} MP limit: split it with split_by={g.split_by!r}" if g.split_by
                         else f", past the {MAX_MEGAPIXELS} MP limit: use a smaller cell_size or where=")
            rows.append(("grid", text))
        return rows

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.lines())
        body = "\n".join(f"{k:<{width}}  {v}" for k, v in self.lines())
        return "\n".join([*self.notes, *([self.unread] if self.unread else []), body])

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in self.lines())
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in [*self.notes, *([self.unread] if self.unread else [])])
        return f"{notes}<table>{rows}</table>"


def plan(spec, out_dir=None, *, exact=None, batched: bool = True, max_batch_size: int = 8,
         calibrate: bool = False, cell_size: int = 256) -> SweepPlan:
    """What `run_sweep(spec, out_dir)` would do, without loading any model.

    Args:
        spec: a `SweepSpec`, a YAML path or a flat dict.
        out_dir: the sweep folder (its finished cells count as done); None: nothing done yet.
        exact, batched, max_batch_size: as `run_sweep` would run.
        calibrate: time one short call (2 denoising steps, after a 1-step warm-up) for each kind of
            cell without a timing; this loads its model. The timing is kept for later plans.
        cell_size: the grid's cell size (as `grid_image`), for its pixel size.

    Returns:
        A `SweepPlan`; `print(plan)` shows it.

    Example:
        >>> print(lab.plan("sweeps/strength_x_guidance.yaml", "runs/sxg"))
        cells             20
        already done      0
        ...
    """
    # 1. the cells and their keys, as run_sweep would compute them (no model, nothing written)
    spec = as_spec(spec)
    check_cell_size(cell_size)  # before the init images are read
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValidationError(f"`max_batch_size` must be an int >= 1, got {max_batch_size!r}")
    exact = resolve_exact(exact, getattr(spec, "exact", False))
    validate_options(dict(spec.options))
    check_knobs_before_loading(spec)  # what a run refuses before loading, the plan refuses too
    check_sources(spec.cells())  # adapter files on this machine (the Hub's are found when fetched)
    notes: list = []
    unread = None  # why the init images can't be read here (a URL offline): keys, done and sizes unknown
    try:
        prepared = prepare_cells(spec, None, run_dtype(spec, None), notes)
    except ValidationError as exc:
        if calibrate or "URL could not be fetched" not in str(exc):
            raise
        unread = str(exc)
        prepared = [SimpleNamespace(cell=c, key=f"cell {i}", compute_key="", image=None)
                    for i, c in enumerate(spec.cells())]
    # 2. what the folder has finished
    table = None
    if out_dir is not None and Path(out_dir).expanduser().is_dir():
        store = SweepStore(out_dir, create=False)
        table = store.read_table()
    done = done_keys(table, exact=exact) if table is not None and unread is None else set()
    todo = [p for p in prepared if p.key not in done]
    # 3. loads, batches, time, disk, grid
    loads = count_loads(todo)
    same = same_image_count(todo)
    batch = _batches(spec, todo, batched=batched and not exact, max_batch_size=max_batch_size)
    device = resolve_device(spec.options.get("device"))
    dtype = run_dtype(spec, None)
    if calibrate:
        _calibrate(spec, todo, device, dtype)
    seconds, unknown = _estimate(spec, todo, device, dtype)
    sizes = [_size_of(p) for p in todo]
    disk = None if None in sizes else int(sum(w * h for w, h in sizes) * _bytes_per_pixel(out_dir, table))
    return SweepPlan(cells=len(prepared), done=None if unread else len(prepared) - len(todo), todo=len(todo),
                     loads=loads, batch=batch, seconds=seconds, unknown=unknown, disk_bytes=disk,
                     grid=_grid(spec, prepared, cell_size), same_image=same, notes=notes, unread=unread)


# --------------------------------------------------------------------------------------------


def _size_of(p) -> tuple[int, int] | None:
    """The picture size a cell will produce: its call's height/width, else its init image's
    (rounded down to 8, as the VAE does); None when the init image could not be read."""
    call = p.cell.call
    width, height = call.get("width"), call.get("height")
    if width and height:
        return int(width), int(height)
    if p.image is None:
        return None
    w, h = p.image.size
    return int(width or w // 8 * 8), int(height or h // 8 * 8)


def _steps(spec, p) -> int | None:
    """The denoising steps a cell runs: from its call, else its tiny twin's pipeline defaults."""
    steps = effective_steps(p.cell.call)
    if steps is not None:
        return steps
    cls = known_class(p.cell.model, spec.options)
    if cls is None:
        return None
    defaults = pipeline_call_defaults(cls)
    call = {"num_inference_steps": defaults.get("num_inference_steps"), **{k: v for k, v in p.cell.call.items()
                                                                           if v is not None}}
    if "strength" in defaults and call.get("strength") is None:
        call["strength"] = defaults["strength"]
    return effective_steps(call)


def _kind(p, device, dtype) -> tuple | None:
    size = _size_of(p)
    return None if size is None else (str(p.cell.model), *size, device, dtype)


def _estimate(spec, todo, device, dtype) -> tuple[float | None, list]:
    data = read_timings()
    total, unknown, seen = 0.0, [], set()
    for p in todo:
        if (p.compute_key or p.key) in seen:
            continue  # the same picture as a cell before it: not computed again
        seen.add(p.compute_key or p.key)
        kind = _kind(p, device, dtype)
        if kind is None:
            text = f"{p.cell.model} at the init image's size, which is not known until it is read"
            if text not in unknown:
                unknown.append(text)
            continue
        rate = seconds_per_step(*kind, data=data)
        steps = _steps(spec, p)
        if rate is None or steps is None:
            text = f"{kind[0]} at {kind[1]}x{kind[2]} on {str(device).split(':')[0]} {dtype}"
            if text not in unknown:
                unknown.append(text)
            continue
        total += rate * steps
    return (None if unknown else total), unknown


def _calibrate(spec, todo, device, dtype) -> None:
    """One short timed call for each kind of cell without a timing (loads its model)."""
    data = read_timings()
    seen = set()
    for p in todo:
        kind = _kind(p, device, dtype)
        if kind in seen or seconds_per_step(*kind, data=data) is not None:
            continue
        seen.add(kind)
        pipe = load_pipeline(str(p.cell.model), **dict(spec.options))
        call = call_for(pipe, p)
        if "strength" in call:
            call["strength"] = 1.0  # all of the steps below run
        with quiet_progress(pipe):
            run_cell(pipe, {**call, "num_inference_steps": 1}, p.cell.seed)  # warm-up
            start = time.perf_counter()
            run_cell(pipe, {**call, "num_inference_steps": 2}, p.cell.seed)
            seconds = time.perf_counter() - start
        record_rows([{"model": kind[0], "width": kind[1], "height": kind[2], "device": device, "dtype": dtype,
                      "seconds": seconds, "effective_steps": 2, "status": "ok"}])
        data = read_timings()


def _batches(spec, todo, *, batched: bool, max_batch_size: int) -> dict:
    """Model -> the largest batch its cells would run in (1: one call each; None: not known yet)."""
    out: dict = {}
    for model in dict.fromkeys(str(p.cell.model) for p in todo):
        cells = [p for p in todo if str(p.cell.model) == model]
        cls = known_class(model, spec.options)
        if not batched:
            out[model] = 1
            continue
        if cls is None:
            out[model] = None
            continue
        if family_of_class(cls).batching is None:
            out[model] = 1
            continue
        groups: dict = {}
        for p in cells:
            if p.cell.ip_adapter is not None or p.cell.compel:
                continue  # an IP-Adapter's image embeddings, compel's embeddings: one call each
            key = (p.cell.lora, p.cell.lora_scale, p.cell.scheduler, p.cell.call.get("num_inference_steps"),
                   _size_of(p))
            groups[key] = groups.get(key, 0) + 1
        out[model] = max([min(n, max_batch_size) for n in groups.values()] + [1])
    return out


def _bytes_per_pixel(out_dir, table) -> float:
    """Measured from the folder's images when it has some, else `BYTES_PER_PIXEL`."""
    if table is None or table.empty or "image_path" not in table.columns:
        return BYTES_PER_PIXEL
    sizes, pixels = 0, 0
    for row in table.head(50).itertuples():
        path = Path(out_dir).expanduser() / str(getattr(row, "image_path", "") or "")
        w, h = getattr(row, "width", None), getattr(row, "height", None)
        if path.is_file() and w == w and h == h and w and h:
            sizes += path.stat().st_size
            pixels += int(w) * int(h)
    return sizes / pixels if pixels else BYTES_PER_PIXEL


def _grid(spec, prepared, cell_size: int) -> GridPlan | None:
    """The sweep's grid: x and y from the swept axes (strength x guidance_scale first), z the
    next; its pixel size as `grid_image` would draw it, and the axis to split it by."""
    swept = list(spec.swept)
    if not swept:
        return None
    ordered = [a for a in PREFERRED_AXES if a in swept] + [a for a in swept if a not in PREFERRED_AXES]
    x = ordered[0]
    y = ordered[1] if len(ordered) > 1 else None
    z = ordered[2] if len(ordered) > 2 else None
    counts = {k: len(v) for k, v in spec.axis_values()}
    rest = ordered[3:]
    size = _size_of(prepared[0]) if prepared else (TINY_SIZE, TINY_SIZE)
    if size is None:
        return GridPlan(x, y, z, None, None, (rest or ([z] if z else []) or [None])[0])
    n_inits = counts.get("image", 1) if "image" in (x, y, z) else 1
    width, height = grid_pixel_size(counts[x], counts[y] if y else 1, counts[z] if z else 1, image_size=size,
                                    cell_size=cell_size, n_inits=n_inits)
    split = (rest or ([z] if z else []) or [None])[0]
    return GridPlan(x, y, z, width, height, split)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
