"""Init images: from a URL, a path, a PIL image, an array, or an offline sample picture by name."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ValidationError
from .vocab import is_url

# Offline sample pictures shipped with scikit-image (no network needed).
SAMPLES = {
    "astronaut": "astronaut",
    "cat": "chelsea",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
}

# A guard against decompression bombs: refuse images with more pixels than this.
MAX_PIXELS = 64_000_000


def sample_image(name: str) -> Image.Image:
    """An offline sample picture by name ("astronaut", "cat", "coffee", "rocket").

    Example:
        >>> lab.sample_image("cat").size
        (451, 300)
    """
    if name not in SAMPLES:
        raise ValidationError(f"`image` sample must be one of {sorted(SAMPLES)}, got {name!r}")
    from skimage import data

    return Image.fromarray(getattr(data, SAMPLES[name])()).convert("RGB")


def _from_array(array) -> Image.Image:
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC (torch layout)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise ValidationError(f"`image` array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValidationError("`image` array holds NaN or inf values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise ValidationError(f"`image` float array must be in [0, 1] (or [-1, 1]), got [{lo}, {hi}]")
        if lo < 0:
            arr = (arr + 1.0) / 2.0
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValidationError(f"`image` array dtype must be uint8, uint16 or float, got {arr.dtype}")
    return _to_rgb(Image.fromarray(arr))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clipping (PIL's convert clips).
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        warnings.warn("`image` has an alpha channel; it is dropped (as diffusers' load_image does)", stacklevel=3)
    return image.convert("RGB")


def _from_path(path: Path) -> Image.Image:
    if not path.exists():
        raise ValidationError(f"`image` file does not exist: {str(path)!r}")
    if path.is_dir():
        raise ValidationError(f"`image` must be an image file, got a folder: {str(path)!r}")
    if path.stat().st_size == 0:
        raise ValidationError(f"`image` file is empty (0 bytes): {str(path)!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ValidationError(
                        f"`image` {str(path)!r} is {w}x{h} = {w * h:,} pixels, over the limit of "
                        f"{MAX_PIXELS:,} (decompression-bomb guard); resize it first"
                    )
                im.load()
                image = ImageOps.exif_transpose(im)
                return _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValidationError(f"`image` {str(path)!r} is too large to open safely: {exc}") from None
    except UnidentifiedImageError:
        raise ValidationError(f"`image` {str(path)!r} is not an image file PIL can read") from None
    except OSError as exc:
        raise ValidationError(f"`image` {str(path)!r} could not be read: {exc}") from None


def load_image(src, size=None) -> Image.Image:
    """Load an init image as RGB from a URL, a path, a PIL image, an array, or a sample name.

    Args:
        src: an `http(s)://` URL (via `diffusers.utils.load_image`), a file path, a `PIL.Image`,
            a numpy array / torch tensor (HxWxC or CxHxW, uint8, uint16 or float in [0, 1]),
            or the name of an offline sample picture ("astronaut", "cat", "coffee", "rocket").
        size: optional; an int resizes so the longer side is `size`, a `(width, height)` pair
            resizes exactly (as `image.resize((w, h))` in the diffusers guide).

    Returns:
        An RGB `PIL.Image.Image`.

    Example:
        >>> init = lab.load_image("astronaut", size=512)
        >>> init = lab.load_image("https://huggingface.co/.../img2img-init.png")
    """
    # 1. get an RGB PIL image
    if isinstance(src, Image.Image):
        image = _to_rgb(src)
    elif isinstance(src, (str, os.PathLike)):
        text = os.fspath(src)
        if text in SAMPLES:
            image = sample_image(text)
        elif is_url(text):
            from diffusers.utils import load_image as diffusers_load_image

            try:
                image = diffusers_load_image(text)
            except Exception as exc:  # requests errors, offline, 404 ...
                raise ValidationError(f"`image` URL could not be fetched: {text!r} ({short_reason(exc)})") from None
        else:
            image = _from_path(Path(text).expanduser())
    elif hasattr(src, "detach") and hasattr(src, "cpu"):  # a torch tensor
        image = _from_array(src.detach().cpu().float().numpy() if src.is_floating_point() else src.cpu().numpy())
    elif isinstance(src, np.ndarray):
        image = _from_array(src)
    else:
        raise ValidationError(
            f"`image` must be a URL, path, PIL image, array or sample name, got {type(src).__name__}"
        )
    if image.width == 0 or image.height == 0:
        raise ValidationError(f"`image` has zero size: {image.size}")
    # 2. resize if asked
    if size is not None:
        image = image.resize(_target_size(image.size, size), Image.Resampling.LANCZOS)
    return image


def _target_size(current, size):
    w, h = current
    if isinstance(size, bool) or not isinstance(size, (int, tuple, list)):
        raise ValidationError(f"`size` must be an int or a (width, height) pair, got {size!r}")
    if isinstance(size, int):
        if size < 8:
            raise ValidationError(f"`size` must be at least 8, got {size}")
        scale = size / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size):
        raise ValidationError(f"`size` must be (width, height) with ints >= 8, got {size!r}")
    return int(size[0]), int(size[1])


def image_hash(image: Image.Image) -> str:
    """Content hash of an image's pixels (mode, size and bytes): equal pictures, equal hashes.

    Example:
        >>> lab.image_hash(lab.load_image("cat"))
        '5c1d...'
    """
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:16]


def short_reason(exc: BaseException) -> str:
    """Why a download failed, in a few words: "no network (the host can't be resolved)" rather
    than requests' whole nested repr; the exception's first line otherwise."""
    text = str(exc)
    if "NameResolutionError" in text or "Failed to resolve" in text or "Name or service not known" in text:
        return "no network: the host can't be resolved"
    if "Max retries exceeded" in text or "Connection refused" in text or "timed out" in text.lower():
        return f"no connection ({type(exc).__name__})"
    first = (text.splitlines() or [type(exc).__name__])[0]
    return first if len(first) <= 160 else first[:157] + "..."

