"""The few torch-level facts the package agrees on: devices, seeds, broken images, memory.

One definition each of: which device to run on (`resolve_device`), the generator every call is
seeded with (`generator`), what counts as a NaN image (`is_nan_image`), what counts as running
out of memory (`is_out_of_memory`) and how memory is given back (`free_memory`). torch is
imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from .errors import ValidationError

# The darkest picture that still counts as a picture: an all-black decode (<= 1/255 everywhere)
# is what an fp16 VAE overflow gives.
BLACK_LEVEL = 1.0 / 255.0
DEVICE_KINDS = ("cpu", "cuda", "mps", "xpu")


def _mps_available(torch) -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device=None) -> str:
    """The device a pipeline will run on: the one asked for, or cuda / mps / cpu in that order.

    Args:
        device: None or "auto" (the best available), or "cpu", "cuda", "cuda:N", "mps", "xpu"
            (a `torch.device` is taken by its text).

    Returns:
        The device as text, e.g. "cuda" or "cpu".

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available(torch):
            return "mps"
        return "cpu"
    text = str(device)
    kind = text.split(":")[0]
    if kind not in DEVICE_KINDS:
        raise ValidationError(f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValidationError(f"`device` is {device!r} but no CUDA GPU is available here (use 'cpu' or 'auto')")
    if kind == "mps" and not _mps_available(torch):
        raise ValidationError(f"`device` is {device!r} but MPS is not available here")
    return text


def generator(seed: int):
    """The generator of every pipeline call: `torch.Generator("cpu").manual_seed(seed)`.

    A CPU generator gives the same draws on every device (diffusers moves the noise to the GPU),
    so a seed means the same picture on a laptop and on a GPU server.
    """
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


def is_nan_image(image) -> bool:
    """Whether a decoded picture is broken: NaN or inf anywhere, or all black.

    Args:
        image: pixel values on a 0..1 scale, a numpy array or a torch tensor (any shape).
    """
    if hasattr(image, "detach"):  # a torch tensor
        import torch

        if not bool(torch.isfinite(image).all()):
            return True
        return float(image.max()) <= BLACK_LEVEL
    import numpy as np

    array = np.asarray(image)
    if not np.isfinite(array).all():
        return True
    return float(array.max()) <= BLACK_LEVEL


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception means the accelerator (or the host) ran out of memory."""
    import torch

    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def free_memory() -> None:
    """Give cached accelerator memory back (after an out-of-memory, before retrying smaller)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
