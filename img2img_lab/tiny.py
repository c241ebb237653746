"""Offline random-weight smoke models, built with the real diffusers/transformers classes.

Each tiny model has the same layout as its full-size checkpoint (same pipeline class, same
component classes, same scheduler configuration, the same VAE scale factor), only with a handful
of channels and random weights. Pictures are noise; every code path is real. A model is built
deterministically on first use, saved with ``save_pretrained(..., safe_serialization=True)`` into
``$IMG2IMG_LAB_HOME/tiny/<x>-v<VERSION>`` (default ``~/.cache/img2img_lab``), and then opened by
the ordinary ``from_pretrained`` path, exactly like a downloaded checkpoint.

This module keeps the names, the cache layout and the building protocol; each model family builds
its own twins (``families/<family>.py``, from the shared parts in ``families/tiny_parts.py``).

How each folder loads (all in float32 on CPU in about a second per image-to-image call):

- ``tiny/sd15``, ``tiny/sdxl``, ``tiny/sdxl-refiner``:
  ``AutoPipelineForImage2Image.from_pretrained(path)``.
- ``tiny/kandinsky22``: the folder is the decoder (``KandinskyV22Pipeline`` layout) and its prior
  lies in the ``prior/`` subfolder (``KandinskyV22PriorPipeline`` layout), see
  :func:`kandinsky_prior_path`. The combined image-to-image pipeline needs the prior's components
  passed in with a ``prior_`` prefix, because locally there is no model card naming the prior::

      prior = KandinskyV22PriorPipeline.from_pretrained(kandinsky_prior_path())
      pipe = AutoPipelineForImage2Image.from_pretrained(
          tiny_model_path("tiny/kandinsky22"),
          **{f"prior_{k}": v for k, v in prior.components.items()})

- ``tiny/controlnet-sd15``: a ``ControlNetModel`` folder for ``tiny/sd15``::

      controlnet = ControlNetModel.from_pretrained(tiny_model_path("tiny/controlnet-sd15"))
      pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
          tiny_model_path("tiny/sd15"), controlnet=controlnet)

- ``tiny/sd15-lora``, ``tiny/sdxl-lora``, ``tiny/flux-lora``: a LoRA for ``tiny/sd15`` (UNet and
  text encoder), ``tiny/sdxl`` (UNet and both text encoders) or ``tiny/flux`` (transformer), one
  ``pytorch_lora_weights.safetensors`` written by the pipeline class's ``save_lora_weights``::

      pipe.load_lora_weights(tiny_model_path("tiny/sd15-lora"), adapter_name="sd15_lora")
      pipe.set_adapters(["sd15_lora"], [0.8])

- ``tiny/sd15-ip-adapter``, ``tiny/sdxl-ip-adapter``: an IP-Adapter for ``tiny/sd15`` or
  ``tiny/sdxl``, ``ip_adapter.safetensors`` with its CLIP image encoder in ``image_encoder/``
  (diffusers makes the image processor when the pipeline has none)::

      pipe.load_ip_adapter(tiny_model_path("tiny/sd15-ip-adapter"), subfolder="",
                           weight_name="ip_adapter.safetensors", image_encoder_folder="image_encoder")
      pipe.set_ip_adapter_scale(0.6)
      pipe(..., ip_adapter_image=picture)

- ``tiny/sd-x2-latent-upscaler`` (``StableDiffusionLatentUpscalePipeline``, shares the VAE of
  ``tiny/sd15`` so an sd15 ``output_type="latent"`` result can feed it) and
  ``tiny/sd-x4-upscaler`` (``StableDiffusionUpscalePipeline``): ``DiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ValidationError
from .families import family_of_tiny, kandinsky22, tiny_models
from .quiet import quiet_loading
from .vocab import TINY_SIZE  # noqa: F401 - re-exported: the size a tiny model runs at without height/width

# Bump when any tiny model's layout or weights change, so every cache rebuilds.
VERSION = 2  # 2: the tiny ControlNet's zero-initialised output convs are filled (it conditions)

# name -> description, of every family's tiny twins (each family module builds its own).
TINY_MODELS = tiny_models()


def tiny_model_path(name: str) -> Path:
    """Return the folder of tiny model ``name``, building it on first use.

    The folder holds an ordinary diffusers checkpoint (``model_index.json`` or ``config.json`` and
    ``*.safetensors``). Building is deterministic, atomic (a temporary folder beside the target,
    then ``os.replace``) and guarded by a file lock, so concurrent processes are safe.

    Args:
        name: one of :data:`TINY_MODELS`, e.g. ``"tiny/sd15"``.

    Returns:
        ``$IMG2IMG_LAB_HOME/tiny/<x>-v<VERSION>`` as a :class:`pathlib.Path`.

    Raises:
        ValidationError: ``name`` is not a tiny model.

    Example:
        >>> from diffusers import AutoPipelineForImage2Image
        >>> pipe = AutoPipelineForImage2Image.from_pretrained(tiny_model_path("tiny/sd15"))
    """
    if not isinstance(name, str) or name not in TINY_MODELS:
        raise ValidationError(f"`name` must be one of {sorted(TINY_MODELS)}, got {name!r}")
    target = _cache_root() / "tiny" / f"{name.removeprefix('tiny/')}-v{VERSION}"
    if (target / _MARKER).is_file():
        return target

    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _MARKER).is_file():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            with quiet_loading():  # no "Writing model shards" bars: building is an implementation detail
                family_of_tiny(name).build_tiny(name, tmp)
            (tmp / _MARKER).write_text(json.dumps({"name": name, "version": VERSION}) + "\n")
            if target.exists():  # an incomplete leftover without the marker
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def kandinsky_prior_path() -> Path:
    """Return the folder of the prior that goes with ``tiny/kandinsky22`` (its ``prior/`` subfolder).

    It is a ``KandinskyV22PriorPipeline`` checkpoint; pass its components to the combined pipeline
    with a ``prior_`` prefix.

    Example:
        >>> from diffusers import AutoPipelineForImage2Image, KandinskyV22PriorPipeline
        >>> prior = KandinskyV22PriorPipeline.from_pretrained(kandinsky_prior_path())
        >>> pipe = AutoPipelineForImage2Image.from_pretrained(
        ...     tiny_model_path("tiny/kandinsky22"),
        ...     **{f"prior_{k}": v for k, v in prior.components.items()})
    """
    return tiny_model_path("tiny/kandinsky22") / kandinsky22.PRIOR_SUBFOLDER


# Written last into a built folder: a folder without it is incomplete.
_MARKER = "tiny_model.json"


def _cache_root() -> Path:
    return Path(os.environ.get("IMG2IMG_LAB_HOME") or Path.home() / ".cache" / "img2img_lab").expanduser()
