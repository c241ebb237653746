"""Running a sweep: every cell of a `SweepSpec` becomes one image and one row of a DataFrame.

`run_sweep` reads as numbered steps: validate, expand the grid into cells with content keys, and
hand them to the one sweep loop (`loop.run_cells`: skip cells already on disk, run the rest, store
each, fold the table) with this module's executor, `SpecExecutor`: grouped by model and scheduler,
batched through the denoiser where cells share a timestep grid, one pipeline call per cell
otherwise. Each cell's image is what a direct call of the same pipeline with the same arguments
and `torch.Generator("cpu").manual_seed(seed)` returns: bit for bit for one-call cells at the
same thread count, within `BATCHED_TOLERANCE` for batched ones.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .adapters import AdapterSwitch, check_sources, check_support, lora_sources
from .cells import lora_label
from .control import prepare_control_image
from .errors import ValidationError
from .frozen import FrozenDict
from .families import family_of
from .images import image_hash, load_image
from .knobs import check_knobs, known_class, resolve_call
from .loaders import (denoiser_name, load_pipeline, quiet_call, resolve_dtype, set_scheduler, user_stacklevel,
                      validate_options)
from .loop import Outcome, Progress, Todo, distributed_state, error_text, resolve_exact, run_cells
from .prompts import weighted_call
from .result import SweepResult
from .store import SweepStore
from .timings import record_rows
from .spec import SweepSpec, tiny_size_note
from .torchutil import free_memory, generator, is_nan_image, is_out_of_memory, resolve_device
from .validation import check_sizes, size_multiple
from .vocab import ERROR, NAN, OK, effective_steps, is_tiny, is_url


@dataclass
class Prepared:
    """A cell ready to run: its spec cell, init image, content key and base row."""

    cell: object
    image: object
    image_hash: str
    key: str
    row: dict = field(default_factory=dict)
    reference: object = None  # the IP-Adapter's reference picture (PIL), for cells with one
    compute_key: str = ""  # cells with the same one give the same pixels: computed once per run


def as_spec(spec):
    """A `SweepSpec` from a spec, a YAML path or a flat dict."""
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, (str, Path)):
        return SweepSpec.from_yaml(spec)
    if isinstance(spec, dict):
        return SweepSpec.from_dict(spec)
    raise ValidationError(f"`spec` must be a SweepSpec, a YAML path or a dict, got {type(spec).__name__}")


def _check_pipe_matches(pipe, spec) -> None:
    """A passed-in pipeline must be the spec's model: rows are stored (and found again) under it."""
    info = getattr(pipe, "img2img_lab_info", None) or {}
    identity = info.get("model") or getattr(pipe, "name_or_path", None)
    models = [str(m) for m in spec.model]
    if len(models) > 1:
        raise ValidationError(f"`pipe` serves one model but the spec sweeps `model` over {models}; omit `pipe`")
    if identity and models[0] not in (str(identity), str(info.get("source"))):
        raise ValidationError(
            f"`pipe` was loaded from {str(identity)!r} but the spec's `model` is {models[0]!r}; its images "
            f"would be stored as {models[0]!r}'s. Use spec.replace(model={str(identity)!r}) or omit `pipe`"
        )


@contextmanager
def quiet_progress(pipe):
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

    original = pipe.scheduler
    set_scheduler(pipe, name)
    try:
        yield
    finally:
        pipe.scheduler = original


def run_cell(pipe, call: dict, seed: int):
    """One direct pipeline call, exactly as a user would write it; returns (PIL image, status).

    The output is taken as a float array (`output_type="np"`) so NaN can be detected, then
    converted with the pipeline's own `numpy_to_pil`, which is what `output_type="pil"` does.
    """
    with quiet_call():
        out = pipe(**call, generator=generator(seed), output_type="np")
    array = out.images[0]
    status = NAN if is_nan_image(array) else OK
    image = pipe.numpy_to_pil(np.nan_to_num(array, nan=0.0)[None])[0]
    return image, status


def step_callback(pipe, on_step) -> dict:
    """Call kwargs that report each denoising step as `on_step(step, total)` (total None when
    the pipeline doesn't say): `callback_on_step_end`, or the legacy `callback` where a pipeline
    has only that (the upscalers). The latents pass through untouched, so images don't change."""
    accepted = explicit_parameters(pipe)
    if "callback_on_step_end" in accepted:
        def callback_on_step_end(pipeline, step, timestep, callback_kwargs):
            on_step(step + 1, getattr(pipeline, "_num_timesteps", None))
            return callback_kwargs  # unchanged: the pipeline takes its latents back as they were

        return {"callback_on_step_end": callback_on_step_end}
    if "callback" in accepted and "callback_steps" in accepted:
        return {"callback": lambda step, timestep, latents: on_step(step + 1, None), "callback_steps": 1}
    return {}


def _pipe_row(pipe, model_label: str) -> dict:
    denoiser = getattr(pipe, denoiser_name(pipe), None)
    dtype = getattr(denoiser, "dtype", None) if denoiser is not None else None
    device = getattr(pipe, "device", None)
    row = {
        "model": model_label,
        "pipeline_class": type(pipe).__name__,
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else "",
        "device": str(device) if device is not None else "",
    }
    # the speed/memory knobs this pipeline was loaded with (they don't change pixels, but timings)
    opts = (getattr(pipe, "img2img_lab_info", None) or {}).get("options", {})
    for name in ("offload", "attention", "vae_slicing", "vae_tiling", "compile"):
        value = opts.get(name)
        row[name] = value if isinstance(value, bool) else ("" if value is None else str(value))
    return row


def _load_init_image(source, model, notes: list):
    """Load an init image; a tiny smoke model may run offline on a stand-in for an unreachable URL.

    Returns (image, what was loaded): `source` itself, or the sample's name "astronaut" when it
    stood in for the URL (the row records that name, so its snippet loads the very same picture);
    a stand-in adds its one-line notice to `notes`.
    """
    try:
        return load_image(source), source
    except ValidationError:
        offline_url = is_url(source)
        if not (offline_url and is_tiny(str(model))):
            raise
    notes.append(f"`image` {source!r} could not be fetched (offline?): the random-weight {model} runs on "
                 f"the offline sample 'astronaut' (rows: image='astronaut', the URL in image_requested)")
    return load_image("astronaut"), "astronaut"


def _spec_on_disk(spec, prepared: list[Prepared], store: SweepStore):
    """The spec as spec.yaml can hold it: an in-memory picture (PIL, array) as `image` or
    `ip_adapter_image` is replaced by the path of its stored copy in inputs/, which has the same
    pixels and so the same cell keys."""
    changes = {}
    for name, path_column in (("image", "init_image_path"), ("ip_adapter_image", "ip_adapter_image_path")):
        sources = getattr(spec, name)
        if all(isinstance(source, str) or source is None for source in sources):
            continue
        stored = {}
        for p in prepared:
            source = getattr(p.cell, name)
            if source is not None and not isinstance(source, str):
                stored[id(source)] = str((store.root / p.row[path_column]).resolve())
        values = [s if isinstance(s, str) or s is None else stored[id(s)] for s in sources]
        changes[name] = values if len(values) > 1 else values[0]
    return spec.replace(**changes) if changes else spec


def run_dtype(spec, pipe) -> str:
    """The dtype the cells will run in: the given pipeline's, or what `load_pipeline` resolves
    (float16 on CUDA, float32 elsewhere). It is part of every content key, so a sweep resumed on
    another kind of machine never mixes float16 and float32 images under one key."""
    if pipe is not None:
        return str(getattr(pipe, denoiser_name(pipe)).dtype).replace("torch.", "")

    dtype = resolve_dtype(spec.options.get("dtype"), resolve_device(spec.options.get("device")))
    return str(dtype).replace("torch.", "")


def prepare_cells(spec, store: SweepStore, dtype: str, notes: list | None = None) -> list[Prepared]:
    """Expand the grid, load each distinct init image once, and give each cell its content key.

    What the user should know about the run (tiny models at a small size, a stand-in picture)
    goes into `notes`, one line each, for `run_sweep` to say once. Without a `store` (a plan)
    nothing is written: the pictures are read and hashed only.
    """
    notes = [] if notes is None else notes
    size_note = tiny_size_note(spec)
    if size_note:
        notes.append(size_note)
    images: dict = {}

    def picture(source, model):
        ref = source if isinstance(source, str) else id(source)  # PIL images are not hashable
        if ref not in images:  # once per distinct source: one load, one substitution notice
            image, loaded = _load_init_image(source, model, notes)
            digest = image_hash(image)
            images[ref] = (image, digest, store.write_input(digest, image) if store is not None else None, loaded)
        return images[ref]

    prepared = []
    for cell in spec.cells():
        source = cell.image
        image, digest, rel, loaded = picture(source, cell.model)
        extra = {}
        reference = None
        if cell.ip_adapter_image is not None:  # the IP-Adapter's reference picture: stored and hashed like the init image
            try:
                reference, ref_digest, ref_rel, ref_loaded = picture(cell.ip_adapter_image, cell.model)
            except ValidationError as exc:  # the reference picture's own argument, not the init image's
                raise ValidationError(str(exc).replace("`image`", "`ip_adapter_image`", 1)) from None
            if cell.ip_adapter is None:
                reference = None  # the base model's cell of an IP-Adapter axis: recorded, not passed
            extra = {"ip_adapter_image": str(ref_loaded) if not hasattr(ref_loaded, "size") else
                     f"<{type(ref_loaded).__name__}>", "ip_adapter_image_hash": ref_digest,
                     "ip_adapter_image_path": ref_rel}
        key = cell.key(digest, dtype, extra.get("ip_adapter_image_hash"))
        # what the pixels depend on: without labels, and without an adapter's settings where the
        # cell has no adapter (the base model at each lora_scale is one computation)
        same = replace(cell, labels=FrozenDict(),
                       lora_scale=cell.lora_scale if cell.lora is not None else None,
                       ip_adapter_scale=cell.ip_adapter_scale if cell.ip_adapter is not None else None,
                       ip_adapter_image=cell.ip_adapter_image if cell.ip_adapter is not None else None)
        compute_key = same.key(digest, dtype, extra.get("ip_adapter_image_hash") if cell.ip_adapter else None)
        row = {
            "key": key,
            "model": str(cell.model),
            # what was actually loaded; a stand-in for an unreachable URL keeps the URL beside it
            "image": str(loaded) if not hasattr(loaded, "size") else f"<{type(loaded).__name__}>",
            **({"image_requested": str(source)} if loaded is not source else {}),
            "image_hash": digest,
            "init_image_path": rel,
            "seed": int(cell.seed),
            "scheduler": cell.scheduler,
            "compel": bool(cell.compel),
            **cell.adapter_row(),
            **extra,
            **{k: v for k, v in cell.call.items() if k != "image"},
        }
        row["effective_steps"] = effective_steps(cell.call)
        prepared.append(Prepared(cell, image, digest, key, row, reference, compute_key))
    return prepared


def run_sweep(spec, out_dir, pipe=None, progress=True, *, batched=True, exact=None, max_batch_size=8) -> SweepResult:
    """Run (or resume, or extend) a sweep; every image is one row of `result.df`.

    Args:
        spec: a `SweepSpec`, the path of a YAML spec, or a flat dict of spec keys.
        out_dir: the sweep folder. Cells already finished there (same content key) are skipped,
            so a re-run resumes an interrupted sweep and an extended spec computes only new cells.
        pipe: an already loaded pipeline to use instead of loading `spec.model`.
        progress: show a `tqdm.auto` bar over cells (fine in notebooks and terminals).
        batched: run cells that share a timestep grid as one batch through the denoiser. A
            batched image equals the direct call within `BATCHED_TOLERANCE` (float rounding of
            batched kernels: at most one 8-bit level per pixel); cells that cannot batch run one
            call each.
        exact: the reproducibility mode: one pipeline call per cell under
            `torch.use_deterministic_algorithms`, so each image equals its `code_snippet` bit for
            bit at the same thread count. None takes the spec's `exact` (default False). Each row
            records it (`exact` column); an exact run recomputes cells that an earlier non-exact
            run left in the folder.
        max_batch_size: the largest batch; halved and retried on out-of-memory.

    Returns:
        A `SweepResult` with the whole table of `out_dir` (earlier cells included).

    Example:
        >>> spec = lab.SweepSpec(model="tiny/sd15", prompt="a cat", image="cat",
        ...                      strength=[0.4, 0.6, 0.8], guidance_scale=[3.0, 7.5])
        >>> result = lab.run_sweep(spec, "runs/cat")
        >>> result.df[["strength", "guidance_scale", "status", "image_path"]]
    """
    # 1. validate (the spec validated itself when it was built) and open the folder
    spec = as_spec(spec)
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValidationError(f"`max_batch_size` must be an int >= 1, got {max_batch_size!r}")
    exact = resolve_exact(exact, getattr(spec, "exact", False))
    if pipe is None:
        validate_options(dict(spec.options))  # device/dtype/offload checks before any cell runs
    else:
        _check_pipe_matches(pipe, spec)
    if pipe is None:
        check_knobs_before_loading(spec)  # tiny models' classes are known: refuse a knob none takes now
    store = SweepStore(out_dir)

    # 2. expand the grid into cells with content keys; say once what the user should know about it
    notes: list = []
    prepared = prepare_cells(spec, store, run_dtype(spec, pipe), notes)
    for note in notes:
        print(note)  # one plain line each (not a warning: nothing is wrong with the user's call)

    # 3. the one sweep loop: skip finished cells, run the rest grouped by model and scheduler (each
    #    pipeline loads once), store each cell as it finishes, fold the table
    executor = SpecExecutor(spec, pipe, batched=bool(batched) and not exact, max_batch_size=max_batch_size)
    df, meta = run_cells(
        store, [Todo(p.key, p.row, p) for p in prepared], executor, exact=exact, progress=progress,
        generator="torch.Generator('cpu').manual_seed(seed)",
        table_metadata={"img2img_lab": {"spec": spec.to_dict()}}, run_info={"loads": executor.loads},
        before_run=lambda: store.write_spec(_spec_on_disk(spec, prepared, store)),
    )
    # 4. what this run's cells took, for the next plan's estimate (`lab.plan`)
    runs = meta.get("runs") or []
    if runs and runs[-1].get("computed") and "created" in df.columns:
        record_rows(df[df["created"] >= runs[-1]["started"]])
    return SweepResult(df=df, out_dir=store.root, spec=spec, meta=meta)


def check_knobs_before_loading(spec) -> dict | None:
    """`knobs.check_knobs` over the spec's cells when every model's class is known without loading
    it (tiny twins), and that those that use a LoRA or an IP-Adapter take one; None when some
    model must be loaded first (then `SpecExecutor.check` does it)."""
    classes = {str(m): known_class(m, spec.options) for m in spec.model}
    if any(cls is None for cls in classes.values()):
        return None
    calls: dict = {model: (cls, []) for model, cls in classes.items()}
    cells: dict = {model: (cls, []) for model, cls in classes.items()}
    for cell in spec.cells():
        calls[str(cell.model)][1].append(dict(cell.call))
        cells[str(cell.model)][1].append(cell)
    check_support(cells)
    return check_knobs(calls)


def load_order(cell) -> tuple:
    """What a cell needs loaded, most expensive first: model, IP-Adapter, LoRAs and their weights,
    the IP-Adapter's scale, scheduler. Cells are run grouped by it, so each model loads once, each
    IP-Adapter once per model, each LoRA once per model (then only its weights change)."""
    return (str(cell.model), cell.ip_adapter, cell.lora, cell.lora_scale, cell.ip_adapter_scale, cell.scheduler)


def group_cells(items: list, cell_of=lambda item: item) -> dict:
    """Items grouped by `load_order`, the groups in cost order whatever the spec's axis order:
    models in their first-appearance order, and within a model its IP-Adapters, then its LoRAs."""
    groups: dict = {}
    for item in items:
        groups.setdefault(load_order(cell_of(item)), []).append(item)
    first: dict = {}
    for key in groups:  # rank of each model, and of each IP-Adapter within its model, by first appearance
        first.setdefault((key[0],), len(first))
        first.setdefault(key[:2], len(first) if key[1] is not None else -1)  # a model's cells without one first
    # within a model and IP-Adapter: the base model's cells first (nothing loaded yet), then each LoRA's
    order = sorted(groups, key=lambda k: (first[(k[0],)], first[k[:2]], k[2] is not None, repr(k[2:])))
    return {key: groups[key] for key in order}


def count_loads(prepared) -> dict:
    """What running these prepared cells loads, in `group_cells` order, as `SpecExecutor` runs them
    (a cell giving the same pixels as an earlier one is not run): models, LoRAs (each once per
    model), IP-Adapters (each change within a model) and schedulers (set per group of cells that
    names one, the model's own back after). This is what the executor's `loads` counts."""
    loads = {"model": 0, "lora": 0, "ip_adapter": 0, "scheduler": 0}
    models, loras, ip_now, seen = set(), set(), {}, set()
    for (model, *_), group in group_cells(list(prepared), lambda p: p.cell).items():
        runs = [p for p in group if (p.compute_key or p.key) not in seen]
        seen.update(p.compute_key or p.key for p in group)
        if not runs:
            continue
        cell = runs[0].cell
        if model not in models:
            models.add(model)
            loads["model"] += 1
            for source in lora_sources([p.cell for p in prepared if str(p.cell.model) == model]):
                loras.add((model, source))  # all of a model's LoRAs load before its first cell
                loads["lora"] += 1
        if cell.ip_adapter is not None and ip_now.get(model) != cell.ip_adapter:
            loads["ip_adapter"] += 1
        ip_now[model] = cell.ip_adapter
        if cell.scheduler is not None:  # set for its group, the model's own back afterwards
            loads["scheduler"] += 1
    return loads


def same_image_count(prepared) -> int:
    """How many of these cells give the same pixels as another one (computed once by the run)."""
    return len(prepared) - len({p.compute_key or p.key for p in prepared})


class SpecExecutor:
    """Runs a spec's cells for the sweep loop: grouped by what they load (`load_order`: model,
    IP-Adapter, LoRAs, scheduler) so each loads once, batched through the denoiser where the cells
    share a timestep grid, else one call each. `loads` counts what was loaded (meta.json's run record)."""

    def __init__(self, spec, pipe=None, *, batched: bool = True, max_batch_size: int = 8):
        self.spec, self.pipe, self.batched, self.max_batch_size = spec, pipe, batched, max_batch_size
        self.options = dict(spec.options)
        self.said: set = set()  # long-prompt notices already given: once per sweep, not per model
        self.skipped: dict = {}  # model -> arguments of the spec it doesn't take (knobs.check_knobs)
        self.pipes: dict = {}  # model -> its pipeline, loaded once per sweep
        self.loads: dict = {"model": 0, "lora": 0, "ip_adapter": 0, "scheduler": 0}
        self.switches: dict = {}  # model -> its AdapterSwitch (LoRAs, IP-Adapter), while its cells run

    def groups(self, todo: list[Todo]) -> dict:
        """The cells to run per `load_order` key, in cost order (see `group_cells`)."""
        return group_cells(todo, lambda item: item.work.cell)

    def pipeline(self, model: str):
        """The pipeline of `model`: the one passed to `run_sweep`, else loaded (once per sweep)."""
        if self.pipe is not None:
            return self.pipe
        if model not in self.pipes:
            self.pipes[model] = load_pipeline(model, **self.options)
            self.loads["model"] += 1
        return self.pipes[model]

    def check(self, groups: dict) -> None:
        """Before any cell runs: every model's cells against its loaded pipeline (call keywords,
        adapters, sizes against its VAE factor), and a note for init images the pipeline will round."""
        said = set()
        calls: dict = {}
        configs: dict = {}
        cells: dict = {}
        for key, items in groups.items():
            model = key[0]
            pipe = self.pipeline(model)
            calls.setdefault(model, (type(pipe).__name__, []))[1].extend(dict(item.work.cell.call) for item in items)
            cells.setdefault(model, (type(pipe), []))[1].extend(item.work.cell for item in items)
            configs[model] = getattr(pipe, "config", None)
        check_support(cells)
        self.skipped = check_knobs(calls, configs)
        allow_pickle = bool(self.options.get("allow_pickle"))
        for model, (_, model_cells) in cells.items():  # every adapter found, every LoRA loaded once
            check_sources(model_cells, allow_pickle=allow_pickle)
            sources = lora_sources(model_cells)
            if sources or any(c.ip_adapter is not None for c in model_cells):
                switch = self.switches.setdefault(model, AdapterSwitch(self.pipeline(model), model,
                                                                       allow_pickle=allow_pickle))
                switch.preload(sources)  # a LoRA that doesn't fit its model fails here, before any cell
        self._count_adapter_loads()
        for key, items in groups.items():
            pipe = self.pipeline(key[0])
            check_call_keys(pipe, [item.work for item in items])
            for note in rounding_notes(pipe, [item.work for item in items]):
                if note not in said:
                    said.add(note)
                    print(note)

    def _count_adapter_loads(self) -> None:
        self.loads["lora"] = sum(s.loads["lora"] for s in self.switches.values())
        self.loads["ip_adapter"] = sum(s.loads["ip_adapter"] for s in self.switches.values())

    def run(self, todo: list[Todo], progress: Progress):
        state = distributed_state()
        if state.num_processes > 1 and "device" not in self.options:
            self.options["device"] = str(state.device)  # one device per process
        groups = self.groups(todo)
        # cells that give the same pixels as an earlier one (the base model at each lora_scale) are
        # not run again: each takes the image of the first, said in its row (`same_image_as`)
        first: dict = {}
        twins: dict = {}
        for items in groups.values():
            for item in items:
                ref = item.work.compute_key or item.key
                if ref in first:
                    twins.setdefault(ref, []).append(item)
                else:
                    first[ref] = item
        runs = {k: [i for i in items if first[i.work.compute_key or i.key] is i] for k, items in groups.items()}
        try:
            self.check(groups)  # loads each model and its LoRAs once (kept for the run below)
            for key, items in runs.items():
                if not items:
                    continue
                model, scheduler = key[0], key[-1]
                pipe = self.pipeline(model)
                cell = items[0].work.cell
                switch = self.switches.get(model)
                adapter_fields = switch.use(cell) if switch is not None else {}
                self._count_adapter_loads()
                if scheduler is not None:
                    self.loads["scheduler"] += 1
                base = _pipe_row(pipe, model)  # a passed pipe was checked to be this model
                label = _group_label(model, cell)
                with quiet_progress(pipe), _scheduler(pipe, scheduler):
                    base["scheduler_class"] = type(pipe.scheduler).__name__
                    cells = {id(item.work): item for item in items}
                    for p, image, status, error, seconds, batch_size, engine in _execute(
                        pipe, [item.work for item in items], batched=self.batched, max_batch_size=self.max_batch_size,
                        progress=progress, label=label, said=self.said,
                    ):
                        row = {**base, **adapter_fields, "batched": engine,
                               **knob_row(pipe, p, self.skipped.get(model, ()))}
                        yield Outcome(cells[id(p)], image, status, error, seconds, batch_size, row)
                        for twin in twins.pop(p.compute_key or p.key, []):
                            twin_row = {**row, **knob_row(pipe, twin.work, self.skipped.get(model, ())),
                                        "same_image_as": p.key}
                            yield Outcome(twin, image, status, error, 0.0, batch_size, twin_row)
        finally:
            for switch in self.switches.values():  # the cached pipelines are their base models again
                switch.release()
            self.switches.clear()


def _group_label(model: str, cell) -> str:
    """The progress bar's name for a group: model · LoRA · IP-Adapter · scheduler, those it has."""
    parts = [model]
    if cell.lora is not None:
        parts.append(lora_label(cell.lora))
    if cell.ip_adapter is not None:
        parts.append(cell.ip_adapter)
    if cell.scheduler is not None:
        parts.append(cell.scheduler)
    return " · ".join(parts)


def knob_row(pipe, p: Prepared, skipped=()) -> dict:
    """What a cell's row records of its pipeline's knobs: the default each silent argument ran with,
    which arguments those were (`pipeline_defaults`), the spec's arguments this pipeline does not
    take or ignores (`not_applied`), and the denoising steps it really ran (`effective_steps`)."""
    resolved = resolve_call(pipe, dict(p.cell.call))
    not_applied = sorted(set(resolved.not_applied) | set(skipped))
    return {
        **resolved.used,
        "pipeline_defaults": ",".join(sorted(resolved.used)),
        "not_applied": ",".join(not_applied),
        "effective_steps": effective_steps(resolved.call),
    }


def explicit_parameters(pipe) -> set:
    """The keywords `pipe.__call__` names (not its `**kwargs`, which swallow anything silently)."""
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def check_call_keys(pipe, cells: list[Prepared]) -> None:
    """Before any cell runs: each call as `pipe` will get it (`knobs.resolve_call`: the pipeline's
    defaults where the spec is silent, without the arguments it doesn't take, which the sweep-wide
    `knobs.check_knobs` allowed) must denoise at least once, and its `height`/`width` must be
    multiples of the pipeline's VAE factor (`validation.check_sizes`; pipelines without them get the
    init image resized)."""
    for p in cells:
        call = resolve_call(pipe, dict(p.cell.call)).call
        runs = effective_steps(call)
        if "strength" in call and runs is not None and runs < 1 and call.get("denoising_start") is None:
            raise ValidationError(
                f"cell strength={call['strength']!r}, num_inference_steps={call['num_inference_steps']!r} of model "
                f"{p.cell.model!r} runs int({call['num_inference_steps']}*{call['strength']!r})={runs} denoising "
                f"steps ({type(pipe).__name__}'s defaults filled in): raise `strength` or `num_inference_steps`"
            )
        check_sizes(pipe, p.cell.model, p.cell.call)


def rounding_notes(pipe, cells: list[Prepared]) -> list[str]:
    """One line per init image whose size the pipeline rounds down to its VAE factor, for cells
    that set no `height`/`width` (diffusers rounds silently; the rows record the size produced)."""
    accepted = explicit_parameters(pipe)
    if "height" in accepted or "strength" not in accepted:
        return []  # its own height/width (default or given) set the size; upscalers scale theirs
    factor = size_multiple(pipe)
    notes = []
    for p in cells:
        if factor is None or "height" in p.cell.call or "width" in p.cell.call:
            continue
        w, h = p.image.size
        if w % factor or h % factor:
            notes.append(f"`image` {p.row.get('image')!r} is {w}x{h} px, not a multiple of {factor}: "
                         f"{type(pipe).__name__} rounds it down to {w // factor * factor}x{h // factor * factor} "
                         f"(the rows record that size; set height/width to choose another)")
    return notes


def warn_long_prompts(pipe, cells: list[Prepared], said: set | None = None) -> None:
    """Warn once per text that the pipeline's text encoder will cut (CLIP takes 77 tokens).

    `said` (one set per sweep) keeps the texts already warned about, so a sweep over several
    models says it once; diffusers' own per-call notice is silenced (`loaders.quiet_call`).
    """
    texts = [(name, p.cell.call.get(name)) for p in cells if not p.cell.compel  # compel chunks, never cuts
             for name in ("prompt", "negative_prompt")]
    warn_long_texts(pipe, texts, said)


def warn_long_texts(pipe, texts, said: set | None = None,
                    hint: str = "set `compel: true` to encode long prompts in chunks") -> None:
    """`warn_long_prompts` for `(name, text)` pairs: one line per text `pipe` will cut, pointing
    at the user's call."""
    if (getattr(pipe, "img2img_lab_info", None) or {}).get("kind") == "tiny":
        return  # the tiny models' byte-level tokenizer counts characters: its count says nothing of the real model's
    tokenizers = [t for t in (getattr(pipe, n, None) for n in ("tokenizer", "tokenizer_2", "prior_tokenizer"))
                  if t is not None and getattr(t, "model_max_length", 0) and t.model_max_length < 100_000]
    if not tokenizers:
        return
    tokenizer = tokenizers[0]
    limit = tokenizer.model_max_length
    seen = set() if said is None else said
    for name, text in texts:
        if not isinstance(text, str) or (name, text, limit) in seen:
            continue
        seen.add((name, text, limit))
        # verbose=False: counting is what we want here, not transformers' "longer than" notice
        count = len(tokenizer(text, truncation=False, verbose=False).input_ids)
        if count > limit:
            warnings.warn(
                f"`{name}` {text[:40]!r}... has {count} tokens but the text encoder of "
                f"{type(pipe).__name__} takes {limit}: the last {count - limit} tokens are cut ({hint})",
                UserWarning,
                stacklevel=user_stacklevel(),
            )


def call_for(pipe, prepared: Prepared, shared: dict | None = None) -> dict:
    """The exact keyword arguments of this cell's pipeline call (without the generator).

    `shared` (one dict per group of cells) keeps each derived picture (a resized init image, a
    loaded control image) once, so cells that share it share the very object: the batched engine
    then preprocesses and VAE-encodes it once, and nothing is read from disk twice.
    """
    shared = {} if shared is None else shared
    accepted = explicit_parameters(pipe)
    call = resolve_call(pipe, dict(prepared.cell.call)).call  # defaults filled in, what it doesn't take left out
    image = prepared.image
    resize = "height" not in accepted or type(pipe).__name__ in family_of(pipe).sized_input
    if ("height" in call or "width" in call) and resize:
        # e.g. StableDiffusionImg2ImgPipeline sizes its output from the init image (and Z-Image
        # takes height/width but never resizes its image to them): resize it
        size = (int(call.get("width", image.width)), int(call.get("height", image.height)))
        if "height" not in accepted:
            call.pop("width", None), call.pop("height", None)
        if size != image.size:
            key = ("init", prepared.image_hash, size)
            if key not in shared:
                shared[key] = image.resize(size, Image.Resampling.LANCZOS)
            image = shared[key]
    for name in family_of(pipe).picture_args:  # the family's picture arguments, e.g. a ControlNet's control_image
        if call.get(name) is not None:
            key = (name, repr(call[name]), image.size)
            if key not in shared:  # loaded, and sized like the init image
                shared[key] = prepare_control_image(call[name], image.size)
            call[name] = shared[key]
    call["image"] = image
    if prepared.reference is not None:  # the IP-Adapter's reference picture
        call["ip_adapter_image"] = prepared.reference
    if prepared.cell.compel:
        call = weighted_call(pipe, call)  # prompt texts -> compel embeddings (the row keeps the text)
    return call


def _execute(pipe, cells: list[Prepared], *, batched: bool, max_batch_size: int, progress: Progress | None = None,
             label: str = "", said: set | None = None):
    """Yield (prepared, image, status, error, seconds, batch_size, batched) per cell as each finishes.

    `batched` says whether the cell went through the batched engine (within `BATCHED_TOLERANCE`
    of the direct call, even in a batch halved to one after out-of-memory) or was one call.

    `progress` hears of every denoising step (batched or not) and of each batch's start.
    """
    # 1. before any cell runs: every keyword is the pipeline's, long prompts are said once
    check_call_keys(pipe, cells)
    warn_long_prompts(pipe, cells, said)
    # 2. each cell's call, derived pictures shared between cells
    shared: dict = {}
    calls = {id(p): call_for(pipe, p, shared) for p in cells}
    # 3. batched where the engine can, one call each for the rest
    direct = cells
    if batched:
        from . import batched as engine  # imports torch: only when a sweep runs batched

        batchable = [p for p in cells if engine.can_batch(pipe, {**calls[id(p)], "generator": generator(0)})]
        direct = [p for p in cells if not any(p is b for b in batchable)]
        yield from _run_batches(engine, pipe, batchable, calls, max_batch_size, progress, label)
    for p in direct:
        yield _run_direct(pipe, p, calls[id(p)], progress, label)


def _run_batches(engine, pipe, cells: list[Prepared], calls: dict, max_batch_size: int, progress, label: str):
    """The batchable cells in chunks of `max_batch_size`, each chunk on disk before the next runs."""
    # cells sharing a timestep grid next to each other, later starters together
    cells = sorted(cells, key=lambda p: (calls[id(p)]["num_inference_steps"], calls[id(p)]["image"].size,
                                         -effective_steps(calls[id(p)])))
    # a compiled denoiser must see one batch shape per sweep, or it recompiles
    compiled = bool((getattr(pipe, "img2img_lab_info", None) or {}).get("options", {}).get("compile"))
    for i in range(0, len(cells), max_batch_size):
        chunk = cells[i : i + max_batch_size]
        if len(chunk) == 1:  # a batch of one is one call: run it as one, bit for bit
            yield _run_direct(pipe, chunk[0], calls[id(chunk[0])], progress, label)
            continue
        on_step = None
        if progress is not None:
            progress.start(label, len(chunk))

            def on_step(index, step, total, chunk=chunk):
                progress.step(chunk[index].key, step, total)
        with quiet_call():
            outputs = engine.run_batched(
                pipe, [{**calls[id(p)], "generator": generator(p.cell.seed)} for p in chunk],
                max_batch_size=max_batch_size, static_shapes=compiled, on_step=on_step,
            )
        for p, out in zip(chunk, outputs):
            if out.error is not None:
                yield p, None, ERROR, error_text(out.error), out.seconds, out.batch_size, True
            else:
                yield p, out.image, NAN if out.nan else OK, "", out.seconds, out.batch_size, True


def _run_direct(pipe, p: Prepared, call: dict, progress, label: str) -> tuple:
    """One cell as one pipeline call; a failure is recorded (the sweep goes on)."""
    if progress is not None:
        progress.start(label, 1)
        fallback = effective_steps(call)  # for pipelines that don't say their step count

        def on_step(step, total):
            progress.step(p.key, step, total or fallback)
        call = {**call, **step_callback(pipe, on_step)}
    start = time.perf_counter()
    try:
        image, status = run_cell(pipe, call, p.cell.seed)
        error = ""
    except Exception as exc:  # recorded, and the sweep goes on
        if is_out_of_memory(exc):
            free_memory()
        image, status, error = None, ERROR, error_text(exc)
    return p, image, status, error, time.perf_counter() - start, 1, False


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
