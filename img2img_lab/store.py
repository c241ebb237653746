"""The sweep folder on disk: the only module that writes sweep files.

Every write is atomic (a temp file in the same folder, then `os.replace`), so a process killed at
any moment leaves either the old file or the new one, never half of one. Each finished cell is
journalled as its own small row file (`rows/<key>.json`) the moment its PNG is in place; the
parquet table is a consolidation of those rows, rebuilt under a file lock. Several processes can
therefore write into one folder at once (distinct cells, or even the same cell) without losing or
duplicating a row. Temp files of a killed writer (`.<name>.<random>.tmp`) are never read as results;
opening the folder for writing deletes those older than `STALE_TEMP_SECONDS`.

Layout:
    results.parquet   the table (consolidated rows)
    rows/<key>.json   one journalled row per finished cell
    images/<key>.png  outputs, named by content key only (never by prompt or model id)
    inputs/<hash>.png init images, stored once each
    spec.yaml, meta.json
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from PIL import Image, PngImagePlugin

from .errors import StoreError, ValidationError
from .spec import SweepSpec

TABLE = "results.parquet"
META = "meta.json"
SPEC = "spec.yaml"
PNG_KEY = "img2img_lab"  # PNG text chunk holding the cell's parameters as JSON
# A temp file (`.<name>.<random>.tmp`) this many seconds old was left by a writer that died: an atomic
# write takes well under a second, and the margin keeps a live writer's file in a shared folder safe.
STALE_TEMP_SECONDS = 600.0


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` then move the temp file over `path` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; sweep folders are shared (other users, machines)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_parquet(df: pd.DataFrame, path: Path, metadata: dict | None = None) -> None:
    """Write a DataFrame as parquet atomically (pyarrow), with optional key/value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        table = pa.Table.from_pandas(text_where_mixed(df), preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): json.dumps(v, default=str).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    _atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_png(path, image: Image.Image) -> Path:
    """Write a PIL image as a PNG atomically (a grid beside the sweep's files); returns the path."""
    path = Path(path)
    _atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def read_png(path, max_pixels: int) -> Image.Image:
    """A PNG this package wrote, read whole when it has at most ``max_pixels`` pixels.

    `PIL.Image.open` checks every image against ``PIL.Image.MAX_IMAGE_PIXELS`` (a warning past
    ~89 MP, `DecompressionBombError` past twice that), a guard against unknown files. The
    package's own grids may be larger (200 MP), so this opens the file with PIL's PNG reader,
    which leaves that check to its caller, and checks the size against ``max_pixels`` itself:
    the global limit is never changed, so every other reader keeps it.

    Example:
        >>> read_png("runs/demo/grid.png", max_pixels=200_000_000).size
        (13000, 15000)
    """
    from PIL import PngImagePlugin

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"`path` must be a PNG file, got {str(path)!r}, which does not exist")
    try:
        image = PngImagePlugin.PngImageFile(path)
    except (SyntaxError, OSError) as exc:  # PIL raises SyntaxError for "not a PNG file"
        raise StoreError(f"`path` must be a PNG file, got {str(path)!r}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise StoreError(
            f"`path` {str(path)!r} is {width} x {height} px = {width * height / 1e6:,.1f} MP, past the "
            f"limit of {max_pixels / 1e6:g} MP"
        )
    try:
        image.load()  # reads the pixels and closes the file
    except OSError as exc:
        image.close()
        raise StoreError(f"`path` {str(path)!r} could not be read: {exc}") from None
    return image


def text_where_mixed(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each column that mixes text and numbers (a `lora_scale` of 0.5 beside per-LoRA
    scales "a=0.5, b=1") as text throughout, which parquet can hold; other columns unchanged."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        kinds = {type(v) for v in out[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if str in kinds and len(kinds) > 1:
            out[column] = out[column].map(lambda v: v if v is None or isinstance(v, str) or
                                          (isinstance(v, float) and math.isnan(v)) else format(v, "g")
                                          if isinstance(v, (int, float)) else str(v))
    return out


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _clean(value):
    """JSON-safe scalars; NaN floats become None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def a1111_parameters(params: dict) -> str:
    """The parameters in the "parameters" text format that AUTOMATIC1111's PNG Info tab reads."""
    lines = [str(params.get("prompt") or "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = [
        ("Steps", params.get("num_inference_steps")),
        ("Sampler", params.get("scheduler")),
        ("CFG scale", params.get("guidance_scale")),
        ("Seed", params.get("seed")),
        ("Denoising strength", params.get("strength")),
        ("Model", params.get("model")),
        ("Lora hashes", _lora_hashes(params)),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None))
    return "\n".join(lines)


def _lora_hashes(params: dict) -> str | None:
    """A1111's `Lora hashes: "name: hash, ..."` for a cell with LoRAs (names: the files' stems)."""
    weights, hashes = params.get("lora_weights"), params.get("lora_sha256")
    if not isinstance(weights, str) or not isinstance(hashes, str) or not weights:
        return None
    names = [Path(source.rstrip("/")).stem or source for source in json.loads(weights)]
    pairs = ", ".join(f"{name}: {digest}" for name, digest in zip(names, hashes.split(" + ")))
    return f'"{pairs}"'


def read_png_parameters(path) -> dict:
    """The parameters stored in a PNG written by a sweep (one file alone says how to reproduce it).

    Example:
        >>> lab.store.read_png_parameters("runs/demo/images/3f2a....png")["strength"]
        0.6
    """
    with Image.open(path) as im:
        text = im.text.get(PNG_KEY) if hasattr(im, "text") else None
    if text is None:
        raise StoreError(f"`path` must be a PNG written by an img2img_lab sweep (with its parameters), "
                         f"got {str(path)!r}, which carries none")
    return json.loads(text)


def _identity(path: Path):
    """What changes when a file is replaced (`os.replace` of a new temp file): None if absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class SweepStore:
    """Reads and writes one sweep folder.

    Args:
        out_dir: the folder; created if missing. An unwritable folder is a `ValidationError`.
    """

    def __init__(self, out_dir, create: bool = True):
        self.root = Path(out_dir).expanduser()
        if create:
            try:
                for sub in ("images", "inputs", "rows"):
                    (self.root / sub).mkdir(parents=True, exist_ok=True)
                probe = self.root / f".write-probe-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise ValidationError(f"`out_dir` {str(self.root)!r} is not writable: {exc.strerror or exc}") from None
            self.remove_stale_temp_files()
        elif not self.root.is_dir():
            raise ValidationError(f"`out_dir` {str(self.root)!r} is not a sweep folder (it does not exist)")

    def remove_stale_temp_files(self, older_than: float | None = None) -> list[Path]:
        """Delete temp files a killed process left behind (never read as results; this frees the disk).

        Only files older than `older_than` seconds (default `STALE_TEMP_SECONDS`) go, so the temp
        file of another process writing into the same folder right now is left alone.
        """
        cutoff = time.time() - (STALE_TEMP_SECONDS if older_than is None else older_than)
        removed = []
        for folder in (self.root, self.root / "images", self.root / "inputs", self.root / "rows"):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if not ((name.startswith(".") and name.endswith(".tmp")) or name.startswith(".write-probe-")):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
                except OSError:
                    continue  # removed meanwhile, or not ours to remove
        return removed

    # -- files of one cell ---------------------------------------------------------------

    def image_path(self, key: str) -> Path:
        return self.root / "images" / f"{key}.png"

    def write_image(self, key: str, image: Image.Image, params: dict) -> str:
        """Write a cell's output PNG with its parameters in text chunks; returns the relative path."""
        info = PngImagePlugin.PngInfo()
        info.add_text(PNG_KEY, json.dumps({k: _clean(v) for k, v in params.items()}, default=_json_default))
        info.add_text("parameters", a1111_parameters(params))
        path = self.image_path(key)
        _atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
        return path.relative_to(self.root).as_posix()

    def write_input(self, image_hash: str, image: Image.Image) -> str:
        """Store an init image once (by content hash); returns the relative path."""
        path = self.root / "inputs" / f"{image_hash}.png"
        if not path.exists():
            _atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
        return path.relative_to(self.root).as_posix()

    def write_row(self, row: dict) -> None:
        """Journal one finished cell (after its PNG is in place)."""
        text = json.dumps({k: _clean(v) for k, v in row.items()}, default=_json_default)
        atomic_write_text(self.root / "rows" / f"{row['key']}.json", text)

    # -- the table -----------------------------------------------------------------------

    def _journal(self) -> tuple[list[Path], list[dict]]:
        paths, rows = [], []
        for path in sorted((self.root / "rows").glob("*.json")):
            try:
                rows.append(json.loads(path.read_text(encoding="utf-8")))
                paths.append(path)
            except FileNotFoundError:
                continue  # consolidated by another process meanwhile
            except json.JSONDecodeError:
                continue  # only possible for a file written by something else: atomic writes never tear
        return paths, rows

    def read_table(self) -> pd.DataFrame:
        """The table: consolidated parquet plus any journalled rows not yet in it (newest wins)."""
        path = self.root / TABLE
        for _ in range(20):
            # Another process may fold the journal into the table between our two reads (new table
            # written, then its journal files deleted): we would see neither. Read again then.
            before = _identity(path)
            frames = []
            if before is not None:
                try:
                    frames.append(pd.read_parquet(path))
                except Exception as exc:
                    raise StoreError(f"`out_dir` {str(self.root)!r} must hold a readable {TABLE}, got one that "
                                     f"could not be read ({type(exc).__name__}: {exc})") from None
            _, journal = self._journal()
            if _identity(path) == before:
                break
        if journal:
            frames.append(pd.DataFrame(journal))
        frames = [f for f in frames if not f.empty]
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        # a journalled row is newer than the consolidated one with the same key
        df = df.drop_duplicates(subset="key", keep="last").reset_index(drop=True)
        return df

    @contextmanager
    def lock(self, timeout: float = 600):
        from filelock import FileLock

        with FileLock(str(self.root / ".lock"), timeout=timeout):
            yield

    def consolidate(self, order: list[str] | None = None, metadata: dict | None = None) -> pd.DataFrame:
        """Fold journalled rows into results.parquet (under the folder's lock) and return the table.

        Rows follow `order` (a list of keys, e.g. the spec's cell order) first, then the rest.
        """
        with self.lock():
            old = self.root / TABLE
            base = pd.read_parquet(old) if old.exists() else pd.DataFrame()
            paths, rows = self._journal()
            journal = pd.DataFrame(rows)
            if journal.empty:
                df = base
            elif base.empty:
                df = journal
            else:
                # columns added to the table later (metrics) stay with a row folded in twice (a crash
                # between the table write and the journal clean-up), never with a recomputed image
                extra = [c for c in base.columns if c not in journal.columns]
                same = ["key", "created"] if "created" in base.columns and "created" in journal.columns else ["key"]
                fresh = journal.merge(base[same + extra], on=same, how="left") if extra else journal
                df = pd.concat([base[~base["key"].isin(journal["key"])], fresh], ignore_index=True)
            if not df.empty and order:
                rank = {k: i for i, k in enumerate(order)}
                df = (df.assign(_rank=df["key"].map(rank).fillna(len(rank)))
                      .sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True))
            if not df.empty:
                atomic_write_parquet(df, old, metadata)
            for path in paths:  # folded into the table: the journal entry is no longer needed
                path.unlink(missing_ok=True)
            return df

    def write_table(self, df: pd.DataFrame, metadata: dict | None = None) -> None:
        """Replace the table (e.g. with metric columns added), under the folder's lock.

        Rows on disk that `df` lacks are kept: another process folded them in after `df` was read.
        """
        with self.lock():
            path = self.root / TABLE
            if path.exists() and "key" in df.columns:
                current = pd.read_parquet(path)
                if "key" in current.columns:
                    newer = current[~current["key"].isin(df["key"])]
                    if not newer.empty:
                        df = pd.concat([df, newer], ignore_index=True)
            atomic_write_parquet(df, path, metadata)

    # -- spec and metadata ---------------------------------------------------------------

    def read_meta(self) -> dict:
        path = self.root / META
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StoreError(f"`out_dir` {str(self.root)!r} must hold a valid {META}, got invalid JSON ({exc})") from None

    def update_meta(self, **changes) -> dict:
        with self.lock():
            meta = self.read_meta()
            for key, value in changes.items():
                if key == "runs":
                    meta.setdefault("runs", []).extend(value)
                else:
                    meta[key] = value
            atomic_write_text(self.root / META, json.dumps(meta, indent=2, default=_json_default))
            return meta

    def write_spec(self, spec) -> None:
        atomic_write_text(self.root / SPEC, spec.to_yaml())

    def read_spec(self):
        path = self.root / SPEC
        if not path.exists():
            return None
        return SweepSpec.from_yaml(path)
