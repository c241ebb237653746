"""Prompt weighting with compel: SD 1.5, SDXL, the SDXL refiner; padding, cache, exact calls."""

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab import prompts
from img2img_lab.errors import ValidationError

STEPS = dict(strength=0.6, num_inference_steps=3, guidance_scale=5.0)


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=64)


def _gen():
    return torch.Generator("cpu").manual_seed(0)


@pytest.mark.equality
@pytest.mark.parametrize("model,pooled", [("tiny/sd15", False), ("tiny/sdxl", True), ("tiny/sdxl-refiner", True)])
def test_compel_embeds_give_the_same_image_as_passing_them_by_hand(model, pooled, init):
    pipe = lab.load_pipeline(model)
    kwargs = prompts.encode_weighted(pipe, "astronaut in a (jungle)1.5", "ugly, deformed")
    assert ("pooled_prompt_embeds" in kwargs) is pooled
    assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape
    ours = pipe(**prompts.weighted_call(pipe, {"prompt": "astronaut in a (jungle)1.5",
                                               "negative_prompt": "ugly, deformed", "image": init, **STEPS}),
                generator=_gen()).images[0]
    direct = pipe(image=init, **STEPS, **{k: v.clone() for k, v in kwargs.items()}, generator=_gen()).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(direct))


def test_weights_change_the_embeddings():
    pipe = lab.load_pipeline("tiny/sd15")
    plain = prompts.encode_weighted(pipe, "cat")["prompt_embeds"]
    weighted = prompts.encode_weighted(pipe, "(cat)1.5")["prompt_embeds"]
    assert plain.shape == weighted.shape
    assert not torch.equal(plain, weighted)


def test_long_positive_and_short_negative_are_padded_to_one_length():
    for model in ("tiny/sd15", "tiny/sdxl", "tiny/sdxl-refiner"):
        pipe = lab.load_pipeline(model)
        kwargs = prompts.encode_weighted(pipe, "a cat in a jungle, " * 20, "ugly")
        assert kwargs["prompt_embeds"].shape[1] > 77  # chunked, not truncated
        assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape


def test_each_prompt_is_encoded_once():
    pipe = lab.load_pipeline("tiny/sd15")
    prompts.clear_prompt_cache()
    before = dict(prompts.STATS)
    for _ in range(3):
        prompts.encode_weighted(pipe, "a (red)1.2 cat", "ugly")
    assert prompts.STATS["encoded"] - before["encoded"] == 2  # prompt and negative, once each
    assert prompts.STATS["cached"] - before["cached"] == 4
    # a related pipeline shares the text encoder, so it shares the cache too
    t2i = lab.related_pipeline(pipe, "text2img")
    prompts.encode_weighted(t2i, "a (red)1.2 cat", "ugly")
    assert prompts.STATS["encoded"] - before["encoded"] == 2


def test_sdxl_empty_negative_is_zeros_like_diffusers():
    pipe = lab.load_pipeline("tiny/sdxl")
    assert pipe.config.force_zeros_for_empty_prompt
    kwargs = prompts.encode_weighted(pipe, "a cat")
    assert not kwargs["negative_prompt_embeds"].any() and not kwargs["negative_pooled_prompt_embeds"].any()


def test_kandinsky_is_refused_with_a_clear_error():
    pipe = lab.load_pipeline("tiny/kandinsky22")
    with pytest.raises(ValidationError, match="compel"):
        prompts.encode_weighted(pipe, "a cat")


def test_bad_prompt_types():
    pipe = lab.load_pipeline("tiny/sd15")
    with pytest.raises(ValidationError, match="`prompt`"):
        prompts.encode_weighted(pipe, ["a", "b"])
    with pytest.raises(ValidationError, match="`prompt`"):
        prompts.weighted_call(pipe, {"strength": 0.5})
