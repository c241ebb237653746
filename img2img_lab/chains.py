"""Chains: several pipelines one after another, each stage's output the next stage's `image`.

A chain is a list of stages, each a model (id, folder, tiny name or loaded pipeline) and its call
kwargs, e.g. the guide's text-to-image (SD 1.5) then image-to-image (Kandinsky 2.2)::

    result = lab.run_chain([
        ("tiny/sd15", {"task": "text2img", "prompt": "an astronaut", "num_inference_steps": 5}),
        ("tiny/kandinsky22", {"prompt": "an astronaut, oil painting", "strength": 0.5,
                              "height": 64, "width": 64}),
    ], seed=0)
    result.image, result.params

How a chain runs, so a hand-written diffusers chain gives the same pictures:

- every stage gets a fresh `torch.Generator("cpu").manual_seed(seed)` (the chain's `seed`, or the
  stage's own `"seed"` kwarg);
- between two stages the output stays in latent space (`output_type="latent"`, the tensor
  `.images` passed as the next `image`) when the next pipeline can take latents (SD / SDXL
  image-to-image, ControlNet image-to-image, the x2 latent upscaler) and both stages have the same
  VAE (same class, config and weights). Otherwise the stage returns a PIL image
  (`output_type="pil"`) that the next stage encodes again (Kandinsky 2.2 encodes
  every input with its MoVQ and cannot take SD latents; the x4 upscaler takes pixels);
- a `"task": "text2img"` stage (first stage only) runs the text-to-image pipeline sharing the
  loaded weights (`related_pipeline`, i.e. `AutoPipelineForText2Image.from_pipe`).

Upscalers (`stabilityai/sd-x2-latent-upscaler`, `stabilityai/stable-diffusion-x4-upscaler`) load
through `load_pipeline` like any other model. Impossible chains raise `ValidationError` before
any stage runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from .errors import ValidationError
from .families import family_of
from .frozen import content_key
from .images import image_hash, load_image
from .loaders import load_pipeline, quiet_call, related_pipeline, resolve_model
from .loop import Outcome, Progress, Todo, error_text, run_cells
from .result import SweepResult
from .runner import explicit_parameters, quiet_progress, warn_long_texts
from .store import SweepStore
from .torchutil import generator, is_nan_image
from .validation import check_sizes, check_value, known_keys
from .vocab import ERROR, MAX_SEED, NAN, OK, SIZE_ARGUMENTS

# Which pipelines take latents as `image` (used as the initial latents as is) and which have no
# text-to-image task: their model family says (`Family.takes_latents`, `Family.text2img`).
TASKS = ("img2img", "text2img")
# Stage kwargs the chain itself sets or reads.
RESERVED = {"generator", "task", "seed", "output_type"}
# VAE config keys that do not change the latent space.
_VAE_CONFIG_IGNORED = {"sample_size", "force_upcast"}


# --------------------------------------------------------------------------------------------
# what the user specifies and what comes back


@dataclass(frozen=True)
class Stage:
    """One stage of a chain.

    Args:
        model: a hub id, a local folder or file, a tiny model name (`"tiny/sd15"`), or a loaded
            pipeline.
        kwargs: the pipeline call kwargs (`prompt`, `strength`, `guidance_scale`, ...), plus
            `"task": "text2img"` for a text-to-image first stage, `"seed"` to override the chain's
            seed for this stage, and `"output_type"` ("latent" or "pil") to force how this stage
            hands over to the next one. `image` only in the first stage; never `generator`.
        options: `load_pipeline` options (`dtype`, `scheduler`, `controlnet`, `prior`, ...).

    Example:
        >>> Stage("tiny/sd15", {"prompt": "an astronaut", "strength": 0.6})
    """

    model: Any
    kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @classmethod
    def coerce(cls, item, index: int) -> "Stage":
        """A `Stage` from a Stage, a `(model, kwargs[, options])` tuple, a model alone or a dict."""
        where = f"`stages[{index}]`"
        if isinstance(item, Stage):
            stage = item
        elif isinstance(item, (tuple, list)) and 1 <= len(item) <= 3:
            stage = cls(*item)
        elif isinstance(item, dict) and "model" in item:
            unknown = set(item) - {"model", "kwargs", "options"}
            if unknown:
                raise ValidationError(f"{where} has unknown keys {sorted(unknown)}; use model, kwargs, options")
            stage = cls(item["model"], dict(item.get("kwargs") or {}), dict(item.get("options") or {}))
        elif isinstance(item, str) or hasattr(item, "components"):
            stage = cls(item)
        else:
            raise ValidationError(f"{where} must be a Stage, a (model, kwargs) tuple or a model, got {item!r}")
        if not isinstance(stage.kwargs, dict):
            raise ValidationError(f"{where} kwargs must be a dict, got {stage.kwargs!r}")
        if not isinstance(stage.options, dict):
            raise ValidationError(f"{where} options must be a dict, got {stage.options!r}")
        return stage

    @property
    def task(self) -> str:
        return self.kwargs.get("task", "img2img")

    def label(self) -> str:
        if isinstance(self.model, str):
            return self.model
        info = getattr(self.model, "img2img_lab_info", None) or {}
        return str(info.get("model") or type(self.model).__name__)


@dataclass(frozen=True)
class ChainResult:
    """What a chain returns.

    Attributes:
        image: the final `PIL.Image`.
        images: one entry per stage: its PIL image when it was decoded, None when it handed
            latents to the next stage.
        params: one dict per stage: `stage`, `model`, `pipeline_class`, `task`, `seed`, `input`
            ("none", "image" or "latent"), `output_type` and every call kwarg (not the image).
        status: "ok", or "nan" when the final image is NaN / all black (fp16 VAE overflow).
    """

    image: Any
    images: tuple
    params: tuple
    status: str = OK

    def row(self) -> dict:
        """The stage parameters flattened as `stage<N>.<name>` columns (e.g. `stage2.strength`)."""
        out = {}
        for p in self.params:
            for name, value in p.items():
                if name != "stage":
                    out[f"stage{p['stage']}.{name}"] = value
        return out


@dataclass(frozen=True)
class Chain:
    """A chain definition: stages, seed, init image and how latents are handed over.

    Args:
        stages: a list of `Stage`s or `(model, kwargs[, options])` tuples.
        image: the init image of the first stage (anything `load_image` takes); not needed when
            the first stage is `"task": "text2img"`.
        seed: the seed of every stage's generator (a stage's `"seed"` kwarg overrides it).
        latents: None (default): hand latents over wherever possible; True: require it
            (an error before running where a boundary can't); False: always decode to PIL.

    Example:
        >>> chain = Chain([("tiny/sd15", {"prompt": "a cat", "strength": 0.6}),
        ...                ("tiny/sd15", {"prompt": "a cat, comic", "strength": 0.5})], image="cat")
        >>> chain.run().image
    """

    stages: tuple
    image: Any = None
    seed: int = 0
    latents: bool | None = None

    def __post_init__(self):
        if isinstance(self.stages, (str, Stage)) or not isinstance(self.stages, (list, tuple)) or not self.stages:
            raise ValidationError(f"`stages` must be a non-empty list of stages, got {self.stages!r}")
        object.__setattr__(self, "stages", tuple(Stage.coerce(s, i) for i, s in enumerate(self.stages)))
        check_value("seed", self.seed)  # an integer in [0, 2**64 - 1], as a spec's
        if self.latents not in (None, True, False):
            raise ValidationError(f"`latents` must be None, True or False, got {self.latents!r}")

    def run(self, progress: bool = True) -> ChainResult:
        """Run the chain (see `run_chain`)."""
        return _run(self, progress=progress)

    def with_params(self, params: dict) -> "Chain":
        """A copy with some values changed: keys `"seed"`, `"image"`, or `"stage<N>.<kwarg>"` (1-based).

        Example:
            >>> chain.with_params({"stage2.strength": 0.3, "seed": 1})
        """
        stages = [dict(s.kwargs) for s in self.stages]
        top = {}
        for key, value in params.items():
            index, name = _parse_axis(key, len(self.stages))
            if index is None:
                top[name] = value
            else:
                stages[index][name] = value
        new_stages = tuple(replace(s, kwargs=k) for s, k in zip(self.stages, stages))
        return replace(self, stages=new_stages, **top)

    def to_dict(self) -> dict:
        """A JSON-able description (models as labels, images as their description)."""
        return {
            "stages": [{"model": s.label(), "kwargs": {k: _describe(v) for k, v in s.kwargs.items()},
                        "options": {k: _describe(v) for k, v in s.options.items()}} for s in self.stages],
            "image": _describe(self.image),
            "seed": self.seed,
            "latents": self.latents,
        }


def _describe(value):
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    if hasattr(value, "size") and hasattr(value, "mode"):  # PIL
        return f"<image {image_hash(value)}>"
    return f"<{type(value).__name__}>"


def _parse_axis(key, n_stages: int):
    """(stage index or None, name) of an axis / override key."""
    if key in ("seed", "image", "latents"):
        return None, key
    if not isinstance(key, str) or "." not in key or not key.startswith("stage"):
        raise ValidationError(
            f"chain parameter {key!r} must be 'seed', 'image', 'latents' or 'stage<N>.<kwarg>' (e.g. 'stage2.strength')"
        )
    head, name = key.split(".", 1)
    try:
        number = int(head[len("stage"):])
    except ValueError:
        raise ValidationError(f"chain parameter {key!r}: {head!r} must be 'stage<N>' with N a number") from None
    if not 1 <= number <= n_stages:
        raise ValidationError(f"chain parameter {key!r}: the chain has stages 1..{n_stages}, got stage {number}")
    if name in ("generator",) or (name == "image" and number > 1):
        raise ValidationError(f"chain parameter {key!r}: `{name}` of stage {number} is set by the chain")
    return number - 1, name


# --------------------------------------------------------------------------------------------
# VAEs


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def vae_of(pipe):
    """The pipeline's image autoencoder, where its family keeps it (`Family.vae_component`: `vae`
    for SD, SDXL and the upscalers, `movq` for Kandinsky 2.2)."""
    return getattr(pipe, family_of(pipe).vae_component[0], None)


def vae_fingerprint(vae) -> str | None:
    """A short digest of a VAE's weights (per tensor: name, shape, sum and sum of squares).

    Sums are rounded to 4 significant digits, so the same weights in float16 and float32 match.
    None when the weights are not readable (e.g. on the meta device under sequential offload).
    """
    cached = _FINGERPRINTS.get(vae)
    if cached is not None:
        return cached
    import torch

    digest = hashlib.sha256()
    try:
        with torch.no_grad():
            for name, tensor in sorted(vae.state_dict().items()):
                if tensor.is_meta:
                    return None
                t = tensor.detach().double()
                digest.update(f"{name}:{tuple(t.shape)}:{t.sum().item():.4e}:{(t * t).sum().item():.4e};".encode())
    except (RuntimeError, NotImplementedError):
        return None
    value = digest.hexdigest()[:16]
    _FINGERPRINTS[vae] = value
    return value


def same_vae(a, b) -> bool:
    """True when pipelines `a` and `b` encode to the same latent space (same VAE class, config, weights).

    Example:
        >>> same_vae(lab.load_pipeline("tiny/sd15"), lab.load_pipeline("tiny/sd-x2-latent-upscaler"))
        True
    """
    va, vb = vae_of(a), vae_of(b)
    if va is None or vb is None:
        return False
    if va is vb:
        return True
    if type(va) is not type(vb):
        return False
    ca = {k: v for k, v in dict(va.config).items() if not k.startswith("_") and k not in _VAE_CONFIG_IGNORED}
    cb = {k: v for k, v in dict(vb.config).items() if not k.startswith("_") and k not in _VAE_CONFIG_IGNORED}
    if json.dumps(ca, sort_keys=True, default=str) != json.dumps(cb, sort_keys=True, default=str):
        return False
    fa, fb = vae_fingerprint(va), vae_fingerprint(vb)
    return fa is not None and fa == fb


# --------------------------------------------------------------------------------------------
# running


_TEXT2IMG: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _pipeline(stage: Stage, index: int):
    """The pipeline of a stage: loaded (cached by load_pipeline), text-to-image via from_pipe."""
    if isinstance(stage.model, str) or hasattr(stage.model, "__fspath__"):
        pipe = load_pipeline(stage.model, **stage.options)
    else:
        if stage.options:
            raise ValidationError(f"`stages[{index}]` options can't apply to an already loaded pipeline")
        pipe = stage.model
    if stage.task == "text2img" and "Text2Img" not in type(pipe).__name__ and not _is_text2img(pipe):
        family = family_of(pipe)
        if not family.text2img:
            raise ValidationError(f"`stages[{index}]` {stage.label()!r} is an {family.title}; it has no text-to-image task")
        t2i = _TEXT2IMG.get(pipe)
        if t2i is None:
            t2i = related_pipeline(pipe, "text2img")
            _TEXT2IMG[pipe] = t2i
        pipe = t2i
    return pipe


def _is_text2img(pipe) -> bool:
    import inspect

    return "image" not in inspect.signature(type(pipe).__call__).parameters


def _plan(chain: Chain, pipes: list) -> list[str]:
    """How each stage hands over to the next: "latent" or "pil" (the last one: "pil")."""
    plan = []
    n = len(pipes)
    for i in range(n):
        kwargs = chain.stages[i].kwargs
        asked = kwargs.get("output_type")
        if asked not in (None, "latent", "pil"):
            raise ValidationError(
                f"`stages[{i}]` output_type must be 'latent' or 'pil' (the chain decides the rest), got {asked!r}"
            )
        if i == n - 1:
            if asked == "latent":
                raise ValidationError(f"`stages[{i}]` is the last stage; its output_type must be 'pil', got 'latent'")
            plan.append("pil")
            continue
        source, target = pipes[i], pipes[i + 1]
        reason = None
        if not family_of(target).takes_latents(type(target).__name__):
            reason = f"{type(target).__name__} takes pixels, not latents"
        elif not same_vae(source, target):
            names = f"{type(vae_of(source)).__name__} vs {type(vae_of(target)).__name__}"
            reason = f"its VAE differs from stage {i + 1}'s ({names}: other class, config or weights)"
        wants_latent = asked == "latent" or (asked is None and chain.latents is True)
        if reason is not None and wants_latent:
            raise ValidationError(
                f"stage {i + 2} ({chain.stages[i + 1].label()!r}) can't take stage {i + 1}'s latents: {reason}; "
                f"drop output_type='latent' / latents=True to decode between them"
            )
        if reason is None and asked != "pil" and chain.latents is not False:
            plan.append("latent")
        else:  # decoded to pixels and encoded again by the next stage (`params[i]['input']` says so)
            plan.append("pil")
    return plan


def _validate(chain: Chain) -> None:
    """Everything checkable before any model loads."""
    for i, stage in enumerate(chain.stages):
        where = f"`stages[{i}]`"
        if isinstance(stage.model, str):
            resolve_model(stage.model)  # unknown tiny names, bad paths, empty ids
        elif not hasattr(stage.model, "components"):
            raise ValidationError(f"{where} model must be a model id, a path or a pipeline, got {stage.model!r}")
        if stage.task not in TASKS:
            raise ValidationError(f"{where} task must be one of {list(TASKS)}, got {stage.task!r}")
        if stage.task == "text2img" and i > 0:
            raise ValidationError(
                f"{where} is a text2img stage, which can only be the first stage (stage {i + 1} gets stage {i}'s image)"
            )
        if "generator" in stage.kwargs:
            raise ValidationError(f"{where} kwargs can't hold `generator`: the chain seeds each stage (use `seed`)")
        seed = stage.kwargs.get("seed", chain.seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValidationError(f"{where} `seed` must be an integer in [0, 2**64 - 1], got {seed!r}")
        if "image" in stage.kwargs and i > 0:
            raise ValidationError(f"{where} kwargs can't hold `image`: stage {i + 1} takes stage {i}'s output")
        if "image" in stage.kwargs and chain.image is not None:
            raise ValidationError(f"{where}: give the init image once, as `image` of the chain or of stage 1")
        for key, value in stage.kwargs.items():
            picture = hasattr(value, "shape") or (hasattr(value, "size") and hasattr(value, "mode"))
            if key in known_keys() and key not in RESERVED and key != "image" and not picture:
                # one value (a list is one list-valued setting): finite, in bounds. Pictures (a PIL
                # control image, a latent tensor) are call arguments a chain may hold as they are.
                check_value(key, [value])
    first = chain.stages[0]
    if first.task != "text2img" and chain.image is None and "image" not in first.kwargs:
        raise ValidationError(
            f"the first stage ({first.label()!r}) is image-to-image but no `image` was given; "
            f"pass image=... or make it a text2img stage"
        )
    if first.task == "text2img" and (chain.image is not None or "image" in first.kwargs):
        raise ValidationError("the first stage is text2img; it takes no `image`")


def _run(chain: Chain, progress: bool = True) -> ChainResult:
    import numpy as np
    from tqdm.auto import tqdm

    # 1. validate what needs no model
    _validate(chain)
    # 2. load every pipeline (or fail) before running any
    pipes = [_pipeline(stage, i) for i, stage in enumerate(chain.stages)]
    for stage, pipe in zip(chain.stages, pipes):
        check_sizes(pipe, stage.label(), stage.kwargs)  # height/width: multiples of the VAE factor
    # 3. plan the hand-overs (latent where possible); impossible chains fail here
    plan = _plan(chain, pipes)
    _check_resizes(chain, pipes, plan)
    # 4. run the stages
    first = chain.stages[0]
    source = chain.image if chain.image is not None else first.kwargs.get("image")
    current = load_image(source) if source is not None else None
    images, params = [], []
    # one bar over the stages (each pipeline's own per-call bar stays off)
    bar = tqdm(total=len(pipes), desc="chain", unit="stage", disable=not progress)
    for i, (stage, pipe, output_type) in enumerate(zip(chain.stages, pipes, plan)):
        bar.set_postfix_str(stage.label(), refresh=True)
        seed = int(stage.kwargs.get("seed", chain.seed))
        call = {k: v for k, v in stage.kwargs.items() if k not in RESERVED and k != "image"}
        if current is not None:
            call["image"] = _sized_input(pipe, call, current)
        warn_long_texts(pipe, [(name, call.get(name)) for name in ("prompt", "negative_prompt")],
                        hint="`lab.encode_weighted` encodes long prompts in chunks")  # said here, once
        with quiet_call(), quiet_progress(pipe):
            out = pipe(**call, output_type=output_type, generator=generator(seed))
        bar.update(1)
        current = out.images if output_type == "latent" else out.images[0]
        images.append(None if output_type == "latent" else current)
        params.append({
            "stage": i + 1,
            "model": stage.label(),
            "pipeline_class": type(pipe).__name__,
            "task": stage.task,
            "seed": seed,
            "input": "none" if i == 0 and source is None else ("latent" if i and plan[i - 1] == "latent" else "image"),
            "output_type": output_type,
            **{k: _describe(v) for k, v in call.items() if k != "image"},
            **({"image": _describe(source)} if i == 0 and source is not None else {}),
        })
    bar.close()
    # 5. collect
    status = NAN if is_nan_image(np.asarray(current, dtype=np.float32) / 255.0) else OK
    return ChainResult(image=current, images=tuple(images), params=tuple(params), status=status)


def _takes_size(pipe) -> bool:
    return "height" in explicit_parameters(pipe)


def _check_resizes(chain: Chain, pipes: list, plan: list[str]) -> None:
    """A stage whose pipeline takes no `height`/`width` (SD img2img sizes its output from its
    input) gets its input picture resized, as `run_sweep` does; latents handed over from the stage
    before cannot be, so a size there is refused before any stage runs."""
    for i, (stage, pipe) in enumerate(zip(chain.stages, pipes)):
        sized = [k for k in SIZE_ARGUMENTS if stage.kwargs.get(k) is not None]
        if sized and not _takes_size(pipe) and i > 0 and plan[i - 1] == "latent":
            raise ValidationError(
                f"`{sized[0]}` of stage {i + 1} ({stage.label()!r}) can't be applied: {type(pipe).__name__} takes "
                f"no {sized[0]} (its size follows its input) and stage {i} hands it latents; set the size "
                f"on stage {i} or pass latents=False, got {stage.kwargs[sized[0]]!r}"
            )


def _sized_input(pipe, call: dict, current):
    """The stage's input, resized to the stage's `width`/`height` where its pipeline takes none
    (it sizes its output from its input and ignores the keywords; the row records them)."""
    if _takes_size(pipe) or not any(call.get(k) is not None for k in SIZE_ARGUMENTS):
        return current
    size = (int(call.get("width") or current.width), int(call.get("height") or current.height))
    return current if current.size == size else current.resize(size, Image.Resampling.LANCZOS)


def run_chain(stages, image=None, *, seed: int = 0, latents: bool | None = None, progress: bool = True) -> ChainResult:
    """Run pipelines one after another, each stage's output the next stage's `image`.

    Args:
        stages: a list of `(model, kwargs)` or `(model, kwargs, load_options)` tuples or `Stage`s.
            `model` is a hub id, folder, tiny name or loaded pipeline; `kwargs` are the call kwargs,
            plus `"task": "text2img"` (first stage only), `"seed"` (this stage's seed) and
            `"output_type"` ("latent" / "pil", to force a hand-over).
        image: the first stage's init image (URL, path, PIL, array or sample name).
        seed: each stage runs with a fresh `torch.Generator("cpu").manual_seed(seed)`.
        latents: None: latents between stages that share a VAE, decoded elsewhere (each
            stage's `params[i]["input"]` says which); True: latents everywhere or a `ValidationError`; False: always decode.
        progress: one `tqdm.auto` bar over the stages (the pipelines' own per-call bars stay off).

    Returns:
        A `ChainResult`: `.image` (final PIL), `.images` (each stage's PIL, None where it
        passed latents), `.params` (per-stage parameter dicts), `.status`.

    Example:
        >>> result = lab.run_chain([
        ...     ("tiny/sd15", {"prompt": "Astronaut in a jungle", "strength": 0.8}),
        ...     ("tiny/sd-x2-latent-upscaler", {"prompt": "Astronaut in a jungle", "num_inference_steps": 5}),
        ...     ("tiny/sd-x4-upscaler", {"prompt": "Astronaut in a jungle", "num_inference_steps": 5}),
        ... ], image="astronaut", seed=0)
    """
    return Chain(stages=stages, image=image, seed=seed, latents=latents).run(progress=progress)


# --------------------------------------------------------------------------------------------
# sweeps over a chain


def _expand(axes: dict, n_stages: int) -> list[dict]:
    if not isinstance(axes, dict) or not axes:
        raise ValidationError(f"`axes` must be a non-empty dict of parameter -> list of values, got {axes!r}")
    names, values = [], []
    for key, vals in axes.items():
        _parse_axis(key, n_stages)
        if isinstance(vals, (str, bytes)) or not hasattr(vals, "__iter__"):
            vals = [vals]
        vals = list(vals)
        if not vals:
            raise ValidationError(f"`axes[{key!r}]` must hold at least one value")
        names.append(key)
        values.append(vals)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def sweep_chain(chain, axes: dict, out_dir, *, progress: bool = True, exact: bool = False):
    """Run a chain over a grid of stage parameters; one row and one image per cell.

    Written with the same sweep store as `run_sweep` (images/<key>.png, results.parquet,
    resumable: finished cells are skipped), so `load_sweep`, `plot_grid` and `add_metrics` work.

    Args:
        chain: a `Chain` (or a list of stages, with seed 0 and no image).
        axes: parameter -> values, keys `"stage<N>.<kwarg>"` (1-based), `"seed"` or `"image"`,
            e.g. `{"stage2.strength": [0.3, 0.5, 0.7], "seed": [0, 1]}`.
        out_dir: the sweep folder.
        progress: show a `tqdm.auto` bar.
        exact: the reproducibility mode, as `run_sweep`'s: deterministic algorithms, recorded in
            each row (chain stages always run one call each).

    Returns:
        A `SweepResult`; columns: `key`, `model` ("a -> b"), `prompt` / `negative_prompt` (of the
        last stage that has one), `seed`, `image`, `image_hash`, every stage parameter as
        `stage<N>.<name>`, `pipeline_class`, `width`, `height`, `image_path`, `init_image_path`,
        `seconds`, `status`, `error`, `chain` (the JSON definition).

    Example:
        >>> result = sweep_chain(chain, {"stage2.strength": [0.3, 0.6]}, "runs/chain")
        >>> lab.plot_grid(result, x="stage2.strength", y="seed")
    """
    # 1. validate and expand the grid
    if not isinstance(chain, Chain):
        chain = Chain(stages=chain)
    cells = [chain.with_params(p) for p in _expand(axes, len(chain.stages))]
    for cell in cells:
        _validate(cell)
    _check_stage_sizes(cells)
    store = SweepStore(out_dir)
    # 2. content keys (definition + init image content) and the rows known before running
    todo = _chain_cells(cells, store)
    # 3. the one sweep loop: skip finished cells, run the rest, store each, fold the table
    record = {"chain": chain.to_dict(),
              "axes": {k: [_describe(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals])]
                       for k, vals in axes.items()}}
    df, meta = run_cells(store, todo, ChainExecutor(), exact=exact, progress=progress, desc="chain sweep",
                         run_info=record, generator="torch.Generator('cpu').manual_seed(seed) per stage")
    return SweepResult(df=df, out_dir=store.root, spec=None, meta=meta)


def _check_stage_sizes(cells: list[Chain]) -> None:
    """Every cell's stage `height`/`width` against its pipeline's VAE factor, before any cell runs.

    Only a stage that sets a size loads its pipeline here (`load_pipeline` keeps it for the run).
    """
    seen = set()
    for cell in cells:
        for i, stage in enumerate(cell.stages):
            sizes = {k: stage.kwargs[k] for k in SIZE_ARGUMENTS if stage.kwargs.get(k) is not None}
            if sizes and (i, stage.label(), repr(sizes)) not in seen:
                seen.add((i, stage.label(), repr(sizes)))
                check_sizes(_pipeline(stage, i), stage.label(), sizes)


CHAIN_KEY_VERSION = 1  # part of every chain cell's content key payload


def _chain_cells(cells: list[Chain], store: SweepStore) -> list[Todo]:
    """Each chain cell's content key (its JSON definition and the init image's content hash) and
    the row fields known before it runs; each distinct init image is loaded and stored once."""
    todo, inputs = [], {}
    for cell in cells:
        source = cell.image if cell.image is not None else cell.stages[0].kwargs.get("image")
        digest, rel = "", ""
        if source is not None:
            label = json.dumps(_describe(source))
            if label not in inputs:
                picture = load_image(source)
                inputs[label] = (image_hash(picture), store.write_input(image_hash(picture), picture))
            digest, rel = inputs[label]
        definition = cell.to_dict()
        plain_definition = json.loads(json.dumps(definition, default=str))
        key = content_key({"v": CHAIN_KEY_VERSION, "chain": plain_definition, "image": digest})
        prompts = [s.kwargs for s in cell.stages if "prompt" in s.kwargs]
        row = {
            "key": key,
            "model": " -> ".join(s.label() for s in cell.stages),
            "prompt": prompts[-1]["prompt"] if prompts else "",
            "negative_prompt": (prompts[-1].get("negative_prompt") or "") if prompts else "",
            "seed": cell.seed,
            "image": _describe(source) if source is not None else "",
            "image_hash": digest,
            "init_image_path": rel,
            "chain": json.dumps(definition, default=str),
        }
        todo.append(Todo(key, row, cell))
    return todo


class ChainExecutor:
    """Runs chain cells for the sweep loop: each cell's stages one after another (`Chain.run`)."""

    def run(self, todo: list[Todo], progress: Progress):
        for item in todo:
            progress.start("chain", 1)
            start = time.perf_counter()
            try:
                result = item.work.run(progress=False)  # the sweep's bar counts the cells
            except Exception as exc:  # recorded, and the sweep goes on
                yield Outcome(item, None, ERROR, error_text(exc), time.perf_counter() - start)
                continue
            row = {**result.row(), "pipeline_class": result.params[-1]["pipeline_class"]}
            for name, value in list(row.items()):  # parquet needs one type per column
                if isinstance(value, (list, dict)):
                    row[name] = json.dumps(value, default=str)
            yield Outcome(item, result.image, result.status, "", time.perf_counter() - start, 1, row)
