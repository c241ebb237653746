"""Prompt weighting with compel: weighted prompts become `prompt_embeds` call kwargs.

`encode_weighted(pipe, "a (cat)1.5 in a jungle", "ugly")` returns the call kwargs diffusers takes
instead of `prompt` / `negative_prompt` (`prompt_embeds`, `negative_prompt_embeds`, and the
pooled pair for SDXL and the SDXL refiner). Each distinct prompt text is encoded once per text
encoder and kept in a cache, so a sweep over many cells with a few prompts encodes each prompt
once. The weighted prompt text itself is what the sweep records in its `prompt` column.

Supported: SD 1.x/2.x (and their ControlNet pipelines), SDXL (two text encoders, pooled output)
and the SDXL refiner (second text encoder only: compel's `CompelForSDXL` needs the first one, so
the refiner is encoded with a plain `Compel` on `text_encoder_2` with pooled output).
"""

from __future__ import annotations

import weakref

from .errors import ValidationError
from .families import family_of

# text encoder module -> {prompt text: (embeds, pooled or None)}; dies with the encoder
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_COMPELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# how many times a text was actually run through an encoder (tests read it)
STATS = {"encoded": 0, "cached": 0}


def pipeline_kind(pipe) -> str:
    """'sd', 'sdxl' or 'sdxl-refiner': which compel encoding `pipe` needs, as its model family
    says (`Family.prompt_encoding`).

    Raises:
        ValidationError: the pipeline has no CLIP text encoder compel can weight (e.g. Kandinsky).
    """
    kind = family_of(pipe).prompt_encoding(pipe)
    if kind is not None:
        return kind
    raise ValidationError(
        f"`compel` prompt weighting works with SD 1.x/2.x, SDXL and the SDXL refiner; "
        f"{type(pipe).__name__} has no CLIP text encoder to weight"
    )


def _compels(pipe) -> list:
    """One `Compel` per text encoder, built once per encoder (shared by `from_pipe` relatives)."""
    from compel import Compel, ReturnedEmbeddingsType

    kind = pipeline_kind(pipe)
    if kind == "sd":
        specs = [(pipe.tokenizer, pipe.text_encoder, ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED, False)]
    else:
        penultimate = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        specs = [(pipe.tokenizer_2, pipe.text_encoder_2, penultimate, True)]
        if kind == "sdxl":
            specs.insert(0, (pipe.tokenizer, pipe.text_encoder, penultimate, False))
    out = []
    for tokenizer, encoder, returned, pooled in specs:
        compel = _COMPELS.get(encoder)
        if compel is None or compel.conditioning_provider.tokenizer is not tokenizer:
            compel = Compel(tokenizer=tokenizer, text_encoder=encoder, returned_embeddings_type=returned,
                            requires_pooled=pooled, truncate_long_prompts=False)
            _COMPELS[encoder] = compel
        out.append(compel)
    return out


def _encode_one(compel, text: str, cache: bool):
    """(embeds, pooled or None) of one text through one compel, from the cache when possible."""
    encoder = compel.conditioning_provider.text_encoder
    store = _CACHE.setdefault(encoder, {})
    if cache and text in store:
        STATS["cached"] += 1
        return store[text]
    result = compel(text)
    embeds, pooled = result if compel.requires_pooled else (result, None)
    STATS["encoded"] += 1
    if cache:
        store[text] = (embeds, pooled)
    return embeds, pooled


def _pad(compels, tensors: list) -> list:
    """Pad conditioning tensors (all texts of one call) to one token length with compel's padding."""
    from compel import Compel

    if all(t.shape == tensors[0].shape for t in tensors):
        return tensors
    import torch

    # the empty-string conditioning of each encoder, side by side as the embeds are (SDXL)
    empty = torch.cat([c.conditioning_provider.empty_z for c in compels], dim=-1).to(tensors[0])
    return Compel._pad_conditioning_tensors_to_same_length(list(tensors), emptystring_conditioning=empty)


def _encode_text(compels, text: str, cache: bool):
    import torch

    parts = [_encode_one(c, text, cache) for c in compels]
    embeds = [e for e, _ in parts]
    if len(embeds) > 1:  # SDXL: both encoders' chunks to one length, then side by side
        longest = max(e.shape[1] for e in embeds)
        for i, (compel, e) in enumerate(zip(compels, embeds)):
            while e.shape[1] < longest:
                e = torch.cat([e, compel.conditioning_provider.empty_z.to(e)], dim=1)
            embeds[i] = e
    pooled = parts[-1][1]
    return torch.cat(embeds, dim=-1), pooled


def encode_weighted(pipe, prompt: str, negative_prompt: str | None = None, *, cache: bool = True) -> dict:
    """Encode a compel-weighted prompt into the call kwargs that replace `prompt`/`negative_prompt`.

    Compel syntax: `"a (cat)1.5 in a jungle"`, `"a cat+++"`, `"a cat--"`, `'("a cat", "oil").blend(1, 0.5)'`.
    Prompts longer than 77 tokens are encoded in chunks (not truncated); the positive and negative
    embeddings are padded to the same length (compel's `pad_conditioning_tensors_to_same_length`).

    Args:
        pipe: an SD 1.x/2.x, SDXL or SDXL refiner pipeline (text-to-image, image-to-image or
            ControlNet), e.g. from `load_pipeline`.
        prompt: the weighted prompt text.
        negative_prompt: the (weighted) negative prompt. None or "" on a pipeline with
            `force_zeros_for_empty_prompt` (SDXL base) gives zero negative embeddings, as diffusers
            does; otherwise "" is encoded.
        cache: reuse embeddings of texts already encoded by the same text encoder.

    Returns:
        A dict with `prompt_embeds` and `negative_prompt_embeds`, plus `pooled_prompt_embeds` and
        `negative_pooled_prompt_embeds` for SDXL and the refiner. Pass it as `pipe(**kwargs, ...)`
        without `prompt`/`negative_prompt`.

    Example:
        >>> pipe = lab.load_pipeline("tiny/sd15")
        >>> kwargs = encode_weighted(pipe, "astronaut in a (jungle)1.5", "ugly, deformed")
        >>> image = pipe(image=init, strength=0.6, **kwargs).images[0]
    """
    import torch

    if not isinstance(prompt, str):
        raise ValidationError(f"`prompt` must be a string for compel weighting, got {prompt!r}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValidationError(f"`negative_prompt` must be a string or None, got {negative_prompt!r}")
    compels = _compels(pipe)
    # 1. each text on its own (cached)
    embeds, pooled = _encode_text(compels, prompt, cache)
    zeros = not negative_prompt and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)) \
        and pipeline_kind(pipe) != "sd"
    if zeros:
        negative, negative_pooled = torch.zeros_like(embeds), (torch.zeros_like(pooled) if pooled is not None else None)
    else:
        negative, negative_pooled = _encode_text(compels, negative_prompt or "", cache)
    # 2. positive and negative to one length
    embeds, negative = _pad(compels, [embeds, negative])
    out = {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
    if pooled is not None:
        out["pooled_prompt_embeds"] = pooled
        out["negative_pooled_prompt_embeds"] = negative_pooled
    return out


def weighted_call(pipe, call: dict, *, cache: bool = True) -> dict:
    """A pipeline call dict with `prompt`/`negative_prompt` replaced by compel embeddings.

    This is what a sweep with `compel: true` does for each cell; the row keeps the prompt text.

    Args:
        pipe: the pipeline the call is for.
        call: call kwargs holding `prompt` (and optionally `negative_prompt`).
        cache: reuse embeddings of already encoded texts.

    Returns:
        A new dict; the input is not changed.

    Example:
        >>> call = weighted_call(pipe, {"prompt": "a (cat)1.5", "strength": 0.6, "image": init})
        >>> pipe(**call, generator=torch.Generator("cpu").manual_seed(0))
    """
    if "prompt" not in call:
        raise ValidationError(f"`compel` weighting needs a `prompt` in the call, got keys {sorted(call)}")
    rest = {k: v for k, v in call.items() if k not in ("prompt", "negative_prompt")}
    return {**rest, **encode_weighted(pipe, call["prompt"], call.get("negative_prompt"), cache=cache)}


def clear_prompt_cache() -> None:
    """Forget every cached prompt embedding."""
    _CACHE.clear()
