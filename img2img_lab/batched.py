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
from types import SimpleNamespace
from typing import Any, Callable

import torch

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
    """Whether :func:`run_batched` reproduces ``pipe(**call)`` exactly.

    Supported: a ``StableDiffusionImg2ImgPipeline`` (SD 1.x/2.x family, no IP-Adapter, no guidance
    embedding) with a scheduler in :data:`SUPPORTED_SCHEDULERS`, and a call with a single ``str``
    prompt, an optional ``str`` negative prompt, one PIL ``image``, one seeded ``torch.Generator``
    and only the keyword arguments in ``_CALL_KEYS``. Anything else (ControlNet, callbacks,
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
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    if type(pipe) is not StableDiffusionImg2ImgPipeline:
        return False
    unet_config = pipe.unet.config
    if (
        unet_config.time_cond_proj_dim is not None
        or unet_config.addition_embed_type is not None
        or unet_config.class_embed_type is not None
        or getattr(pipe.unet, "encoder_hid_proj", None) is not None
        or type(pipe.scheduler).__name__ not in SUPPORTED_SCHEDULERS
    ):
        return False
    return (
        set(call) <= _CALL_KEYS
        and isinstance(call.get("prompt"), str)
        and isinstance(call.get("negative_prompt"), (str, type(None)))
        and isinstance(call.get("image"), Image.Image)
        and isinstance(call.get("generator"), torch.Generator)
        and call.get("num_images_per_prompt", 1) == 1
        and call.get("output_type", "pil") in ("pil", "np", "pt")
    )


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

    # 1. validate each call and fill in the pipeline's defaults
    outputs: list[BatchedOutput | None] = [None] * len(calls)
    cells = []
    generators = set()
    for index, call in enumerate(calls):
        try:
            cell = _Cell(index, _full_call(pipe, call))
            if id(call["generator"]) in generators:
                raise ValueError(f"`generator` of call {index} is shared with an earlier call; give each call its own")
        except ValueError as error:
            outputs[index] = BatchedOutput(error=error)
            continue
        generators.add(id(call["generator"]))
        cells.append(cell)

    # 2. shared work: preprocess each init image once, group calls sharing a timestep grid
    images: dict[int, torch.Tensor] = {}
    groups: dict[tuple, list[_Cell]] = {}
    for cell in cells:
        key = id(cell.call["image"])
        if key not in images:
            images[key] = pipe.image_processor.preprocess(cell.call["image"])
        cell.image = images[key]
        groups.setdefault((cell.call["num_inference_steps"], *cell.image.shape[-2:]), []).append(cell)
    encoded: dict[int, Any] = {}  # id(image) -> VAE encoder output, filled on first use

    # 3. denoise batch by batch, halving on out-of-memory
    batch_size = max_batch_size
    for group in groups.values():
        pending = sorted(group, key=lambda cell: (cell.t_start(pipe), cell.index))
        while pending:
            batch = pending[:batch_size]
            states = [cell.call["generator"].get_state() for cell in batch]
            start = time.perf_counter()
            try:
                results = _run_batch(pipe, batch, encoded, 2 * max_batch_size if static_shapes else None, on_step)
            except Exception as error:  # noqa: BLE001 - recorded per call
                for cell, state in zip(batch, states):
                    cell.call["generator"].set_state(state)
                if _is_out_of_memory(error) and batch_size > 1:
                    _free_memory()
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
        steps, strength = self.call["num_inference_steps"], self.call["strength"]
        # the arithmetic of StableDiffusionImg2ImgPipeline.get_timesteps
        return steps - min(int(steps * strength), steps)


def _full_call(pipe, call: dict) -> dict:
    """The call with the pipeline's defaults filled in, checked as ``pipe.__call__`` would."""
    if not can_batch(pipe, call):
        raise ValueError(f"call {sorted(call)} is not supported by the batched path (see `can_batch`)")
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(pipe.__call__).parameters.items()
        if name in _CALL_KEYS
    }
    full = {**defaults, **call}
    pipe.check_inputs(full["prompt"], full["strength"], None, negative_prompt=full["negative_prompt"])
    if int(full["num_inference_steps"] * full["strength"]) < 1:
        raise ValueError(
            f"`strength` * `num_inference_steps` must leave at least one denoising step, got "
            f"{full['strength']} * {full['num_inference_steps']}"
        )
    return full


def _prompt_embeds(pipe, text: str, device) -> torch.Tensor:
    """``pipe.encode_prompt`` of one text, cached per text encoder.

    A negative prompt is encoded exactly like a prompt (same tokenizer padding, same encoder), and
    ``negative_prompt=None`` means ``""``, so one cache serves both.
    """
    cache = _PROMPT_CACHE.setdefault(pipe.text_encoder, {})
    key = (text, str(device))
    if key not in cache:
        if len(cache) >= _PROMPT_CACHE_SIZE:
            cache.clear()
        cache[key] = pipe.encode_prompt(text, device, 1, False)[0]
    return cache[key]


class _Cohort:
    """Calls of one batch that start at the same step: one scheduler copy steps them all."""

    def __init__(self, pipe, cells: list[_Cell], device):
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_timesteps

        call = cells[0].call
        self.cells = cells
        self.scheduler = copy.deepcopy(pipe.scheduler)
        retrieve_timesteps(self.scheduler, call["num_inference_steps"], device)
        self.grid_length = len(self.scheduler.timesteps)
        # the pipeline's own get_timesteps, applied to this cohort's scheduler copy
        self.timesteps, _ = type(pipe).get_timesteps(
            SimpleNamespace(scheduler=self.scheduler), call["num_inference_steps"], call["strength"], device
        )
        self.start = self.grid_length - len(self.timesteps)  # index into the shared grid
        generators = [cell.call["generator"] for cell in cells]
        self.step_kwargs = pipe.prepare_extra_step_kwargs(generators, call["eta"])

        guidance = [cell.call["guidance_scale"] for cell in cells]
        self.cfg = torch.tensor([g > 1 for g in guidance], device=device)  # diffusers' do_classifier_free_guidance
        cond = torch.cat([_prompt_embeds(pipe, cell.call["prompt"], device) for cell in cells])
        uncond = [_prompt_embeds(pipe, cell.call["negative_prompt"] or "", device) for cell in cells]
        uncond = [embeds for embeds, cfg in zip(uncond, self.cfg) if cfg]
        self.embeds = torch.cat(uncond + [cond])  # rows: unconditional (CFG calls only), conditional
        self.latents: torch.Tensor | None = None
        self.guidance: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return len(self.embeds)


@torch.no_grad()
def _run_batch(pipe, cells: list[_Cell], encoded: dict, pad_rows: int | None, on_step=None) -> list[BatchedOutput]:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents
    from diffusers.utils.torch_utils import randn_tensor

    device = pipe._execution_device
    dtype = pipe.text_encoder.dtype  # the dtype of prompt_embeds in a direct call

    # 1. cohorts by start step (and eta, which the scheduler step takes)
    by_start: dict[tuple, list[_Cell]] = {}
    for cell in cells:
        by_start.setdefault((cell.t_start(pipe), cell.call["eta"]), []).append(cell)
    cohorts = [_Cohort(pipe, members, device) for members in by_start.values()]

    # 2. initial latents, drawing from each call's generator in the order of prepare_latents
    for cohort in cohorts:
        latents = []
        for cell in cohort.cells:
            key = id(cell.call["image"])
            if key not in encoded:
                encoded[key] = pipe.vae.encode(cell.image.to(device=device, dtype=dtype))
            generator = cell.call["generator"]
            init = pipe.vae.config.scaling_factor * retrieve_latents(encoded[key], generator=generator)
            noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
            latents.append(cohort.scheduler.add_noise(init, noise, cohort.timesteps[:1]))
        cohort.latents = torch.cat(latents)
        guidance = [cell.call["guidance_scale"] for cell, cfg in zip(cohort.cells, cohort.cfg) if cfg]
        cohort.guidance = torch.tensor(guidance, device=device, dtype=cohort.latents.dtype).view(-1, 1, 1, 1)

    # 3. denoising loop over the shared grid; a cohort joins at its start index
    for i in range(min(cohort.start for cohort in cohorts), cohorts[0].grid_length):
        active = [cohort for cohort in cohorts if i >= cohort.start]
        steps = [cohort.timesteps[i - cohort.start] for cohort in active]
        inputs, timesteps = [], []
        for cohort, t in zip(active, steps):
            x = cohort.scheduler.scale_model_input(cohort.latents, t)
            inputs += [x[cohort.cfg], x]
            timesteps.append(t.to(device).expand(cohort.rows))
        sample, timestep = torch.cat(inputs), torch.cat(timesteps)
        embeds = torch.cat([cohort.embeds for cohort in active])
        rows = len(sample)
        if pad_rows is not None and rows < pad_rows:
            sample, timestep, embeds = (_pad(tensor, pad_rows) for tensor in (sample, timestep, embeds))
        noise_pred = pipe.unet(sample, timestep, encoder_hidden_states=embeds, return_dict=False)[0][:rows]

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

    # 4. decode in the order of `cells`, then the pipeline's safety checker and postprocessing
    order = [cell for cohort in cohorts for cell in cohort.cells]
    latents = torch.cat([cohort.latents for cohort in cohorts])
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    # as runner.is_nan_image on the direct path: NaN anywhere, or all black after denormalising
    broken = [bool(not torch.isfinite(x).all() or (x / 2 + 0.5).clamp(0, 1).max() <= 1 / 255) for x in image]
    image = torch.nan_to_num(image, nan=-1.0)  # NaN -> black, as the direct path's nan_to_num(0)
    image, nsfw = pipe.run_safety_checker(image, device, dtype)

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


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error)
    )


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
