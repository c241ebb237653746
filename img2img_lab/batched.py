"""Batched denoising of many image-to-image calls through one pipeline's components, exactly.

A sweep is many calls of one pipeline that differ only in ``strength``, ``guidance_scale``,
``prompt``, ``negative_prompt`` and ``seed``. Calls with the same ``num_inference_steps`` and image
size share one timestep grid; a call with a lower ``strength`` only joins it later (at its
``t_start``). :func:`run_batched` therefore runs up to ``max_batch_size`` calls as one batch:

- calls are grouped into *cohorts* by start step (and ``eta``); each cohort owns a
  ``copy.deepcopy`` of ``pipe.scheduler``, so multistep history, ``step_index``, PNDM's ``ets`` and
  DPM-Solver's order state are exactly those of a direct call;
- at every step one UNet forward serves all cohorts that have joined, with per-sample timesteps,
  per-sample (negative) prompt embeddings and per-sample ``guidance_scale``; calls with
  ``guidance_scale <= 1`` send only their conditional row, as diffusers does;
- each prompt and negative prompt is encoded once (and cached across calls), each init image is
  preprocessed and VAE-encoded once; the latent sample, the noise and any scheduler noise are
  drawn from each call's own ``generator`` in the order of a direct pipeline call.

Every step reuses the pipeline's own pieces (``encode_prompt``, ``image_processor``,
``retrieve_latents``, ``get_timesteps``, ``scheduler.add_noise/scale_model_input/step``,
``prepare_extra_step_kwargs``, ``run_safety_checker``), so images equal ``pipe(**call).images[0]``
up to floating-point reduction order (max abs difference far below 1e-3 on a 0-1 scale in float32).
The family-specific ones come from the pipeline's model family (``families.base.StepBatching``:
today the SD 1.x/2.x family's ``families.sd.SDBatching``); a family without them runs each call
on its own, for the reason it gives (:func:`batch_refusal`).

Batch shapes: the UNet batch grows as cohorts join. With ``static_shapes=True`` every UNet call is
padded to ``2 * max_batch_size`` rows (padding rows are discarded), so a ``torch.compile``-d UNet
compiles once per sweep (once more after an out-of-memory halving), at the price of computing the
padding; the default leaves batches unpadded, which is faster in eager mode.
"""

from __future__ import annotations

import copy
import inspect
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .families import StepBatching, family_of
from .torchutil import free_memory, is_nan_image, is_out_of_memory
from .vocab import effective_steps

# Schedulers whose state is per-cohort and whose step is per-sample, checked against direct calls
# in tests/test_batched.py.
SUPPORTED_SCHEDULERS = frozenset(
    {
        "PNDMScheduler",
        "DDIMScheduler",
        "DDPMScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "LMSDiscreteScheduler",
        "UniPCMultistepScheduler",
        "HeunDiscreteScheduler",
    }
)
# `pipe(**call)` keyword arguments the batched path reproduces exactly.
_CALL_KEYS = frozenset(
    {
        "prompt",
        "image",
        "strength",
        "num_inference_steps",
        "guidance_scale",
        "negative_prompt",
        "eta",
        "generator",
        "output_type",
        "num_images_per_prompt",
        "return_dict",
    }
)
# text encoder -> {text: embeddings}; entries die with their text encoder.
_PROMPT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PROMPT_CACHE_SIZE = 1024


@dataclass(frozen=True)
class BatchedOutput:
    """What one call of :func:`run_batched` produced.

    Args:
        image: the image in the call's ``output_type`` (a PIL image by default), ``None`` on error.
        error: the exception that stopped this call, ``None`` on success.
        nan: ``True`` when the decoded image holds NaN/inf or is entirely black (e.g. fp16 overflow).
        nsfw: the safety checker's verdict, ``None`` when the pipeline has no safety checker.
        batch_size: number of calls denoised together with this one (0 when it never ran).
        seconds: wall time of its batch divided by the batch size.
    """

    image: Any = None
    error: BaseException | None = None
    nan: bool = False
    nsfw: bool | None = None
    batch_size: int = 0
    seconds: float = 0.0


def can_batch(pipe, call: dict) -> bool:
    """Whether :func:`run_batched` reproduces ``pipe(**call)`` exactly (:func:`batch_refusal` is None).

    Supported: a pipeline whose family has per-step batching pieces and accepts it (today a
    ``StableDiffusionImg2ImgPipeline``: SD 1.x/2.x, no IP-Adapter, no guidance embedding) with a
    scheduler in :data:`SUPPORTED_SCHEDULERS`, and a call with a single ``str`` prompt, an
    optional ``str`` negative prompt, one PIL ``image``, one seeded ``torch.Generator`` and only
    the keyword arguments in ``_CALL_KEYS``. Anything else (ControlNet, callbacks,
    ``prompt_embeds``, ``clip_skip``, ``cross_attention_kwargs``, lists) should go through
    ``pipe(**call)`` directly.

    Args:
        pipe: a diffusers pipeline.
        call: the keyword arguments of one ``pipe(**call)``.

    Returns:
        ``True`` when the call can join a batch.

    Example:
        >>> call = dict(prompt="a cat", image=init, strength=0.5, generator=torch.Generator().manual_seed(0))
        >>> can_batch(pipe, call)
        True
    """
    return batch_refusal(pipe, call) is None


def batch_refusal(pipe, call: dict) -> str | None:
    """Why ``pipe(**call)`` can't join a batch, in one line; None when it can (see :func:`can_batch`).

    Example:
        >>> batch_refusal(lab.load_pipeline("tiny/kandinsky22"), call)
        'KandinskyV22Img2ImgCombinedPipeline: Kandinsky 2.2 runs its prior before the decoder ...'
    """
    from PIL import Image

    family = family_of(pipe)
    name = type(pipe).__name__
    if family.batching is None:
        return f"{name}: {family.batching_reason}"
    reason = family.batching.unsupported(pipe)
    if reason is not None:
        return f"{name}: {reason}"
    if type(pipe.scheduler).__name__ not in SUPPORTED_SCHEDULERS:
        return f"{name}: its scheduler {type(pipe.scheduler).__name__} is not batched (see SUPPORTED_SCHEDULERS)"
    unknown = sorted(set(call) - _CALL_KEYS)
    if unknown:
        return f"`{unknown[0]}` is not a call argument the batched path reproduces"
    checks = (
        ("prompt", isinstance(call.get("prompt"), str), "a single string"),
        ("negative_prompt", isinstance(call.get("negative_prompt"), (str, type(None))), "a string or None"),
        ("image", isinstance(call.get("image"), Image.Image), "one PIL image"),
        ("generator", isinstance(call.get("generator"), torch.Generator), "one torch.Generator"),
        ("num_images_per_prompt", call.get("num_images_per_prompt", 1) == 1, "1"),
        ("output_type", call.get("output_type", "pil") in ("pil", "np", "pt"), "'pil', 'np' or 'pt'"),
    )
    for arg, ok, wanted in checks:
        if not ok:
            return f"`{arg}` must be {wanted} to be batched, got {call.get(arg)!r}"[:300]
    return None


def run_batched(
    pipe,
    calls: list[dict],
    *,
    max_batch_size: int = 8,
    static_shapes: bool = False,
    progress: Callable[[int], Any] | None = None,
    on_step: Callable[[int, int, int], Any] | None = None,
) -> list[BatchedOutput]:
    """Run many ``pipe(**call)`` image-to-image calls as batches, with identical results.

    Calls are grouped by ``(num_inference_steps, image size)``, sorted by start step and split into
    batches of at most ``max_batch_size`` calls. A batch that runs out of memory is retried with half
    the batch size (down to 1); each call's generator is rewound first, so the retry draws the same
    random numbers. An error other than out-of-memory is recorded on every call of its batch.

    Args:
        pipe: a ``StableDiffusionImg2ImgPipeline``.
        calls: keyword arguments of each ``pipe(**call)``; every one must pass :func:`can_batch`
            (the others are returned with a ``ValueError``). Their generators advance exactly as
            in direct calls.
        max_batch_size: most calls denoised together (the UNet sees up to twice as many rows).
        static_shapes: pad every UNet call to ``2 * max_batch_size`` rows, so a compiled UNet does
            not recompile (see the module docstring).
        progress: called with the number of calls finished after each batch, e.g. ``tqdm.update``.
        on_step: called as ``on_step(index, step, total)`` after each denoising step of each call
            (``index`` into ``calls``; ``step`` of its ``total`` denoising steps), so a progress bar
            can move inside a batch. A batch retried after out-of-memory reports from step 1 again.

    Returns:
        One :class:`BatchedOutput` per call, in the order of ``calls``.

    Example:
        >>> calls = [dict(prompt="a cat", image=init, strength=s, guidance_scale=g,
        ...               generator=torch.Generator().manual_seed(0))
        ...          for s in (0.3, 0.6) for g in (1.0, 7.5)]
        >>> outputs = run_batched(pipe, calls, max_batch_size=4)
        >>> outputs[0].image.size
        (512, 512)
    """
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"`max_batch_size` must be a positive integer, got {max_batch_size!r}")

    # 1. validate each call and fill in the pipeline's defaults (a refused call gets its error)
    pieces = family_of(pipe).batching  # the family's own steps (None: every call is refused)
    outputs: list[BatchedOutput | None] = [None] * len(calls)
    cells = _valid_cells(pipe, pieces, calls, outputs)
    # 2. shared work: preprocess each init image once, group calls sharing a timestep grid
    groups = _grid_groups(pipe, cells)
    encoded: dict[int, Any] = {}  # id(image) -> VAE encoder output, filled on first use
    # 3. denoise batch by batch, halving on out-of-memory
    batch_size = max_batch_size
    for group in groups:
        pending = sorted(group, key=lambda cell: (cell.t_start(pipe), cell.index))
        while pending:
            batch = pending[:batch_size]
            states = [cell.call["generator"].get_state() for cell in batch]
            start = time.perf_counter()
            try:
                results = _run_batch(pipe, pieces, batch, encoded, 2 * max_batch_size if static_shapes else None,
                                     on_step)
            except Exception as error:  # noqa: BLE001 - recorded per call
                for cell, state in zip(batch, states):
                    cell.call["generator"].set_state(state)
                if is_out_of_memory(error) and batch_size > 1:
                    free_memory()
                    batch_size //= 2
                    continue
                results = [BatchedOutput(error=error)] * len(batch)
            seconds = (time.perf_counter() - start) / len(batch)
            for cell, result in zip(batch, results):
                if result.error is None:
                    result = BatchedOutput(result.image, None, result.nan, result.nsfw, len(batch), seconds)
                outputs[cell.index] = result
            pending = pending[len(batch) :]
            if progress is not None:
                progress(len(batch))
    pipe.maybe_free_model_hooks()
    return outputs


def _valid_cells(pipe, pieces: StepBatching | None, calls: list[dict], outputs: list) -> list:
    """A `_Cell` for every call the batched path takes; the others' `outputs` get their error."""
    cells = []
    generators = set()
    for index, call in enumerate(calls):
        try:
            cell = _Cell(index, _full_call(pipe, pieces, call))
            if id(call["generator"]) in generators:
                raise ValueError(f"`generator` of call {index} is shared with an earlier call; give each call its own")
        except ValueError as error:
            outputs[index] = BatchedOutput(error=error)
            continue
        generators.add(id(call["generator"]))
        cells.append(cell)
    return cells


def _grid_groups(pipe, cells: list) -> list[list]:
    """Cells sharing a timestep grid (steps and image size), each init image preprocessed once."""
    images: dict[int, torch.Tensor] = {}
    groups: dict[tuple, list[_Cell]] = {}
    for cell in cells:
        key = id(cell.call["image"])
        if key not in images:
            images[key] = pipe.image_processor.preprocess(cell.call["image"])
        cell.image = images[key]
        groups.setdefault((cell.call["num_inference_steps"], *cell.image.shape[-2:]), []).append(cell)
    return list(groups.values())


def clear_prompt_cache() -> None:
    """Forget cached prompt embeddings (needed after changing a text encoder's weights in place, e.g. LoRA)."""
    _PROMPT_CACHE.clear()


# ---------------------------------------------------------------------------------------------


class _Cell:
    """One call on its way through a batch."""

    def __init__(self, index: int, call: dict):
        self.index = index
        self.call = call
        self.image: torch.Tensor | None = None  # preprocessed init image

    def t_start(self, pipe) -> int:
        # the arithmetic of StableDiffusionImg2ImgPipeline.get_timesteps
        return self.call["num_inference_steps"] - effective_steps(self.call)


def _full_call(pipe, pieces: StepBatching, call: dict) -> dict:
    """The call with the pipeline's defaults filled in, checked as ``pipe.__call__`` would."""
    refusal = batch_refusal(pipe, call)
    if refusal is not None:
        raise ValueError(f"call {sorted(call)} is not supported by the batched path: {refusal}")
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(pipe.__call__).parameters.items()
        if name in _CALL_KEYS
    }
    full = {**defaults, **call}
    pieces.check_call(pipe, full)
    if effective_steps(full) < 1:
        raise ValueError(
            f"`strength` * `num_inference_steps` must leave at least one denoising step, got "
            f"{full['strength']} * {full['num_inference_steps']}"
        )
    return full


def _conditioning(pipe, pieces: StepBatching, text: str, device) -> dict:
    """The family's encoding of one text (denoiser keyword -> rows), cached per text encoder.

    A negative prompt is encoded exactly like a prompt (same tokenizer padding, same encoder), and
    ``negative_prompt=None`` means ``""``, so one cache serves both.
    """
    cache = _PROMPT_CACHE.setdefault(pieces.text_owner(pipe), {})
    key = (text, str(device))
    if key not in cache:
        if len(cache) >= _PROMPT_CACHE_SIZE:
            cache.clear()
        cache[key] = pieces.encode_prompt(pipe, text, device)
    return cache[key]


def _cat_conditioning(parts: list[dict]) -> dict:
    """Conditionings (denoiser keyword -> rows) stacked row-wise, in order."""
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


class _Cohort:
    """Calls of one batch that start at the same step: one scheduler copy steps them all."""

    def __init__(self, pipe, pieces: StepBatching, cells: list[_Cell], device):
        call = cells[0].call
        self.cells = cells
        self.scheduler = copy.deepcopy(pipe.scheduler)
        self.timesteps = pieces.timesteps(pipe, self.scheduler, call["num_inference_steps"], call["strength"], device)
        self.grid_length = len(self.scheduler.timesteps)
        self.start = self.grid_length - len(self.timesteps)  # index into the shared grid
        generators = [cell.call["generator"] for cell in cells]
        self.step_kwargs = pipe.prepare_extra_step_kwargs(generators, call["eta"])

        guidance = [cell.call["guidance_scale"] for cell in cells]
        self.cfg = torch.tensor([g > 1 for g in guidance], device=device)  # diffusers' do_classifier_free_guidance
        cond = [_conditioning(pipe, pieces, cell.call["prompt"], device) for cell in cells]
        uncond = [_conditioning(pipe, pieces, cell.call["negative_prompt"] or "", device) for cell in cells]
        uncond = [embeds for embeds, cfg in zip(uncond, self.cfg) if cfg]
        # rows: unconditional (CFG calls only), conditional
        self.conditioning = _cat_conditioning(uncond + cond)
        self.latents: torch.Tensor | None = None
        self.guidance: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return len(next(iter(self.conditioning.values())))


@torch.no_grad()
def _run_batch(pipe, pieces: StepBatching, cells: list[_Cell], encoded: dict, pad_rows: int | None,
               on_step=None) -> list[BatchedOutput]:
    device = pipe._execution_device
    dtype = pieces.dtype(pipe)
    # 1. cohorts by start step (and eta, which the scheduler step takes)
    by_start: dict[tuple, list[_Cell]] = {}
    for cell in cells:
        by_start.setdefault((cell.t_start(pipe), cell.call["eta"]), []).append(cell)
    cohorts = [_Cohort(pipe, pieces, members, device) for members in by_start.values()]
    # 2. initial latents, drawing from each call's generator in the order of prepare_latents
    _start_latents(pipe, pieces, cohorts, encoded, device, dtype)
    # 3. denoising loop over the shared grid; a cohort joins at its start index
    _denoise(pipe, pieces, cohorts, device, pad_rows, on_step)
    # 4. decode in the order of `cells`, then the pipeline's safety checker and postprocessing
    return _finish(pipe, pieces, cohorts, cells, device, dtype)


def _start_latents(pipe, pieces: StepBatching, cohorts: list[_Cohort], encoded: dict, device, dtype) -> None:
    """Each cohort's noisy initial latents and guidance scales (init images encoded once each)."""
    for cohort in cohorts:
        latents = []
        for cell in cohort.cells:
            key = id(cell.call["image"])
            if key not in encoded:
                encoded[key] = pieces.encode_image(pipe, cell.image, device, dtype)
            latents.append(pieces.noisy_latents(pipe, encoded[key], cell.call["generator"], cohort.scheduler,
                                                cohort.timesteps[:1], device, dtype))
        cohort.latents = torch.cat(latents)
        guidance = [cell.call["guidance_scale"] for cell, cfg in zip(cohort.cells, cohort.cfg) if cfg]
        cohort.guidance = torch.tensor(guidance, device=device, dtype=cohort.latents.dtype).view(-1, 1, 1, 1)


def _denoise(pipe, pieces: StepBatching, cohorts: list[_Cohort], device, pad_rows: int | None, on_step) -> None:
    """The shared grid, one denoiser forward per step over every cohort that has joined."""
    for i in range(min(cohort.start for cohort in cohorts), cohorts[0].grid_length):
        active = [cohort for cohort in cohorts if i >= cohort.start]
        steps = [cohort.timesteps[i - cohort.start] for cohort in active]
        # 1. the rows: scaled latents (unconditional rows for CFG calls, then all), timesteps, conditioning
        inputs, timesteps = [], []
        for cohort, t in zip(active, steps):
            x = cohort.scheduler.scale_model_input(cohort.latents, t)
            inputs += [x[cohort.cfg], x]
            timesteps.append(t.to(device).expand(cohort.rows))
        sample, timestep = torch.cat(inputs), torch.cat(timesteps)
        conditioning = _cat_conditioning([cohort.conditioning for cohort in active])
        rows = len(sample)
        if pad_rows is not None and rows < pad_rows:
            sample, timestep = _pad(sample, pad_rows), _pad(timestep, pad_rows)
            conditioning = {name: _pad(tensor, pad_rows) for name, tensor in conditioning.items()}
        # 2. one forward, then guidance and a scheduler step per cohort
        noise_pred = pieces.predict_noise(pipe, sample, timestep, conditioning)[:rows]
        for cohort, t, pred in zip(active, steps, noise_pred.split([c.rows for c in active])):
            n_cfg = len(cohort.guidance)
            uncond, cond = pred[:n_cfg], pred[n_cfg:]
            guided = cond.clone()
            guided[cohort.cfg] = uncond + cohort.guidance * (cond[cohort.cfg] - uncond)
            cohort.latents = cohort.scheduler.step(
                guided, t, cohort.latents, **cohort.step_kwargs, return_dict=False
            )[0]
            if on_step is not None:
                for cell in cohort.cells:
                    on_step(cell.index, i - cohort.start + 1, len(cohort.timesteps))


def _finish(pipe, pieces: StepBatching, cohorts: list[_Cohort], cells: list[_Cell], device, dtype) -> list[BatchedOutput]:
    """Decode every cohort's latents, flag broken pictures, run the safety checker, postprocess."""
    order = [cell for cohort in cohorts for cell in cohort.cells]
    image = pieces.decode(pipe, torch.cat([cohort.latents for cohort in cohorts]))
    # as on the direct path: NaN anywhere, or all black after denormalising (-1..1 -> 0..1)
    broken = [is_nan_image(x / 2 + 0.5) for x in image]
    image = torch.nan_to_num(image, nan=-1.0)  # NaN -> black, as the direct path's nan_to_num(0)
    image, nsfw = pieces.safety_check(pipe, image, device, dtype)

    results = {}
    for j, cell in enumerate(order):
        flagged = None if nsfw is None else bool(nsfw[j])
        out = pipe.image_processor.postprocess(
            image[j : j + 1], output_type=cell.call["output_type"], do_denormalize=[not flagged]
        )
        results[cell.index] = BatchedOutput(image=out[0], nan=broken[j], nsfw=flagged)
    return [results[cell.index] for cell in cells]


def _pad(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Repeat the last row up to ``rows`` rows (padding whose outputs are discarded)."""
    return torch.cat([tensor, tensor[-1:].expand(rows - len(tensor), *tensor.shape[1:])])
