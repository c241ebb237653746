"""The one sweep loop: skip the cells already finished, run the rest, store each one as it finishes.

Every kind of sweep runs through `run_cells`: `run_sweep` (cells of a `SweepSpec`, one pipeline
per group of cells, batched where it can) and `sweep_chain` (cells of a chain of pipelines). They
differ only in their *executor*, an object whose `run(todo, progress)` yields one `Outcome` per
cell (in any order, as each finishes). The loop owns everything else, once:

1. which cells are finished (`done_keys`: errors are retried; an exact run recomputes cells that
   were not run in exact mode), and, under `accelerate launch`, each process's share of the rest;
2. the progress bar (`Progress`: images, moved at every denoising step);
3. the reproducibility mode (`deterministic`), around the executor;
4. each finished cell's row and image, written to the sweep folder before the next one counts;
5. the table and the run's record in meta.json, folded in even after an interruption.
"""

from __future__ import annotations

import os
import platform
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Protocol

from .errors import ValidationError
from .vocab import DONE_STATUSES

# n shown to one decimal (it grows by fractions of an image); rate in img/s
BAR_FORMAT = "{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
ERROR_CHARS = 2000  # the longest error message a row keeps


@dataclass
class Todo:
    """A cell ready to run: its content key, the row fields known before it runs, and what the
    executor needs to run it (`work`: a prepared spec cell, a chain, ...)."""

    key: str
    row: dict
    work: Any = None


@dataclass
class Outcome:
    """A finished cell: its image (None when it failed), status, and the row fields it adds."""

    todo: Todo
    image: Any
    status: str
    error: str = ""
    seconds: float = 0.0
    batch_size: int = 1
    row: dict = field(default_factory=dict)


class Executor(Protocol):
    """What runs cells for `run_cells`: one `Outcome` per `Todo`, in any order, as each finishes.

    `progress.start(label, batch_size)` when a call (or batch) begins and
    `progress.step(todo.key, step, total)` at each denoising step keep the bar moving; the loop
    counts the cell itself once it is on disk.
    """

    def run(self, todo: list[Todo], progress: "Progress") -> Iterator[Outcome]: ...


def error_text(exc: BaseException) -> str:
    """How a row records a failure: the exception's class and message, shortened to `ERROR_CHARS`."""
    return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]


def library_versions() -> dict:
    """The versions of Python and of the libraries that decide a sweep's pixels (meta.json)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("img2img_lab", "torch", "diffusers", "transformers", "accelerate", "compel", "numpy", "pandas"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------
# 1. what is finished; each process's share


def done_keys(table, *, exact: bool) -> set:
    """Keys finished in a sweep table that a run need not recompute.

    Errors are retried. An exact run also recomputes cells that an earlier run left in the folder
    without the exact mode (batched, or outside deterministic algorithms).
    """
    if table.empty:
        return set()
    done = table["status"].isin(DONE_STATUSES)
    if exact:
        done &= table["exact"].eq(True) if "exact" in table.columns else False
    return set(table.loc[done, "key"])


def resolve_exact(exact, default=False) -> bool:
    """The `exact` of a run: the argument when given, else `default` (a spec's `exact`)."""
    exact = default if exact is None else exact
    if not isinstance(exact, bool):
        raise ValidationError(f"`exact` must be True or False, got {exact!r}")
    return exact


class _SingleProcess:
    num_processes, process_index, is_main_process = 1, 0, True

    def wait_for_everyone(self) -> None:
        pass


def distributed_state():
    """accelerate's PartialState when launched with `accelerate launch` (several processes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _SingleProcess()
    import torch
    from accelerate import PartialState

    # without a GPU, accelerate needs cpu=True to set up its (gloo) process group
    return PartialState(cpu=not torch.cuda.is_available())


def share_of(state, todo: list) -> list:
    """This process's share of the cells to compute (all of them in a single process).

    Every process has read the table before any of them writes."""
    if state.num_processes == 1:
        return todo
    state.wait_for_everyone()
    with state.split_between_processes(todo) as share:
        return list(share)


# --------------------------------------------------------------------------------------------
# 2. the bar


class Progress:
    """The sweep's one bar, counted in images and moved at every denoising step.

    A cell's image is split into one part per denoising step plus one for decoding and writing,
    so the bar moves steadily inside a batch and its rate (images/s) and time left hold still;
    a finished cell counts exactly 1, so the final count is the number of cells.
    """

    def __init__(self, bar):
        self.bar, self.done, self.partial = bar, 0, {}

    def start(self, label: str, size: int) -> None:
        self.bar.set_postfix_str(f"{label} · batch {size}" if size > 1 else f"{label} · 1 call")

    def step(self, ref, step: int, total: int) -> None:
        self.partial[ref] = min(step, total) / (total + 1)  # back to 0 when a batch is retried
        self._show()

    def finished(self, ref) -> None:
        self.partial.pop(ref, None)
        self.done += 1
        self._show()

    def _show(self) -> None:
        if self.bar.disable:
            return
        value = self.done + sum(self.partial.values())
        self.bar.update(value - self.bar.n)
        if not self.partial:
            self.bar.n = self.done  # whole images: no float drift in the count


# --------------------------------------------------------------------------------------------
# 3. the reproducibility mode


@contextmanager
def deterministic(on: bool = True):
    """`torch.use_deterministic_algorithms(True)` (and cuDNN's deterministic mode) for a block.

    On CUDA, cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` for deterministic matrix products: it is set
    (to `:4096:8`) when unset. Ops that have no deterministic implementation warn (`warn_only`)
    rather than stop the sweep. The previous settings come back afterwards.
    """
    if not on:
        yield
        return
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


# --------------------------------------------------------------------------------------------
# the loop


def threads() -> int:
    """The CPU threads torch computes with: CPU kernels round by thread count, so bit-for-bit
    equality holds between runs at the same count (each row records it)."""
    import torch

    return torch.get_num_threads()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def finished_row(outcome: Outcome, *, exact: bool) -> dict:
    """A finished cell's row: what was known before it ran, what its executor adds, how it went."""
    row = {**outcome.todo.row, **outcome.row}
    row.setdefault("batched", False)  # through the batched engine, or one call
    row.update(status=outcome.status, error=outcome.error, seconds=round(outcome.seconds, 4),
               batch_size=outcome.batch_size, exact=exact, threads=threads(), created=_now())
    if outcome.image is not None:
        row["width"], row["height"] = outcome.image.size
    return row


def run_cells(store, cells: list[Todo], executor: Executor, *, exact: bool = False, progress: bool = True,
              desc: str = "sweep", run_info: dict | None = None, generator: str = "",
              table_metadata: dict | None = None, before_run=None):
    """Run the cells of a sweep folder that are not finished yet, and return (table, meta).

    Args:
        store: the folder's `SweepStore`.
        cells: every cell of the sweep, in the order the table lists them.
        executor: runs the cells (see `Executor`).
        exact: the reproducibility mode: cells not run in it are recomputed, the executor runs
            under `deterministic()`, and every row records it.
        progress: show a `tqdm.auto` bar over the cells this process computes.
        desc: the bar's label.
        run_info: more fields for this run's record in meta.json.
        generator: how the cells were seeded, for meta.json.
        table_metadata: key-value metadata stored in results.parquet.
        before_run: called once (in the main process) after the skip and before any cell runs,
            e.g. to write spec.yaml.
    """
    from tqdm.auto import tqdm

    # 1. skip what is finished; under `accelerate launch` each process takes its share of the rest
    state = distributed_state()
    done = done_keys(store.read_table(), exact=exact)
    todo = [c for c in cells if c.key not in done]
    mine = share_of(state, todo)
    if state.is_main_process and before_run is not None:
        before_run()
    # 2. one bar over this process's cells
    label = desc if state.num_processes == 1 else f"{desc} [{state.process_index}]"
    bar = tqdm(total=len(mine), desc=label, unit="img", disable=not progress or not mine,
               position=state.process_index, bar_format=BAR_FORMAT)
    shown = Progress(bar)
    started, computed, finished = _now(), 0, False
    try:
        # 3. run them (deterministic algorithms in exact mode); 4. store each one as it finishes
        with deterministic(exact):
            for outcome in executor.run(mine, shown):
                row = finished_row(outcome, exact=exact)
                key = outcome.todo.key
                row["image_path"] = store.write_image(key, outcome.image, row) if outcome.image is not None else ""
                store.write_row(row)
                computed += 1
                shown.finished(key)
        finished = True
    finally:
        bar.close()
        if finished and state.num_processes > 1:
            state.wait_for_everyone()  # every share is on disk before the table is folded
        # 5. collect: fold finished rows into the table, even after an interruption
        order = [c.key for c in cells]
        record = {"started": started, "finished": _now(), "host": socket.gethostname(), "cells": len(cells),
                  "keys": order, "computed": computed, "skipped": len(cells) - len(todo), "exact": exact,
                  "process": state.process_index, "num_processes": state.num_processes, **(run_info or {})}
        meta = store.update_meta(versions=library_versions(), runs=[record], generator=generator)
        if table_metadata is not None:
            table_metadata = {**table_metadata, "img2img_lab": {**table_metadata.get("img2img_lab", {}),
                                                                "versions": meta["versions"]}}
        df = store.consolidate(order=order, metadata=table_metadata)
    return df, meta
