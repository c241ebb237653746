"""Image metrics of a sweep, stored as columns of its table.

Against the init image (the one given to the pipeline, compared at the output's size):

- ``ssim``: structural similarity (scikit-image, RGB, ``data_range=255``); 1 = identical.
- ``psnr``: peak signal-to-noise ratio in dB (scikit-image, ``data_range=255``); ``inf`` = identical.
- ``mean_abs_change``: mean absolute pixel difference, in 8-bit levels (0..255); 0 = identical.
- ``lpips``: LPIPS (Zhang et al. 2018) with the real learned network of the `lpips` package
  (AlexNet by default). Needs `lpips`, which needs torchvision.
- ``lpips_clip``: the same formula (unit-normalised features, squared difference, spatial mean,
  summed over layers) on the patch tokens of a few layers of a CLIP vision tower, without LPIPS'
  learned per-channel weights. It ranks perceptual change too, but it is *not* LPIPS: its values
  are not comparable with published LPIPS numbers, hence its own column.

Against the row's ``prompt``:

- ``clip_score``: ``100 * max(cos(image_embedding, text_embedding), 0)``, as torchmetrics'
  ``CLIPScore``; higher = closer to the prompt. Empty or missing prompts give NaN.

Rows whose ``status`` is not ``"ok"`` get NaN.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .errors import ValidationError
from .store import SweepStore
from .torchutil import resolve_device
from .vocab import METRIC_NAMES, MODEL_METRICS, OK, PIXEL_METRICS, looks_like_path

DEFAULT_METRICS = PIXEL_METRICS
CLIP_MODEL_ENV = "IMG2IMG_LAB_CLIP_MODEL"
LPIPS_NETS = ("alex", "vgg", "squeeze")  # the nets of the `lpips` package


# ----------------------------------------------------------------------------------------------
# pixel metrics: two uint8 HxWx3 arrays of the same size -> float


def ssim(init: np.ndarray, output: np.ndarray) -> float:
    """Structural similarity of two RGB uint8 arrays (1.0 for identical images)."""
    from skimage.metrics import structural_similarity

    side = min(init.shape[:2])
    win_size = min(7, side if side % 2 else side - 1)
    if win_size < 3:
        return float("nan")
    return float(structural_similarity(init, output, channel_axis=-1, data_range=255, win_size=win_size))


def psnr(init: np.ndarray, output: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two RGB uint8 arrays (``inf`` for identical images)."""
    from skimage.metrics import peak_signal_noise_ratio

    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(init, output, data_range=255))


def mean_abs_change(init: np.ndarray, output: np.ndarray) -> float:
    """Mean absolute difference of two RGB uint8 arrays, in 8-bit levels (0..255)."""
    return float(np.mean(np.abs(init.astype(np.float64) - output.astype(np.float64))))


# name -> function(init, output); tests count calls by patching this dict
_PIXEL_FUNCTIONS = {"ssim": ssim, "psnr": psnr, "mean_abs_change": mean_abs_change}


# ----------------------------------------------------------------------------------------------
# LPIPS formula and model-based scorers


def lpips_distance(features_a, features_b, weights=None, *, channel_axis: int = 1):
    """The LPIPS distance (Zhang et al. 2018) between two stacks of feature maps.

    For each layer: unit-normalise the features over channels, take the squared difference,
    weight it per channel (``weights``; all ones when None), sum over channels, average over
    spatial positions; then sum over layers.

    Args:
        features_a, features_b: lists of tensors, one per layer, each ``(batch, ..., channels, ...)``.
        weights: optional list of per-channel non-negative weights (1-D tensors), one per layer.
        channel_axis: the channel dimension (1 for conv maps ``(B, C, H, W)``, -1 for tokens ``(B, N, C)``).

    Returns:
        A tensor of shape ``(batch,)``; 0 for identical features.

    Example:
        >>> lpips_distance([torch.randn(2, 8, 4, 4)], [torch.randn(2, 8, 4, 4)]).shape
        torch.Size([2])
    """
    total = None
    for layer, (a, b) in enumerate(zip(features_a, features_b, strict=True)):
        a = a / (a.norm(dim=channel_axis, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=channel_axis, keepdim=True) + 1e-10)
        diff = (a - b) ** 2
        if weights is not None:
            shape = [1] * diff.dim()
            shape[channel_axis] = -1
            diff = diff * weights[layer].reshape(shape)
        per_position = diff.sum(dim=channel_axis)
        term = per_position.reshape(per_position.shape[0], -1).mean(dim=1)
        total = term if total is None else total + term
    return total


def _device(device):
    import torch

    return torch.device(resolve_device(device))


@lru_cache(maxsize=4)
def _load_clip(name: str, argument: str, device: str):
    """CLIP model and processor from a local folder or a hub id, or a ValidationError naming ``argument``."""
    from transformers import CLIPModel, CLIPProcessor

    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise ValidationError(f"`{argument}`={name!r}: no such folder")
    source = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    try:
        model = CLIPModel.from_pretrained(source).to(device).eval()
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ValidationError(
            f"`{argument}`={name!r} cannot be loaded as a CLIP checkpoint (a local folder, or a hub id "
            f"already in the cache when offline): {exc}"
        ) from exc
    return model, processor


def _features(output):
    # transformers 5 returns a model output whose pooler_output is the projected embedding.
    return output.pooler_output if hasattr(output, "pooler_output") else output


class _ClipScorer:
    """``100 * max(cos(image, text), 0)`` with a CLIP model, batched."""

    def __init__(self, name: str, device):
        self.name, self.device = name, device
        self.model, self.processor = _load_clip(name, "clip_model", str(device))

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        import torch

        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            image_emb = _features(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)))
            text_emb = _features(
                self.model.get_text_features(
                    input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
                )
            )
            image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
            text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)
            score = 100 * (image_emb * text_emb).sum(dim=-1).clamp(min=0)
        return score.cpu().numpy().astype(np.float64)


class _ClipLpips:
    """The LPIPS formula on a CLIP vision tower's patch tokens (no learned weights): ``lpips_clip``."""

    column = "lpips_clip"

    def __init__(self, name: str, argument: str, device, max_layers: int = 5):
        self.name, self.device = name, device
        self.model, self.processor = _load_clip(name, argument, str(device))
        n = self.model.config.vision_config.num_hidden_layers
        # Evenly spaced from the first block to the last, like LPIPS' relu1..relu5 taps.
        self.layers = sorted({round(1 + i * (n - 1) / max(1, max_layers - 1)) for i in range(min(n, max_layers))})

    def _tokens(self, images):
        import torch

        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            hidden = self.model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        return [hidden[i][:, 1:, :].float() for i in self.layers]  # drop the class token

    def __call__(self, inits: list[Image.Image], outputs: list[Image.Image]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            d = lpips_distance(self._tokens(inits), self._tokens(outputs), channel_axis=-1)
        return d.cpu().numpy().astype(np.float64)


class _RealLpips:
    """The `lpips` package's learned LPIPS (``net`` = alex, vgg or squeeze): ``lpips``."""

    column = "lpips"

    def __init__(self, net: str, device):
        import lpips  # noqa: F401  (checked by the caller)

        self.name, self.device = net, device
        self.model = lpips.LPIPS(net=net, verbose=False).to(device).eval()

    def __call__(self, inits: list[Image.Image], outputs: list[Image.Image]) -> np.ndarray:
        import torch

        def tensor(im):  # [-1, 1], (1, 3, H, W), as lpips expects
            return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1

        out = []
        with torch.inference_mode():
            for a, b in zip(inits, outputs):  # sizes may differ between rows, so one pair at a time
                out.append(float(self.model(tensor(a).to(self.device), tensor(b).to(self.device)).reshape(-1)[0]))
        return np.asarray(out, dtype=np.float64)


def _lpips_available() -> bool:
    try:
        import lpips  # noqa: F401
    except Exception:  # ImportError, or torchvision missing underneath
        return False
    return True


def _lpips_scorer(metric: str, lpips_model, clip_model, device):
    """The LPIPS scorer for a requested ``lpips``/``lpips_clip`` metric, validated (models loaded)."""
    if metric == "lpips" and (lpips_model is None or lpips_model in LPIPS_NETS):
        if _lpips_available():
            return _RealLpips(lpips_model or "alex", device)
        if lpips_model in LPIPS_NETS:
            raise ValidationError(
                f"`lpips_model`={lpips_model!r} needs the `lpips` package (which needs torchvision); "
                f"or pass `lpips_model=` a CLIP checkpoint to compute `lpips_clip` instead"
            )
    if lpips_model is not None and lpips_model not in LPIPS_NETS:
        return _ClipLpips(lpips_model, "lpips_model", device)
    if clip_model is not None:
        return _ClipLpips(clip_model, "clip_model", device)
    raise ValidationError(
        f"metric {metric!r} needs a model: install `lpips` (needs torchvision) for `lpips`, or pass "
        f"`lpips_model=` (or `clip_model=`, or set ${CLIP_MODEL_ENV}) a CLIP checkpoint for `lpips_clip`"
    )


# ----------------------------------------------------------------------------------------------
# the public entry point


def add_metrics(
    result,
    metrics=DEFAULT_METRICS,
    *,
    clip_model: str | None = None,
    lpips_model: str | None = None,
    device=None,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
):
    """Compute image metrics for every successful row of a sweep and store them with it.

    Only missing values are computed (NaN cells of the requested columns, rows with
    ``status == "ok"``), unless ``overwrite=True``. The updated table replaces
    ``out_dir/results.parquet`` atomically. See the module docstring for each metric.

    Args:
        result: a `SweepResult`.
        metrics: names among ``"ssim"``, ``"psnr"``, ``"mean_abs_change"`` (no download needed),
            ``"clip_score"``, ``"lpips"`` and ``"lpips_clip"`` (need a model).
        clip_model: CLIP checkpoint (hub id or local folder) for ``clip_score``; defaults to
            ``$IMG2IMG_LAB_CLIP_MODEL``, e.g. ``"openai/clip-vit-large-patch14"``.
        lpips_model: for ``"lpips"``: None or ``"alex"``/``"vgg"``/``"squeeze"`` use the `lpips`
            package (column ``lpips``); a CLIP checkpoint computes ``lpips_clip`` instead. Without
            the `lpips` package and with no ``lpips_model``, ``clip_model`` is used (``lpips_clip``).
        device: torch device for model metrics; default CUDA, then MPS, then CPU.
        batch_size: images per model forward pass.
        overwrite: recompute values that are already present.
        progress: show a progress bar.

    Returns:
        A new `SweepResult` with the metric columns, and ``meta["metrics"]`` naming the models used.

    Example:
        >>> result = lab.add_metrics(result)                        # ssim, psnr, mean_abs_change
        >>> result = lab.add_metrics(result, ["clip_score"], clip_model="openai/clip-vit-base-patch32")
        >>> result.df[["strength", "ssim", "clip_score"]]
    """
    # 1. validate the metric names and arguments
    requested = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in requested if m not in METRIC_NAMES]
    if unknown or not requested:
        raise ValidationError(f"`metrics` must name metrics among {list(METRIC_NAMES)}, got {metrics!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValidationError(f"`batch_size` must be a positive int, got {batch_size!r}")
    clip_model = clip_model or os.environ.get(CLIP_MODEL_ENV) or None

    # 2. load the models now, so a missing one fails before anything is computed
    scorers = _model_scorers(requested, clip_model, lpips_model, device)
    columns = [m for m in requested if m in PIXEL_METRICS]
    columns += [c for c in scorers if c not in columns]

    # 3. which cells need a value
    df, need = _cells_to_compute(result.df, columns, overwrite)

    # 4. compute, a batch of rows at a time
    values = _compute(result, df, need, scorers, batch_size=batch_size, progress=progress)
    for column in columns:
        df[column] = values[column]

    # 5. store with the sweep, and which model computed each model column
    store = SweepStore(result.out_dir)
    store.write_table(df)
    used = {column: {"model": str(scorer.name)} for column, scorer in scorers.items()}
    metrics_meta = {**result.meta.get("metrics", {}), **used}
    meta = {**result.meta, **store.update_meta(metrics=metrics_meta)}
    return dataclasses.replace(result, df=df, meta=meta)


def _model_scorers(requested: list, clip_model, lpips_model, device) -> dict:
    """``{column: scorer}`` for the requested model metrics (``clip_score`` first, then the LPIPS
    column each LPIPS metric computes), their models loaded; a `ValidationError` for a missing one."""
    if not any(m in MODEL_METRICS for m in requested):
        return {}
    torch_device = _device(device)
    scorers = {}
    if "clip_score" in requested:
        if clip_model is None:
            raise ValidationError(
                f"metric 'clip_score' needs `clip_model` (a hub id or local CLIP folder) or ${CLIP_MODEL_ENV}"
            )
        scorers["clip_score"] = _ClipScorer(clip_model, torch_device)
    for metric in ("lpips", "lpips_clip"):
        if metric in requested:
            scorer = _lpips_scorer(metric, lpips_model, clip_model, torch_device)
            scorers[scorer.column] = scorer
    return scorers


def _cells_to_compute(df: pd.DataFrame, columns: list, overwrite: bool) -> tuple[pd.DataFrame, dict]:
    """A copy of ``df`` with each metric column as floats (NaN for rows that did not run "ok"),
    and per column the rows that need a value: the ok rows without one (all ok rows with
    ``overwrite``)."""
    df = df.copy()
    ok = (df["status"] == OK).to_numpy() if "status" in df.columns else np.ones(len(df), dtype=bool)
    need = {}
    for column in columns:
        if column not in df.columns:
            df[column] = np.nan
        df[column] = df[column].astype("float64")
        df.loc[~ok, column] = np.nan
        need[column] = ok & (df[column].isna().to_numpy() | overwrite)
    return df, need


def _compute(result, df: pd.DataFrame, need: dict, scorers: dict, *, batch_size: int, progress: bool) -> dict:
    """``{column: values}``: ``df``'s metric columns with the needed cells computed, reading the
    images a batch of rows at a time (warns about ok rows whose image file is gone)."""
    from tqdm.auto import tqdm

    values = {c: df[c].to_numpy(copy=True) for c in need}
    todo = np.flatnonzero(np.logical_or.reduce(list(need.values())))
    init_cache: dict = {}
    no_image = 0
    bar = tqdm(total=len(todo), desc="metrics", disable=not progress or len(todo) == 0)  # no empty bar
    for start in range(0, len(todo), batch_size):
        batch = []  # (position, init at the output's size or None, output)
        for pos in todo[start : start + batch_size]:
            row = df.iloc[pos]
            output = result.image(row)
            if output is None:
                no_image += 1
                continue
            batch.append((pos, _init_for(result, row, output.size, init_cache), output))
        for column, out in values.items():
            rows = [(p, i, o) for p, i, o in batch if need[column][p]]
            _score(column, rows, df, out, scorers.get(column))
        bar.update(len(todo[start : start + batch_size]))
    bar.close()
    if no_image:
        warnings.warn(f"{no_image} rows with status 'ok' have no image file in {result.out_dir}; their metrics stay NaN")
    return values


def _score(column: str, rows: list, df: pd.DataFrame, out: np.ndarray, scorer) -> None:
    """Write ``column``'s value for each ``(position, init, output)`` of ``rows`` into ``out``: a
    pixel metric pair by pair, ``clip_score`` for the rows with a prompt, an LPIPS column for the
    rows with an init image (a model column in one forward pass of ``scorer``)."""
    if column in PIXEL_METRICS:
        for pos, init, output in rows:
            if init is not None:
                out[pos] = _PIXEL_FUNCTIONS[column](np.asarray(init), np.asarray(output))
    elif column == "clip_score":
        rows = [(p, o, str(df["prompt"].iloc[p])) for p, _, o in rows if _has_prompt(df, p)]
        if rows:
            out[[p for p, _, _ in rows]] = scorer([o for _, o, _ in rows], [t for _, _, t in rows])
    else:  # an LPIPS column
        rows = [(p, i, o) for p, i, o in rows if i is not None]
        if rows:
            out[[p for p, _, _ in rows]] = scorer([i for _, i, _ in rows], [o for _, _, o in rows])


def _has_prompt(df: pd.DataFrame, pos: int) -> bool:
    if "prompt" not in df.columns:
        return False
    prompt = df["prompt"].iloc[pos]
    return isinstance(prompt, str) and prompt.strip() != ""


def _init_for(result, row, size, cache: dict) -> Image.Image | None:
    """The row's init image at ``size`` (LANCZOS when it differs), cached per file and size."""
    key = (row.get("init_image_path"), size)
    if key not in cache:
        init = result.init_image(row)
        if init is not None and init.size != size:
            init = init.resize(size, Image.Resampling.LANCZOS)
        cache[key] = init
    return cache[key]
