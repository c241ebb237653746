"""LoRAs and IP-Adapters: where a source's weights are, their hash, and switching them on a pipeline.

A spec names adapters by source, as it names models: an embedded tiny one (`tiny/sd15-lora`,
`tiny/sd15-ip-adapter`), a local folder or file, a Hub repo (`owner/name`) or one file in it
(`owner/name/sub/file.safetensors`). `resolve_lora` / `resolve_ip_adapter` turn a source into a
local file (downloading a Hub one into the Hugging Face cache, or finding it there offline), so
every load goes through diffusers' own loaders from a local folder and every row can record the
file's hash. `AdapterSwitch` keeps one pipeline's adapters during a sweep: each LoRA is loaded once
(`load_lora_weights`, then `set_adapters` per group of cells, `disable_lora` for the base model),
the IP-Adapter once per source (`load_ip_adapter`, `set_ip_adapter_scale`), and everything is
unloaded afterwards so the cached pipeline is the base model again.

Plain at import: diffusers and huggingface_hub are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import ValidationError
from .loaders import hub_unreachable_reason
from .quiet import quiet_adapters
from .tiny import tiny_model_path
from .validation import check_tiny_adapter, pipeline_adapters
from .vocab import PICKLE_SUFFIXES, is_tiny, looks_like_hub_id, tiny_adapter

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights writes
IP_ADAPTER_FILE = "ip_adapter.safetensors"  # the tiny IP-Adapter's file (h94/IP-Adapter names its own)
IMAGE_ENCODER = "image_encoder"  # the folder beside an IP-Adapter file holding its CLIP image encoder
WEIGHT_SUFFIXES = (".safetensors", *sorted(PICKLE_SUFFIXES))
HASH_CHARS = 12  # a row's `lora_sha256`: the file's sha256, shortened (Civitai's "AutoV2" is its first 10)


@dataclass(frozen=True)
class AdapterFile:
    """One adapter's weights on this machine.

    Args:
        source: the source as the spec gave it.
        folder: the local folder diffusers loads from.
        weight_name: the weights file inside `folder`.
        kind: "lora" or "ip_adapter" (the spec key it came from, for messages).
    """

    source: str
    folder: Path
    weight_name: str
    kind: str

    @property
    def path(self) -> Path:
        return self.folder / self.weight_name

    @property
    def sha256(self) -> str:
        """The file's sha256 (hex), computed once per file and modification."""
        return file_sha256(self.path)

    @property
    def short_hash(self) -> str:
        return self.sha256[:HASH_CHARS]

    @property
    def pickle(self) -> bool:
        return Path(self.weight_name).suffix.lower() in PICKLE_SUFFIXES


_HASHES: dict = {}  # (path, size, mtime) -> sha256


def file_sha256(path) -> str:
    """The sha256 of a file (hex), cached per path, size and modification time."""
    path = Path(path)
    stat = path.stat()
    ref = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if ref not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[ref] = digest.hexdigest()
    return _HASHES[ref]


# --------------------------------------------------------------------------------------------
# source -> local file


def resolve_lora(source: str, *, allow_pickle: bool = False) -> AdapterFile:
    """Where LoRA `source` is on this machine: a tiny name, a `.safetensors` file, a folder holding
    one (diffusers' `pytorch_lora_weights.safetensors` first), a Hub repo or a file in one.

    Raises:
        ValidationError: naming `lora` and the source when it can't be found, is ambiguous, or is a
            pickle file without `allow_pickle`.

    Example:
        >>> resolve_lora("tiny/sd15-lora").weight_name
        'pytorch_lora_weights.safetensors'
    """
    found = _resolve("lora", source, preferred=LORA_FILE)
    return _checked_pickle(found, allow_pickle)


def resolve_ip_adapter(source: str, *, allow_pickle: bool = False) -> AdapterFile:
    """Where IP-Adapter `source` is on this machine (as `resolve_lora`; a Hub file such as
    `h94/IP-Adapter/models/ip-adapter_sd15.safetensors` brings the `image_encoder/` folder beside it).

    Example:
        >>> resolve_ip_adapter("tiny/sd15-ip-adapter").weight_name
        'ip_adapter.safetensors'
    """
    found = _resolve("ip_adapter", source, preferred=IP_ADAPTER_FILE)
    return _checked_pickle(found, allow_pickle)


def _checked_pickle(found: AdapterFile, allow_pickle: bool) -> AdapterFile:
    if found.pickle and not allow_pickle:
        raise ValidationError(
            f"`{found.kind}` {found.source!r} is a pickle file ({found.weight_name}), which can run code when "
            f"loaded; use its .safetensors version, or set the option allow_pickle: true if you trust it"
        )
    return found


def _resolve(kind: str, source: str, *, preferred: str) -> AdapterFile:
    if not isinstance(source, str) or not source.strip():
        raise ValidationError(f"`{kind}` must be a non-empty source string, got {source!r}")
    if is_tiny(source):
        check_tiny_adapter(kind, source)
        return _in_folder(kind, source, tiny_model_path(source), preferred)
    local = Path(source).expanduser()
    if local.is_file():
        return AdapterFile(source, local.parent, local.name, kind)
    if local.is_dir():
        return _in_folder(kind, source, local, preferred)
    where = where_on_hub(kind, source)
    if where is None:
        return _in_folder(kind, source, _hub_snapshot(kind, source), preferred)
    path = _hub_file(kind, source, *where)
    return AdapterFile(source, path.parent, path.name, kind)


def where_on_hub(kind: str, source: str) -> tuple[str, str] | None:
    """For a source that is not on this machine: `(repo, filename)` of a Hub file
    (`owner/name/sub/file.safetensors`), None for a Hub repo (`owner/name`); a missing local
    path (a weights file name, `./x`, `/x`, `~/x`) raises, naming where it was looked for.
    Reads nothing from the network."""
    parts = source.split("/")
    local_form = source.startswith((".", "/", "~", "\\")) or "\\" in source
    weights = Path(source).suffix.lower() in WEIGHT_SUFFIXES
    if not local_form and weights and len(parts) >= 3 and looks_like_hub_id("/".join(parts[:2])) \
            and not Path(parts[0]).expanduser().exists():
        return "/".join(parts[:2]), "/".join(parts[2:])
    if not local_form and not weights and looks_like_hub_id(source) and not Path(parts[0]).exists():
        return None
    raise ValidationError(
        f"`{kind}` {source!r}: no such file or folder (looked for {Path(source).expanduser().absolute()}); a Hub "
        f"source is owner/name or owner/name/file.safetensors"
    )


def is_local_source(source: str) -> bool:
    """Whether a (non-tiny) source names a local file or folder rather than a Hub repo or file."""
    try:
        where_on_hub("lora", source)
    except ValidationError:
        return True
    return False


def check_source(kind: str, source: str) -> None:
    """The checks of a source that need neither the network nor a model: a tiny name is one of
    the tiny adapters, a local path exists (a Hub source is checked when it is fetched)."""
    if is_tiny(source):
        check_tiny_adapter(kind, source)
        return
    if not Path(source).expanduser().exists():
        where_on_hub(kind, source)


def _in_folder(kind: str, source: str, folder: Path, preferred: str) -> AdapterFile:
    """The weights file of a folder: `preferred`, else its one weights file."""
    if (folder / preferred).is_file():
        return AdapterFile(source, folder, preferred, kind)
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    safe = [f for f in files if f.endswith(".safetensors")]
    if len(safe) == 1 or (not safe and len(files) == 1):
        return AdapterFile(source, folder, (safe or files)[0], kind)
    if not files:
        raise ValidationError(f"`{kind}` {source!r} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    raise ValidationError(f"`{kind}` {source!r} holds several weights files {files}; name one: "
                          f"{source.rstrip('/')}/{(safe or files)[0]}")


def _hub_snapshot(kind: str, repo: str) -> Path:
    """A Hub repo's weights files in the local cache (downloaded when the hub answers)."""
    from huggingface_hub import snapshot_download

    reason = hub_unreachable_reason()
    try:
        return Path(snapshot_download(repo, allow_patterns=["*.safetensors", "*.bin", "*.json"],
                                      local_files_only=reason is not None))
    except Exception as exc:  # noqa: BLE001 - not cached offline, no such repo, gated: one line
        why = f"it is not in the local Hugging Face cache and {reason}" if reason else f"{type(exc).__name__}: {exc}"
        raise ValidationError(f"`{kind}` {repo!r} could not be fetched: {str(why).splitlines()[0][:200]}") from None


def _hub_file(kind: str, source: str, repo: str, filename: str) -> Path:
    """One file of a Hub repo in the local cache; an IP-Adapter's image encoder beside it comes too."""
    from huggingface_hub import hf_hub_download, snapshot_download

    reason = hub_unreachable_reason()
    offline = reason is not None
    try:
        path = Path(hf_hub_download(repo, filename, local_files_only=offline))
        if kind == "ip_adapter":
            encoder = f"{Path(filename).parent.as_posix()}/{IMAGE_ENCODER}/*".lstrip("./")
            snapshot_download(repo, allow_patterns=[encoder], local_files_only=offline)
    except Exception as exc:  # noqa: BLE001
        why = f"it is not in the local Hugging Face cache and {reason}" if offline else f"{type(exc).__name__}: {exc}"
        raise ValidationError(f"`{kind}` {source!r} could not be fetched: {str(why).splitlines()[0][:200]}") from None
    return path


# --------------------------------------------------------------------------------------------
# which pipelines take which adapter


def support_problem(pipeline_class, kind: str) -> str | None:
    """Why a pipeline class can't take adapter `kind` ("lora", "ip_adapter"), or None.

    Example:
        >>> support_problem("StableDiffusionUpscalePipeline", "ip_adapter")
        "StableDiffusionUpscalePipeline has no load_ip_adapter in diffusers ..."
    """
    method = "load_lora_weights" if kind == "lora" else "load_ip_adapter"
    if isinstance(pipeline_class, str):
        name, takes = pipeline_class, kind in pipeline_adapters(pipeline_class)  # from the source, no import
    else:
        name, takes = pipeline_class.__name__, hasattr(pipeline_class, method)
    if takes:
        return None
    what = "LoRA" if kind == "lora" else "IP-Adapter"
    return f"{name} has no {method} in diffusers: its family takes no {what} (lab.families(): `{kind}` column)"


def check_support(calls: dict) -> None:
    """Before any cell runs: every model whose cells use a LoRA or an IP-Adapter takes them.

    Args:
        calls: model -> (pipeline class or its name, [cells]) (`cells.Cell`s).
    """
    for model, (cls, cells) in calls.items():
        for kind in ("lora", "ip_adapter"):
            used = [c for c in cells if getattr(c, kind) is not None]
            if not used:
                continue
            problem = support_problem(cls, kind)
            if problem is not None:
                first = getattr(used[0], kind)
                shown = first if isinstance(first, str) else " + ".join(s for s, _ in first)
                raise ValidationError(f"`{kind}` {shown!r} can't be used with model {model!r}: {problem}; "
                                      f"drop `{kind}` for this model or sweep it on a model that takes one")
            for cell in used:  # a tiny adapter fits its own tiny model only
                value = getattr(cell, kind)
                for source in ([value] if isinstance(value, str) else [s for s, _ in value]):
                    base = (tiny_adapter(source) or (None, None))[1]
                    if base is not None and is_tiny(model) and base != model:
                        raise ValidationError(f"`{kind}` {source!r} is made for {base!r}, not for model {model!r}: "
                                              f"use it with `model: {base}`")


# --------------------------------------------------------------------------------------------
# switching on one pipeline


def adapter_name(source: str) -> str:
    """The adapter name a LoRA gets in the pipeline: stable per source, a valid module key."""
    return "lora_" + hashlib.sha1(source.encode()).hexdigest()[:10]


class AdapterSwitch:
    """The adapters of one pipeline during a sweep: what is loaded, and how often it was.

    `use(cell)` puts a cell's LoRAs and IP-Adapter in place: LoRAs not loaded yet are loaded (each
    once: `load_lora_weights(folder, weight_name=..., adapter_name=...)`), then `set_adapters` with
    the cell's weights, or `disable_lora` for the base model; an IP-Adapter is loaded when it
    differs from the one in place and its scale set. `release()` unloads what was loaded, so the
    (cached) pipeline is the base model again. `loads` counts each kind of load for the plan.
    """

    def __init__(self, pipe, model: str, *, allow_pickle: bool = False):
        self.pipe, self.model, self.allow_pickle = pipe, model, allow_pickle
        self.loras: dict[str, AdapterFile] = {}  # source -> its file, loaded into pipe
        self.ip_adapter: AdapterFile | None = None
        self.state = None  # what `use` set last: (lora weights, ip adapter, ip scale)
        self.loads: Counter = Counter()

    def use(self, cell) -> dict:
        """Put `cell`'s adapters in place; returns the row fields saying which files they were."""
        row = {}
        weights = cell.lora_weights
        ip = (cell.ip_adapter, 1.0 if cell.ip_adapter_scale is None else float(cell.ip_adapter_scale))
        state = (tuple(weights.items()), ip)
        for source in weights:
            if source not in self.loras:
                self._load_lora(source)
        if weights:
            row["lora_sha256"] = " + ".join(self.loras[s].short_hash for s in weights)
            row["lora_files"] = json.dumps({s: str(self.loras[s].path.absolute()) for s in weights})
        if cell.ip_adapter is not None:
            if self.ip_adapter is None or self.ip_adapter.source != cell.ip_adapter:
                self._load_ip_adapter(cell.ip_adapter)
            row["ip_adapter_sha256"] = self.ip_adapter.short_hash
            row["ip_adapter_file"] = str(self.ip_adapter.path.absolute())
        elif self.ip_adapter is not None:  # a loaded IP-Adapter's layers need its image: the base has none
            self.pipe.unload_ip_adapter()
            self.ip_adapter = None
        if state != self.state:
            self._set(weights, ip)
            self.state = state
        return row

    def preload(self, sources) -> None:
        """Load these LoRAs now (each once), before any cell runs: a LoRA that does not fit the model
        (made for another base model) is refused here, with nothing computed in between."""
        for source in sources:
            if source not in self.loras:
                self._load_lora(source)
        if self.loras:
            self.pipe.disable_lora()  # until a cell sets its weights
            self.state = ((), (None, 1.0))

    def _load_lora(self, source: str) -> None:
        found = resolve_lora(source, allow_pickle=self.allow_pickle)
        try:
            with quiet_adapters():
                self.pipe.load_lora_weights(str(found.folder), weight_name=found.weight_name,
                                            adapter_name=adapter_name(source))
        except Exception as exc:  # noqa: BLE001 - shapes of another base model, a non-LoRA file: one line
            self.pipe.unload_lora_weights()  # what the failed load left in the layers, and the others: it stops here
            self.loras.clear()
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ValidationError(
                f"`lora` {source!r} can't be loaded into model {self.model!r} ({type(self.pipe).__name__}): "
                f"{first[:240]}; is it a LoRA for another base model?"
            ) from None
        self.loras[source] = found
        self.loads["lora"] += 1
        self.state = None  # loading activates the new adapter: set the weights again

    def _load_ip_adapter(self, source: str) -> None:
        found = resolve_ip_adapter(source, allow_pickle=self.allow_pickle)
        if self.ip_adapter is not None:
            self.pipe.unload_ip_adapter()
        params = inspect.signature(self.pipe.load_ip_adapter).parameters
        encoder = found.folder / IMAGE_ENCODER
        has_own = getattr(self.pipe, "image_encoder", None) is not None
        if not encoder.is_dir() and not has_own:
            raise ValidationError(f"`ip_adapter` {source!r} has no {IMAGE_ENCODER}/ folder beside {found.weight_name} "
                                  f"(in {found.folder}) and model {self.model!r} has no image encoder of its own")
        try:
            with quiet_adapters():
                if "image_encoder_folder" in params:  # SD 1.x / SDXL style
                    self.pipe.load_ip_adapter(str(found.folder), subfolder="", weight_name=found.weight_name,
                                              image_encoder_folder=IMAGE_ENCODER if encoder.is_dir() else None)
                else:  # FLUX / SD3 style: the image encoder by its own path
                    extra = {"image_encoder_pretrained_model_name_or_path": str(encoder)} if encoder.is_dir() else {}
                    self.pipe.load_ip_adapter(str(found.folder), weight_name=found.weight_name, **extra)
        except Exception as exc:  # noqa: BLE001
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ValidationError(
                f"`ip_adapter` {source!r} can't be loaded into model {self.model!r} ({type(self.pipe).__name__}): "
                f"{first[:240]}; is it an IP-Adapter for another base model?"
            ) from None
        self.ip_adapter = found
        self.loads["ip_adapter"] += 1
        self.state = None

    def _set(self, weights: dict, ip) -> None:
        from . import batched  # imports torch; its cached prompt embeddings depend on text-encoder LoRAs

        if self.loras:
            if weights:
                self.pipe.enable_lora()
                self.pipe.set_adapters([adapter_name(s) for s in weights], list(weights.values()))
            else:
                self.pipe.disable_lora()  # the base model: the LoRA layers pass their input through
        if ip[0] is not None:
            self.pipe.set_ip_adapter_scale(ip[1])
        batched.clear_prompt_cache()

    def release(self) -> None:
        """Unload everything this switch loaded: the pipeline is the base model again."""
        from . import batched

        if self.loras:
            self.pipe.unload_lora_weights()
            self.loras.clear()
        if self.ip_adapter is not None:
            self.pipe.unload_ip_adapter()
            self.ip_adapter = None
        self.state = None
        batched.clear_prompt_cache()


def check_sources(cells, *, allow_pickle: bool | None = None) -> None:
    """`check_source` once per distinct LoRA and IP-Adapter source of these cells; with
    `allow_pickle` given, each IP-Adapter is also found (`resolve_ip_adapter`; its folder must
    hold an image encoder). No network for Hub sources, no model."""
    ip_adapters = list(dict.fromkeys(c.ip_adapter for c in cells if c.ip_adapter is not None))
    for source in lora_sources(cells):
        check_source("lora", source)
    for source in ip_adapters:
        check_source("ip_adapter", source)
        if allow_pickle is not None:
            resolve_ip_adapter(source, allow_pickle=allow_pickle)


def lora_sources(cells) -> list[str]:
    """The distinct LoRA sources of some cells, in first-use order."""
    out = []
    for cell in cells:
        for source, _ in cell.lora or ():
            if source not in out:
                out.append(source)
    return out


# --------------------------------------------------------------------------------------------
# the same loads as code, for a cell's reproducing snippet


def _location_code(source: str, preferred: str) -> tuple[str, str]:
    """(the folder argument as code, its weight_name) for a source, as a user writes the load."""
    if is_tiny(source):
        return f"lab.tiny_model_path({source!r})", preferred
    local = Path(source).expanduser()
    if local.is_file():
        return repr(str(local.parent)), local.name
    if local.is_dir():
        return repr(source), _in_folder("lora", source, local, preferred).weight_name
    repo, _, filename = source.partition("/")[2].partition("/")
    if filename:  # owner/name/sub/file.safetensors on the Hub
        return repr(source.split("/")[0] + "/" + repo), filename
    return repr(source), ""


def lora_code(weights: dict, files: dict | None = None) -> list[str]:
    """The lines that put LoRAs with these weights (`{source: weight}`) on `pipe`, as diffusers
    documents it: `load_lora_weights` per LoRA, then `set_adapters`, in the order of `weights`.
    `files` (`{source: absolute path}`, a row's `lora_files`) places local files where the sweep
    found them, so the code runs from any folder.

    Example:
        >>> lora_code({"tiny/sd15-lora": 0.5})
        ["pipe.load_lora_weights(lab.tiny_model_path('tiny/sd15-lora'), weight_name=..., adapter_name='lora0')",
         "pipe.set_adapters(['lora0'], [0.5])"]
    """
    lines, names = [], []
    for i, source in enumerate(weights):
        folder, weight_name = _location_code(source, LORA_FILE)
        local = Path(files[source]) if files and source in files else None
        if local is not None and not is_tiny(source) and is_local_source(source):
            folder, weight_name = repr(str(local.parent)), local.name  # where the sweep found it, absolute
        name = f"lora{i}"
        names.append(name)
        weight_arg = f", weight_name={weight_name!r}" if weight_name else ""
        lines.append(f"pipe.load_lora_weights({folder}{weight_arg}, adapter_name={name!r})")
    if names:
        lines.append(f"pipe.set_adapters({names!r}, {[float(w) for w in weights.values()]!r})")
    return lines


def ip_adapter_code(source: str, scale: float) -> list[str]:
    """The lines that load IP-Adapter `source` on `pipe` at `scale` (`load_ip_adapter`,
    `set_ip_adapter_scale`), its image encoder from the `image_encoder/` folder beside it."""
    folder, weight_name = _location_code(source, IP_ADAPTER_FILE)
    return [f"pipe.load_ip_adapter({folder}, subfolder='', weight_name={weight_name!r}, "
            f"image_encoder_folder={IMAGE_ENCODER!r})",
            f"pipe.set_ip_adapter_scale({float(scale)!r})"]

