"""Quiet third-party noise: messages that tell the user nothing, silenced around our own calls only.

diffusers' and transformers' per-call notices, their loading/saving progress bars, and a few
warnings they raise at themselves; plus `user_stacklevel`, which points a warning of ours at the
user's own line. Imports nothing of the package; diffusers/transformers inside the functions.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path


# diffusers'/transformers' log lines during a pipeline call: the per-call prompt truncation
# notices of diffusers' encode_prompt and of its untruncated tokenizer call (the sweep says it
# once itself, see runner.warn_long_prompts), and the SDXL pipelines' own VAE upcast
# `vae.to(torch.float32)` tripping ModelMixin.to's "should be kept in float32" advice.
CALL_LOG_NOISE = (
    re.compile(r"^The following part of your input was truncated because CLIP can only handle"),
    re.compile(r"^Token indices sequence length is longer than the specified maximum sequence length"),
    # T5's per-call notice where a call's `max_sequence_length` cuts a prompt (recorded in the row;
    # tiny twins run at 32 tokens, where the guide's prompts are longer)
    re.compile(r"^The following part of your input was truncated because `max_sequence_length` is set to"),
    re.compile(r"^There are modules in \w+ that should be kept in float32"),
    # DeepFloyd IF, per prompt, where ftfy/bs4 are not installed (a direct call cleans no caption either)
    re.compile(r"^Setting `clean_caption=True` requires the"),
    re.compile(r"^Setting `clean_caption` to False"),
    # Qwen-Image's default true_cfg_scale=4.0 without a negative prompt, and FLUX.2 [klein]'s default
    # guidance_scale on its step-distilled checkpoints: said on every call, on the pipelines' own
    # defaults (the family notes and knobs say it once; a row records what ran)
    re.compile(r"^true_cfg_scale is passed as .*, but classifier-free guidance is not enabled since no negative_prompt"),
    re.compile(r"^Guidance scale .* is ignored for step-wise distilled models"),
)
# warnings raised inside diffusers by diffusers' own calls (message regex, category)
CALL_WARNING_NOISE = (
    # KandinskyV22*CombinedPipeline always hands its default callback_steps=1 to its decoder
    (r"`callback_steps` is deprecated", FutureWarning),
    # numpy 2 on diffusers' own np.array(tensor ...) in some schedulers' set_timesteps
    (r"__array__ implementation doesn't accept a copy keyword", DeprecationWarning),
)
# loading several LoRAs into one pipeline (adapters.AdapterSwitch), which is what a LoRA axis does:
# diffusers says per load that a LoRA without text-encoder layers has none, and peft that a model
# already holding an adapter gets another one
ADAPTER_LOG_NOISE = (
    re.compile(r"^No LoRA keys associated to \w+ found with the prefix="),
    re.compile(r"^There are modules in \w+ that should be kept in float32"),  # load_ip_adapter's own .to()
    # transformers' loading report of a text encoder given a second LoRA: the first one's weights,
    # which that file doesn't hold, listed as "MISSING"; and diffusers' line before a load error
    # (the sweep raises its own, naming the LoRA and the model)
    re.compile(r"^(\x1b\[[0-9;]*m)?\w+ LOAD REPORT"),
    re.compile(r"^Loading \w+ was unsuccessful with the following error"),
)
ADAPTER_WARNING_NOISE = (
    (r"Already found a `peft_config` attribute in the model", UserWarning),
)
LOAD_WARNING_NOISE = (
    # diffusers' hub downloads pass an argument huggingface_hub no longer uses
    (r"The `local_dir_use_symlinks` argument is deprecated", UserWarning),
)


class _DropMessages(logging.Filter):
    """Drops log records whose message matches one of `patterns`."""

    def __init__(self, patterns):
        super().__init__()
        self.patterns = patterns

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


@contextmanager
def quiet_third_party(logs=(), warnings_=(), progress_bars: bool = False):
    """Silence the given third-party messages while inside, and put everything back afterwards.

    Args:
        logs: compiled regexes of diffusers/transformers log messages to drop (a `logging.Filter`
            on those libraries' handlers, removed on exit).
        warnings_: `(message regex, category)` pairs ignored (`warnings.catch_warnings`).
        progress_bars: turn off diffusers' and transformers' own progress bars ("Loading pipeline
            components", "Loading weights", "Writing model shards"); huggingface_hub's download
            bars stay as they were. The previous settings are restored on exit.

    Example:
        >>> with quiet_third_party(progress_bars=True):
        ...     pipe = AutoPipelineForImage2Image.from_pretrained(folder)
    """
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub import utils as hub_utils

    handlers = set()
    if logs:
        for name in ("diffusers", "transformers", ""):  # the libraries' handlers, and root's if they propagate
            handlers.update(logging.getLogger(name).handlers)
    drop = _DropMessages(logs)
    for handler in handlers:
        handler.addFilter(drop)
    bars = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
            hub_utils.are_progress_bars_disabled())
    if progress_bars:
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()  # this one turns the hub's off too:
        if not bars[2]:
            hub_utils.enable_progress_bars()  # downloads keep their bars
    try:
        with warnings.catch_warnings():
            for message, category in warnings_:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)
        if progress_bars:
            if bars[0]:
                diffusers_logging.enable_progress_bar()
            if bars[1]:
                transformers_logging.enable_progress_bar()
            if bars[2]:
                hub_utils.disable_progress_bars()
            else:
                hub_utils.enable_progress_bars()


def quiet_call():
    """Around a pipeline call: diffusers' own per-call noise off (see CALL_LOG_NOISE)."""
    return quiet_third_party(logs=CALL_LOG_NOISE, warnings_=CALL_WARNING_NOISE)


def quiet_loading():
    """Around from_pretrained/save_pretrained: the libraries' own progress bars off."""
    return quiet_third_party(warnings_=LOAD_WARNING_NOISE, progress_bars=True)


def quiet_adapters():
    """Around load_lora_weights/load_ip_adapter: the per-load notices of several adapters off."""
    return quiet_third_party(logs=ADAPTER_LOG_NOISE, warnings_=ADAPTER_WARNING_NOISE + LOAD_WARNING_NOISE,
                             progress_bars=True)


def user_stacklevel() -> int:
    """The `stacklevel` that points a warning at the first frame outside this package (the
    user's cell or script), however deep inside the package it is raised."""
    import inspect

    package = str(Path(__file__).resolve().parent) + os.sep
    level, frame = 1, inspect.currentframe().f_back  # the caller of user_stacklevel: level 1
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1  # (the outermost frame if all are ours: `python -m`)
    del frame
    return level


class _NoTorchvisionNotice(logging.Filter):
    """transformers announces its PIL fallback for every image processor when torchvision is absent
    (as on CPU-only installs, where torchvision would pull a CUDA torch); the fallback is exact."""

    def filter(self, record):
        return "requires torchvision (not installed)" not in record.getMessage()


def drop_torchvision_notice() -> None:
    """Silence transformers' torchvision notice for the whole session (`import img2img_lab` does it)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _NoTorchvisionNotice) for f in logger.filters):
        logger.addFilter(_NoTorchvisionNotice())
