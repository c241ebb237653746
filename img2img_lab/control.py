"""ControlNet image-to-image helpers: control images (from a path, URL, sample or depth model).

The ControlNet pipeline itself comes from `load_pipeline(model, controlnet=...)` (one id/folder,
or a list for multi-ControlNet); `control_image` and `controlnet_conditioning_scale` are ordinary
call kwargs, so a sweep varies them like any other. This module turns what a spec or a notebook
holds (a sample name, a path, a URL, a list of them) into the PIL images the pipeline takes, and
makes depth control images with a transformers depth-estimation model, like the guide's
`get_depth_map`. Which call arguments hold such pictures is the model family's knob
(`families.controlnet`: `picture_args = ("control_image",)`); a sweep prepares them with
`prepare_control_image`.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ValidationError
from .images import load_image
from .loaders import hub_access
from .quiet import quiet_loading
from .torchutil import resolve_device

_ESTIMATORS: dict = {}


def prepare_control_image(src, size=None):
    """Load a control image (or a list of them, for multi-ControlNet) as RGB PIL.

    Args:
        src: anything `load_image` takes (URL, path, PIL, array, sample name), or a list/tuple of
            them (one per ControlNet).
        size: `(width, height)` to resize to, normally the init image's size (the ControlNet
            image-to-image pipelines need the control image and the init image to match), or an
            int for the longer side, or None to keep the size.

    Returns:
        A PIL image, or a list of PIL images when `src` is a list.

    Example:
        >>> control = prepare_control_image("https://.../control.png", size=init.size)
        >>> pipe(prompt, image=init, control_image=control, controlnet_conditioning_scale=0.8)
    """
    if isinstance(src, (list, tuple)):
        if not src:
            raise ValidationError("`control_image` list is empty; give one image per ControlNet")
        return [prepare_control_image(s, size) for s in src]
    if src is None:
        raise ValidationError("`control_image` is required for a ControlNet pipeline, got None")
    return load_image(src, size=tuple(size) if isinstance(size, list) else size)


def prepare_call(call: dict, size=None) -> dict:
    """A call dict whose `control_image` (name/path/URL or a list) is loaded and sized.

    What a sweep does for each ControlNet cell: pass the init image's size so both match.

    Args:
        call: pipeline call kwargs, possibly holding `control_image`.
        size: `(width, height)` of the init image.

    Returns:
        A new dict (the same values when there is no `control_image`).

    Example:
        >>> call = prepare_call({"prompt": "a cat", "control_image": "depth.png"}, size=init.size)
    """
    if call.get("control_image") is None:
        return dict(call)
    return {**call, "control_image": prepare_control_image(call["control_image"], size)}


def depth_estimator(model: str, device=None):
    """A transformers `pipeline("depth-estimation", model=model)`, loaded once per (model, device).

    Args:
        model: a hub id (e.g. "Intel/dpt-hybrid-midas", "Intel/dpt-large") or a local folder.
        device: "cpu", "cuda", ... (default: cuda if available, else cpu).

    Example:
        >>> estimator = depth_estimator("Intel/dpt-hybrid-midas")
    """
    if not isinstance(model, str) or not model:
        raise ValidationError(f"`model` must be a depth-estimation model id or folder, got {model!r}")
    device = resolve_device(device)
    key = (model, device)
    if key not in _ESTIMATORS:
        from transformers import pipeline

        hub = {} if Path(model).expanduser().exists() else hub_access(model, "model", filename="config.json")
        try:
            with quiet_loading():
                _ESTIMATORS[key] = pipeline("depth-estimation", model=model, device=device, **hub)
        except (OSError, ValueError, KeyError) as exc:
            raise ValidationError(
                f"`model` {model!r} could not be loaded as a depth-estimation model: {str(exc).splitlines()[0][:300]}"
            ) from None
    return _ESTIMATORS[key]


def depth_map(image, model: str, *, device=None, size=None):
    """A 3-channel depth control image of `image`, as the guide's `get_depth_map` makes it.

    The estimator's 8-bit depth picture is repeated over three channels (what a depth ControlNet
    such as `lllyasviel/control_v11f1p_sd15_depth` expects).

    Args:
        image: the picture (anything `load_image` takes).
        model: a depth-estimation model id or local folder (transformers `pipeline("depth-estimation")`).
        device: where the estimator runs (default: cuda if available, else cpu).
        size: optional `(width, height)` / int to resize the depth image to (default: the image's size).

    Returns:
        An RGB `PIL.Image`.

    Example:
        >>> init = lab.load_image("astronaut", size=(960, 958))
        >>> control = depth_map(init, "Intel/dpt-hybrid-midas")
        >>> pipe(prompt, image=init, control_image=control).images[0]
    """
    import numpy as np
    from PIL import Image

    picture = load_image(image)
    depth = depth_estimator(model, device)(picture)["depth"]
    array = np.asarray(depth)
    if array.ndim == 3:
        array = array[..., 0]
    out = Image.fromarray(np.repeat(array[:, :, None], 3, axis=2).astype(np.uint8))
    if out.size != picture.size:
        out = out.resize(picture.size, Image.Resampling.BICUBIC)
    return load_image(out, size=size) if size is not None else out
