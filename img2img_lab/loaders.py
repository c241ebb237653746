"""Loading image-to-image pipelines: hub ids, local folders, single files and the tiny models.

Everything goes through diffusers' own loaders (`AutoPipelineForImage2Image.from_pretrained`,
`DiffusionPipeline.from_pretrained`, `from_single_file`, `from_pipe`); this module validates the
options first, picks the right class, applies the speed/memory knobs, and caches the result.
What differs between model families (the class to load with, extra components such as
Kandinsky's prior, single-file layouts) comes from the family registry (`families`).
"""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

from .errors import ValidationError
from .families import LoadContext, entries, family_of, family_of_checkpoint, family_of_class
from .quiet import (  # noqa: F401 - CALL_*/LOAD_* and quiet_third_party re-exported with the loaders
    CALL_LOG_NOISE,
    CALL_WARNING_NOISE,
    LOAD_WARNING_NOISE,
    quiet_call,
    quiet_loading,
    quiet_third_party,
    user_stacklevel,
)
from .tiny import TINY_MODELS, tiny_model_path
from .torchutil import free_memory, resolve_device
from .vocab import (
    ATTENTION,
    COMPILE_MODES,
    DEFAULT_OPTIONS,
    DTYPES,
    OFFLOAD,
    PICKLE_SUFFIXES,
    SCHEDULER_NAMES,
    SINGLE_FILE_SUFFIXES,
    TINY_ADAPTER_SUFFIXES,
    is_tiny,
    looks_like_hub_id,
    looks_like_path,
    suggest,
    tiny_adapter,
)


# Hub ids that moved: old id -> maintained mirror.
MOVED_MODELS = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
}
_CACHE: dict = {}


SCHEDULERS = SCHEDULER_NAMES  # the public name (`lab.SCHEDULERS`)


# --------------------------------------------------------------------------------------------
# validation


def _check_choice(name, value, choices):
    if value not in choices:
        shown = [c for c in choices if c is not None]
        raise ValidationError(f"`{name}` must be one of {shown} or None, got {value!r}{suggest(value, shown)}")


def resolve_dtype(dtype, device: str):
    """The torch dtype to load in: float16 on CUDA by default, float32 elsewhere."""
    import torch

    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    name = str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else dtype
    if name not in DTYPES:
        raise ValidationError(f"`dtype` must be one of {sorted(set(DTYPES.values()))}, got {dtype!r}")
    name = DTYPES[name]
    if name == "float16" and device == "cpu":
        raise ValidationError(
            f"`dtype` float16 can't run on device 'cpu' (half-precision convolutions are not "
            f"supported there); use dtype='float32' or 'bfloat16', got dtype={dtype!r}"
        )
    if name == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValidationError(f"`dtype` bfloat16 is not supported by this GPU, got dtype={dtype!r}")
    return getattr(torch, name)


def validate_options(options: dict) -> dict:
    """Check every `load_pipeline` option before anything loads; returns the full option dict."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        name = unknown[0]
        raise ValidationError(
            f"unknown option `{name}`={options[name]!r} for load_pipeline{suggest(name, DEFAULT_OPTIONS)}; "
            f"valid options: {sorted(DEFAULT_OPTIONS)}"
        )
    opts = {**DEFAULT_OPTIONS, **options}
    _check_choice("offload", opts["offload"], OFFLOAD)
    _check_choice("attention", opts["attention"], ATTENTION)
    if opts["compile"] not in COMPILE_MODES:
        raise ValidationError(f"`compile` must be one of {list(COMPILE_MODES)}, got {opts['compile']!r}")
    layers = opts["pag_applied_layers"]
    if layers is not None:
        if not opts["enable_pag"]:
            raise ValidationError(f"`pag_applied_layers`={layers!r} needs enable_pag=True")
        items = [layers] if isinstance(layers, str) else layers
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(x, str) and x for x in items):
            raise ValidationError(f"`pag_applied_layers` must be a layer name or a list of them (e.g. 'mid'), got {layers!r}")
    for flag in ("use_safetensors", "allow_pickle", "vae_slicing", "vae_tiling", "cache", "enable_pag"):
        if not isinstance(opts[flag], bool):
            raise ValidationError(f"`{flag}` must be True or False, got {opts[flag]!r}")
    if opts["variant"] is not None and not isinstance(opts["variant"], str):
        raise ValidationError(f"`variant` must be a string such as 'fp16', 'auto' or None, got {opts['variant']!r}")
    if opts["scheduler"] is not None:
        if opts["scheduler"] not in SCHEDULER_NAMES:
            raise ValidationError(
                f"`scheduler` must be one of {sorted(SCHEDULER_NAMES)}, got {opts['scheduler']!r}"
                f"{suggest(opts['scheduler'], SCHEDULER_NAMES)}"
            )
    if opts["attention"] == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise ValidationError(
                "`attention`='xformers' needs the xformers package (pip install xformers); "
                "on PyTorch 2 the default SDPA attention is as fast"
            ) from None
    for name in ("prior", "vae", "config"):
        value = opts[name]
        if value is not None and not isinstance(value, str) and not hasattr(value, "config"):
            raise ValidationError(f"`{name}` must be a hub id or a local path, got {value!r}")
        if isinstance(value, str) and looks_like_path(value) and not Path(value).expanduser().exists():
            raise ValidationError(f"`{name}` path does not exist: {value!r}")
    controlnets = opts["controlnet"] if isinstance(opts["controlnet"], (list, tuple)) else [opts["controlnet"]]
    for cn in controlnets:
        if isinstance(cn, str) and looks_like_path(cn) and not Path(cn).expanduser().exists():
            raise ValidationError(f"`controlnet` path does not exist: {cn!r}")
    # device/dtype last: they import torch
    opts["device"] = resolve_device(opts["device"])
    opts["dtype"] = resolve_dtype(opts["dtype"], opts["device"])
    if opts["offload"] and not opts["device"].startswith(("cuda", "xpu")):
        raise ValidationError(
            f"`offload`={opts['offload']!r} moves weights between CPU and an accelerator; it needs a "
            f"CUDA device, got device={opts['device']!r}"
        )
    return opts


# --------------------------------------------------------------------------------------------
# model sources

def resolve_model(model) -> tuple[str, str]:
    """Classify `model`: returns (kind, source) with kind in tiny / folder / file / hub."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str) or not model.strip():
        raise ValidationError(f"`model` must be a hub id, a local path or a tiny model name, got {model!r}")
    if is_tiny(model):
        adapter = tiny_adapter(model) if model in TINY_MODELS else None
        if adapter is not None:
            kind, base = adapter
            raise ValidationError(f"`model` {model!r} is a tiny {TINY_ADAPTER_SUFFIXES[kind][1]}, not a model: load it "
                                  f"into its base, e.g. `model: {base}` with `{kind}: {model}`")
        if model not in TINY_MODELS:
            shared = next((e for e in entries() if e.tiny and e.load and model == f"tiny/{e.key}"), None)
            if shared is not None:  # a key-table row that shares another row's twin
                options = ", ".join(f"{k}={v!r}" for k, v in shared.load.items())
                raise ValidationError(
                    f"`model` {model!r}: the {shared.key} row ({shared.pipeline}) shares a twin; load "
                    f"{shared.tiny!r} with {options} (lab.load_pipeline({shared.tiny!r}, {options}), or those "
                    f"options in a spec)")
            raise ValidationError(
                f"`model` {model!r} is not an embedded tiny model; choose one of {sorted(TINY_MODELS)}"
                f"{suggest(model, TINY_MODELS)}"
            )
        return "tiny", model
    if model in MOVED_MODELS:
        warnings.warn(
            f"`model` {model!r} was deleted from the Hugging Face Hub; loading its maintained mirror "
            f"{MOVED_MODELS[model]!r} instead",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return "hub", MOVED_MODELS[model]
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir():
            if not (path / "model_index.json").exists():
                raise ValidationError(
                    f"`model` folder {model!r} is not in diffusers layout (no model_index.json); "
                    f"for a single checkpoint file pass the file itself"
                )
            return "folder", str(path)
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ValidationError(
                f"`model` file {model!r} must be a .safetensors checkpoint (or, with allow_pickle=True, "
                f".ckpt/.bin), got suffix {path.suffix!r}"
            )
        return "file", str(path)
    if looks_like_path(model):
        raise ValidationError(f"`model` path does not exist: {model!r}")
    if not looks_like_hub_id(model):
        raise ValidationError(
            f"`model` {model!r} is neither an existing local path nor a hub id of the form 'owner/name'"
        )
    return "hub", model


# --------------------------------------------------------------------------------------------
# loading


def _cache_key(model, options) -> tuple:
    def freeze(v):
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x) for x in v)
        if isinstance(v, (str, int, float, bool, type(None))):
            return v
        return ("object", id(v))

    return (str(model),) + tuple(sorted((k, freeze(v) if k != "dtype" else str(v)) for k, v in options.items()))


def load_pipeline(model, **options):
    """Load a ready image-to-image pipeline.

    Args:
        model: a hub repo id (loaded with `AutoPipelineForImage2Image.from_pretrained`), a local
            folder in diffusers layout, a single `.safetensors` checkpoint (`from_single_file` of
            the right class), or an embedded tiny model name such as `"tiny/sd15"` (offline,
            random weights: pictures are noise, code paths are real). Upscaler repos load with
            `DiffusionPipeline` (they are not image-to-image pipelines for AutoPipeline).
        **options: diffusers' own names where they exist. `dtype` (default float16 on CUDA,
            float32 elsewhere), `device` (default auto), `variant` ("auto": "fp16" when loading
            float16 and the repo has it, else full precision with a note), `use_safetensors`
            (default True), `allow_pickle` (default False: `.bin`/`.ckpt` weights are refused),
            `controlnet` (id, folder, model or list), `scheduler` (name, see `SCHEDULERS`),
            `offload` ("model" | "sequential"), `attention` ("sdpa" | "xformers"),
            `vae_slicing`, `vae_tiling`, `compile` (True or a torch.compile mode), `prior`
            (Kandinsky 2.2 prior id or folder), `vae` (replacement VAE id or folder), `config`
            (config repo/folder for single-file loads), `revision`, `cache` (default True).

    Returns:
        A diffusers pipeline, e.g. `StableDiffusionImg2ImgPipeline`.

    Example:
        >>> pipe = lab.load_pipeline("tiny/sd15")
        >>> pipe = lab.load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5",
        ...                          scheduler="dpm++2m", offload="model")
    """
    # 1. validate everything before any weight is read
    kind, source = resolve_model(model)
    opts = validate_options(options)
    key = _cache_key(source, {k: v for k, v in opts.items() if k != "cache"})
    if opts["cache"] and key in _CACHE:
        return _CACHE[key]
    # 2. load with diffusers (without its and transformers' per-component progress bars)
    with quiet_loading():
        if kind == "tiny":
            source_path = str(tiny_model_path(source))
            pipe = _load_pretrained(source_path, opts, tiny=source)
        elif kind == "file":
            pipe = _load_single_file(source, opts)
        else:
            pipe = _load_pretrained(source, opts)
    # 3. scheduler, device/dtype, memory and speed knobs
    _apply_options(pipe, opts)
    pipe.img2img_lab_info = {"model": str(model), "source": source, "kind": kind,
                             "options": {k: (str(v) if k == "dtype" else v) for k, v in opts.items()
                                         if isinstance(v, (str, int, float, bool, type(None))) or k == "dtype"}}
    if opts["cache"]:
        _CACHE[key] = pipe
    return pipe


def clear_pipeline_cache() -> None:
    """Forget every cached pipeline (frees their memory once no one else holds them), and the
    answer of the hub reachability probe (see `hub_unreachable_reason`).

    Example:
        >>> lab.clear_pipeline_cache()   # e.g. before loading a larger model in the same notebook
    """
    _CACHE.clear()
    _HUB_PROBES.clear()
    gc.collect()
    free_memory()


# --------------------------------------------------------------------------------------------
# the hub: probed once, so an unreachable hub costs one short connection attempt, not retries

HUB_PROBE_TIMEOUT = 3.0  # seconds for the one reachability probe of the hub endpoint
_HUB_PROBES: dict = {}  # endpoint -> None (reachable) or the reason it is not, once per process


def _offline_mode() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face Hub can't be used now, or None when it answers.

    `HF_HUB_OFFLINE=1` means offline without asking. Otherwise the endpoint (`HF_ENDPOINT`) is
    probed once per process with one HEAD request of `HUB_PROBE_TIMEOUT` seconds and no retries
    (huggingface_hub's own calls retry a failed connection for about 30 s);
    `clear_pipeline_cache()` forgets the answer.
    """
    if _offline_mode():
        return "HF_HUB_OFFLINE=1 is set"
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_PROBES:
        try:
            get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT)  # any HTTP answer: reachable
            _HUB_PROBES[endpoint] = None
        except Exception as exc:  # noqa: BLE001 - DNS, refused, reset, timeout, proxy: all "unreachable"
            first = (str(exc).splitlines() or [""])[0][:160]
            _HUB_PROBES[endpoint] = f"the hub {endpoint} can't be reached ({type(exc).__name__}: {first})"
    return _HUB_PROBES[endpoint]


def hub_access(repo_id: str, what: str, *, filename: str, revision=None, tiny: str | None = None) -> dict:
    """The one gate of every hub-id load (pipelines, ControlNet, VAE, Kandinsky prior, depth model).

    Returns the extra `from_pretrained` keywords: `{}` when the hub answers, `local_files_only=True`
    when it can't be used but `repo_id` is in the local Hugging Face cache. Otherwise raises at
    once, in one line naming the id and how to work offline.

    Args:
        repo_id: the hub id, e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5".
        what: the argument it came from ("model", "controlnet", "vae", "prior", ...).
        filename: a file every snapshot of such a repo has ("model_index.json", "config.json").
        revision: the revision asked for (None: main).
        tiny: an embedded tiny model to suggest instead, e.g. "tiny/sd15".

    Example:
        >>> pipe = DiffusionPipeline.from_pretrained(repo, **hub_access(repo, "model", filename="model_index.json"))
    """
    if not looks_like_hub_id(repo_id):
        return {}  # not a hub id at all (a missing path...): the loader's own error says so, offline
    reason = hub_unreachable_reason()
    if reason is None:
        return {}
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str):
        return {"local_files_only": True}
    instead = f"a local folder or an embedded tiny model such as {tiny!r}" if tiny else "a local folder"
    todo = ("unset HF_HUB_OFFLINE to download it, or use " if reason.startswith("HF_HUB_OFFLINE")
            else "to work offline set HF_HUB_OFFLINE=1 and use ")
    raise ValidationError(
        f"`{what}` {repo_id!r} could not be found: it is not in the local Hugging Face cache and {reason}; "
        f"{todo}{instead}"
    )


def _read_model_index(source: str, opts, hub: dict) -> dict:
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(source, revision=opts["revision"], **hub)
    except Exception as exc:
        raise ValidationError(
            f"`model` {source!r} could not be found: it is not a local folder and the hub could not "
            f"be reached or has no such repo ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None


def _weights_are_pickle_only(folder: Path) -> bool:
    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth")]
    return bool(weights) and not any(p.suffix == ".safetensors" for p in weights)


def _check_pickle(source: str, opts) -> None:
    path = Path(source)
    if path.is_dir() and _weights_are_pickle_only(path) and not opts["allow_pickle"]:
        raise ValidationError(
            f"`model` folder {source!r} holds only pickle weights (.bin/.ckpt), which can run arbitrary "
            f"code when loaded; convert it to safetensors, or pass allow_pickle=True if you trust it"
        )


def _dtype_kwarg(dtype) -> dict:
    """diffusers renamed `torch_dtype` to `dtype` (0.36+); pass whichever this version takes."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

        return {"dtype": dtype}
    except ImportError:
        return {"torch_dtype": dtype}


def _load_component(value, cls_name: str, opts, what: str):
    """A sub-model given as an object, hub id or folder (controlnet, vae)."""
    if not isinstance(value, str):
        return value
    import diffusers

    cls = getattr(diffusers, cls_name)
    if is_tiny(value):  # an embedded tiny model, e.g. controlnet="tiny/controlnet-sd15"
        resolve_model(value)  # an unknown tiny name is a clear error
        value = str(tiny_model_path(value))
    kind, src = ("folder", value) if Path(value).expanduser().exists() else ("hub", value)
    kwargs = _dtype_kwarg(opts["dtype"])
    if kind == "folder":
        _check_pickle(src, opts)
    else:
        tiny = "tiny/controlnet-sd15" if what == "controlnet" else None
        kwargs.update(hub_access(src, what, filename="config.json", tiny=tiny))
    if opts["use_safetensors"] and not opts["allow_pickle"]:
        kwargs["use_safetensors"] = True
    path = str(Path(src).expanduser()) if kind == "folder" else src
    try:
        if cls_name == "ControlNetModel":
            # a ControlNet-Union checkpoint names its own class (AutoPipeline then picks the Union
            # pipeline); loaded as a ControlNetModel its union weights would be dropped with a warning
            local = {k: v for k, v in kwargs.items() if k in ("local_files_only", "revision", "token")}
            if cls.load_config(path, **local).get("_class_name") == "ControlNetUnionModel":
                cls = diffusers.ControlNetUnionModel
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValidationError(f"`{what}` {value!r} could not be loaded: {str(exc).splitlines()[0][:300]}") from None


def _load_companion(value, cls_name: str, opts, what: str):
    """A whole companion pipeline (Kandinsky's prior) from a hub id or a folder."""
    import diffusers

    kwargs = _dtype_kwarg(opts["dtype"])
    if opts["use_safetensors"] and not opts["allow_pickle"]:
        kwargs["use_safetensors"] = True
    if isinstance(value, str) and not Path(value).expanduser().exists():
        kwargs.update(hub_access(value, what, filename="model_index.json"))
    try:
        return getattr(diffusers, cls_name).from_pretrained(value, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValidationError(f"`{what}` {value!r} could not be loaded: {str(exc).splitlines()[0][:300]}") from None


def _load_context(source: str, class_name: str, opts, tiny: str | None = None) -> LoadContext:
    """What a family's `load_extras` sees: this load, and the helpers it may load sub-models with."""
    return LoadContext(source=source, class_name=class_name, options=opts, tiny=tiny,
                       load_component=lambda value, cls_name, what: _load_component(value, cls_name, opts, what),
                       load_pipeline=lambda value, cls_name, what: _load_companion(value, cls_name, opts, what))


def _from_pretrained_with_variant(loader, source, opts, **kwargs):
    """Call `loader(source, ...)` with variant handling: "auto" tries fp16 weights when loading fp16."""
    import torch

    kwargs = {**_dtype_kwarg(opts["dtype"]), "revision": opts["revision"], **kwargs}
    if opts["use_safetensors"] and not opts["allow_pickle"]:
        kwargs["use_safetensors"] = True
    variant = opts["variant"]
    if variant == "auto":
        if opts["dtype"] == torch.float16:
            try:
                return loader(source, variant="fp16", **kwargs)
            except (OSError, ValueError) as exc:
                if "variant" not in str(exc) and "fp16" not in str(exc):
                    raise
                warnings.warn(f"{source!r} has no 'fp16' variant: loading its default weights in float16",
                              UserWarning, stacklevel=user_stacklevel())
        variant = None
    return loader(source, variant=variant, **kwargs)


def _load_pretrained(source: str, opts, tiny: str | None = None):
    import diffusers
    from diffusers import AutoPipelineForImage2Image

    # 1. the pipeline class its model_index.json names, and so its family
    if Path(source).is_dir():
        _check_pickle(source, opts)
        hub = {}
    else:
        hub = hub_access(source, "model", filename="model_index.json", revision=opts["revision"], tiny="tiny/sd15")
    class_name = _read_model_index(source, opts, hub).get("_class_name", "")
    family = family_of_class(class_name)
    # 2. the family's extra components (ControlNets, a VAE, Kandinsky's prior) and loader class
    extra = family.load_extras(_load_context(source, class_name, opts, tiny))
    direct = family.loader_class(class_name)
    loader = getattr(diffusers, direct).from_pretrained if direct else AutoPipelineForImage2Image.from_pretrained
    if opts["enable_pag"]:  # AutoPipeline maps the class to its PAG variant
        with_pag = {family_of_class(e.pipeline).key: e.key for e in entries() if e.load.get("enable_pag")}
        if direct or family.key not in with_pag:
            raise ValidationError(
                f"`enable_pag`=True: {class_name} ({tiny or source!r}) has no PAG variant in diffusers; the key "
                f"table's PAG rows: {', '.join(sorted(with_pag.values()))} (lab.families())")
        extra["enable_pag"] = True
        if opts["pag_applied_layers"] is not None:
            layers = opts["pag_applied_layers"]
            extra["pag_applied_layers"] = [layers] if isinstance(layers, str) else list(layers)
    # 3. the weights
    try:
        return _from_pretrained_with_variant(loader, source, opts, **hub, **extra)
    except ValidationError:
        raise
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValidationError(
            f"`model` {source!r} could not be loaded: {str(exc).splitlines()[0][:300]}"
        ) from None


def _single_file_class(path: str, opts) -> tuple:
    """(family, img2img class name) of a single checkpoint, from its tensor names (diffusers' own
    inference of the layout; the family of that layout names the class)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    if Path(path).suffix.lower() == ".safetensors":
        from collections.abc import Mapping

        from safetensors import safe_open

        class _Lazy(Mapping):  # diffusers reads a few tensors' shapes; load only those
            def __init__(self, handle):
                self.handle, self.keys_ = handle, set(handle.keys())

            def __getitem__(self, key):
                if key not in self.keys_:
                    raise KeyError(key)
                return self.handle.get_tensor(key)

            def __iter__(self):
                return iter(self.keys_)

            def __len__(self):
                return len(self.keys_)

            def __contains__(self, key):
                return key in self.keys_

        try:
            handle = safe_open(path, framework="pt")
        except Exception as exc:  # not a readable safetensors file
            raise ValidationError(f"`model` {path!r} could not be read as a .safetensors checkpoint: {exc}") from None
        with handle as f:
            checkpoint = _Lazy(f)
            keys = list(checkpoint.keys_)
            model_type = infer_diffusers_model_type(checkpoint)
    else:
        from diffusers.loaders.single_file_utils import load_single_file_checkpoint

        checkpoint = load_single_file_checkpoint(path)
        model_type = infer_diffusers_model_type(checkpoint)
        keys = list(checkpoint)
    family = family_of_checkpoint(model_type)
    name = family.single_file_class(path, model_type, keys, opts["controlnet"] is not None) if family else None
    if name is None:
        raise ValidationError(f"`model` checkpoint {path!r} is of type {model_type!r}, which has no img2img loader here")
    return family, name


def _load_single_file(path: str, opts):
    import diffusers

    if Path(path).suffix.lower() in PICKLE_SUFFIXES and not opts["allow_pickle"]:
        raise ValidationError(
            f"`model` {path!r} is a pickle checkpoint, which can run arbitrary code when loaded; "
            f"use a .safetensors file, or pass allow_pickle=True if you trust it"
        )
    family, class_name = _single_file_class(path, opts)
    cls = getattr(diffusers, class_name)
    kwargs = _dtype_kwarg(opts["dtype"])
    if opts["config"] is not None:
        config = opts["config"]
        if is_tiny(config):  # a tiny model's folder as config
            resolve_model(config)
            config = str(tiny_model_path(config))
        if isinstance(config, str) and not Path(config).expanduser().exists():
            kwargs.update(hub_access(config, "config", filename="model_index.json", tiny="tiny/sd15"))
        kwargs["config"] = config
    elif hub_unreachable_reason() is not None:
        kwargs["local_files_only"] = True  # diffusers' default config repo: from the cache or a quick error
    kwargs.update(family.load_extras(_load_context(path, class_name, opts)))  # ControlNets, a VAE
    try:
        return cls.from_single_file(path, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValidationError(
            f"`model` {path!r} could not be loaded as {cls.__name__} (offline single-file loads need "
            f"`config`=<diffusers folder or hub id>): {str(exc).splitlines()[0][:300]}"
        ) from None


def set_scheduler(pipe, name: str):
    """Swap the pipeline's scheduler for the named one, keeping its config (`from_config`)."""
    import diffusers

    if name not in SCHEDULER_NAMES:
        raise ValidationError(f"`scheduler` must be one of {sorted(SCHEDULER_NAMES)}, got {name!r}{suggest(name, SCHEDULER_NAMES)}")
    cls_name, overrides = SCHEDULER_NAMES[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)
    return pipe


def denoiser_name(pipe) -> str:
    """'unet' or 'transformer': the attribute holding the pipeline's denoiser."""
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def _apply_options(pipe, opts) -> None:
    import torch

    if opts["scheduler"] is not None:
        set_scheduler(pipe, opts["scheduler"])
    if opts["offload"] == "model":
        pipe.enable_model_cpu_offload(device=opts["device"])
    elif opts["offload"] == "sequential":
        pipe.enable_sequential_cpu_offload(device=opts["device"])
    else:
        pipe.to(opts["device"])
    if opts["attention"] == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    elif opts["attention"] == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor2_0

        for name in ("unet", "transformer", "controlnet"):
            module = getattr(pipe, name, None)
            if module is not None and hasattr(module, "set_attn_processor"):
                module.set_attn_processor(AttnProcessor2_0())
    vae = getattr(pipe, family_of(pipe).vae_component[0], None)  # `vae`, or Kandinsky's `movq`
    if opts["vae_slicing"] and vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    if opts["vae_tiling"] and vae is not None and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    if opts["compile"]:
        mode = None if opts["compile"] in (True, "default") else opts["compile"]
        attr = denoiser_name(pipe)
        setattr(pipe, attr, torch.compile(getattr(pipe, attr), mode=mode, fullgraph=True))


def related_pipeline(pipe, task: str = "text2img", **options):
    """A related pipeline sharing `pipe`'s weights (diffusers `from_pipe`), e.g. text-to-image.

    Memory knobs are re-applied to the new pipeline: CPU offload hooks do not carry over
    through `from_pipe`, so offload is enabled again when the source pipeline had it.

    Args:
        pipe: a pipeline from `load_pipeline`.
        task: "text2img", "img2img" or "inpaint".
        **options: extra components or config for `from_pipe`.

    Example:
        >>> t2i = lab.related_pipeline(lab.load_pipeline("tiny/sd15"), "text2img")
    """
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    classes = {"text2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
               "inpaint": AutoPipelineForInpainting}
    if task not in classes:
        raise ValidationError(f"`task` must be one of {sorted(classes)}, got {task!r}")
    info = getattr(pipe, "img2img_lab_info", None) or {}
    offload = (info.get("options") or {}).get("offload")
    device = (info.get("options") or {}).get("device")
    if offload:
        # from_pipe moves shared modules: strip the source's hooks first, then offload both
        # pipelines again on the original device
        pipe.remove_all_hooks()
    new = classes[task].from_pipe(pipe, **options)
    for target in (pipe, new) if offload else ():
        if offload == "model":
            target.enable_model_cpu_offload(device=device)
        else:
            target.enable_sequential_cpu_offload(device=device)
    new.img2img_lab_info = {**info, "task": task}
    return new
