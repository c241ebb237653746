"""What earlier runs took: seconds per denoising step, per model, size, device and dtype.

Every `run_sweep` adds the cells it computed to one small JSON file in the lab's home
(`$IMG2IMG_LAB_HOME/timings.json`, default `~/.cache/img2img_lab`), so `lab.plan` can estimate a
sweep before it runs from what the same model at the same size took on this kind of machine.
A cell's cost is counted as seconds per denoising step it ran (its `seconds` over its
`effective_steps`, so encoding, decoding and writing are spread over the steps); the record keeps
the median of the last `KEEP` cells of each kind. `--calibrate` adds one timed short call.
"""

from __future__ import annotations

import json
import numbers
import os
import statistics
from pathlib import Path

from .store import atomic_write_text
from .vocab import OK

KEEP = 50  # cells remembered per (model, size, device, dtype)
FILE = "timings.json"


def timings_path() -> Path:
    """`$IMG2IMG_LAB_HOME/timings.json` (default `~/.cache/img2img_lab/timings.json`)."""
    home = os.environ.get("IMG2IMG_LAB_HOME") or Path.home() / ".cache" / "img2img_lab"
    return Path(home).expanduser() / FILE


def timing_key(model, width, height, device, dtype) -> str:
    """The kind of a cell, as the record names it: model, size, device type and dtype."""
    device = str(device or "").split(":")[0] or "?"
    return f"{model}|{int(width)}x{int(height)}|{device}|{dtype or '?'}"


def read_timings() -> dict:
    """The record: kind -> seconds per step of its last cells (empty when none or unreadable)."""
    path = timings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def record_rows(rows) -> None:
    """Add finished rows (dicts or a DataFrame's records) to the record; rows without a time,
    size or step count are left out. Never fails a sweep: an unwritable home is skipped."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    new: dict = {}
    for row in rows:
        steps, seconds = row.get("effective_steps"), row.get("seconds")
        if row.get("status") != OK or not _number(steps) or not _number(seconds) or steps < 1 \
                or isinstance(row.get("same_image_as"), str):  # another cell's image: it took no time
            continue
        if not (_number(row.get("width")) and _number(row.get("height"))):
            continue
        key = timing_key(row.get("model"), row["width"], row["height"], row.get("device"), row.get("dtype"))
        new.setdefault(key, []).append(round(float(seconds) / float(steps), 6))
    if not new:
        return
    data = read_timings()
    for key, values in new.items():
        data[key] = (list(data.get(key, [])) + values)[-KEEP:]
    try:
        path = timings_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # the estimate is a convenience; the sweep's own files are what must be written


def seconds_per_step(model, width, height, device, dtype, data: dict | None = None) -> float | None:
    """The median seconds per step recorded for this kind of cell, or None when none was."""
    values = (read_timings() if data is None else data).get(timing_key(model, width, height, device, dtype))
    return statistics.median(values) if values else None


def _number(value) -> bool:
    """A real number (numpy's too), not a bool, not NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
