"""Chains: each equals the hand-written diffusers chain with the same seeds; impossible chains fail early."""

import warnings

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab.chains import Chain, Stage, run_chain, same_vae, sweep_chain
from img2img_lab.errors import ValidationError

PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
FAST = dict(num_inference_steps=3, guidance_scale=5.0)
UP = dict(num_inference_steps=2, guidance_scale=1.0)  # no CFG: half the upscaler work
KANDINSKY = dict(num_inference_steps=2, prior_num_inference_steps=2, height=64, width=64)


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=64)


def _gen(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


def _eq(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


def _direct(name, cls="AutoPipelineForImage2Image", **components):
    import diffusers

    return getattr(diffusers, cls).from_pretrained(lab.tiny_model_path(name), **components)


@pytest.mark.equality
def test_three_img2img_stages_pass_latents_and_equal_the_hand_written_chain(init):
    stages = [("tiny/sd15", {"prompt": PROMPT, "strength": 0.8, **FAST}),
              ("tiny/sd15", {"prompt": "Astronaut in a jungle, charliebo artstyle", "strength": 0.5, **FAST}),
              ("tiny/sd15", {"prompt": "Astronaut in a jungle, pixelartstyle", "strength": 0.5, **FAST})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same VAE everywhere: no decode warning
        result = run_chain(stages, image=init, seed=7)
    assert [p["output_type"] for p in result.params] == ["latent", "latent", "pil"]
    assert [p["input"] for p in result.params] == ["image", "latent", "latent"]
    assert result.images[:2] == (None, None) and result.images[2] is result.image
    assert result.params[1]["strength"] == 0.5 and result.params[0]["seed"] == 7
    # by hand, as in the guide
    pipe = _direct("tiny/sd15")
    latents = pipe(stages[0][1]["prompt"], image=init, strength=0.8, **FAST, output_type="latent", generator=_gen(7)).images
    latents = pipe(stages[1][1]["prompt"], image=latents, strength=0.5, **FAST, output_type="latent", generator=_gen(7)).images
    final = pipe(stages[2][1]["prompt"], image=latents, strength=0.5, **FAST, generator=_gen(7)).images[0]
    assert _eq(result.image, final)


@pytest.mark.equality
def test_text2img_sd15_then_kandinsky_img2img_decodes_quietly_and_says_so_in_params(recwarn):
    from diffusers import KandinskyV22PriorPipeline

    from img2img_lab.tiny import kandinsky_prior_path

    stages = [("tiny/sd15", {"task": "text2img", "prompt": PROMPT, "height": 64, "width": 64, **FAST}),
              ("tiny/kandinsky22", {"prompt": PROMPT, "strength": 0.5, **KANDINSKY})]
    result = run_chain(stages, seed=1)  # the only possible hand-over: no warning, `input` tells
    assert not [w for w in recwarn if "stage" in str(w.message)], [str(w.message) for w in recwarn]
    assert result.params[0]["pipeline_class"] == "StableDiffusionPipeline"
    assert result.params[1]["pipeline_class"] == "KandinskyV22Img2ImgCombinedPipeline"
    assert result.images[0] is not None and result.params[1]["input"] == "image"
    # by hand
    t2i = _direct("tiny/sd15", "AutoPipelineForText2Image")
    picture = t2i(PROMPT, height=64, width=64, **FAST, generator=_gen(1)).images[0]
    prior = KandinskyV22PriorPipeline.from_pretrained(kandinsky_prior_path())
    kandinsky = _direct("tiny/kandinsky22", **{f"prior_{k}": v for k, v in prior.components.items()})
    final = kandinsky(PROMPT, image=picture, strength=0.5, **KANDINSKY, generator=_gen(1)).images[0]
    assert _eq(result.images[0], picture)
    assert _eq(result.image, final)


@pytest.mark.equality
def test_img2img_then_x2_latent_upscaler_then_x4_upscaler():
    small = lab.load_image("astronaut", size=64)
    stages = [("tiny/sd15", {"prompt": PROMPT, "strength": 0.8, **FAST}),
              ("tiny/sd-x2-latent-upscaler", {"prompt": PROMPT, **UP}),
              ("tiny/sd-x4-upscaler", {"prompt": PROMPT, **UP})]
    result = run_chain(stages, image=small, seed=0)
    assert [p["output_type"] for p in result.params] == ["latent", "pil", "pil"]
    assert [p["input"] for p in result.params][1:] == ["latent", "image"]
    assert result.image.size == (64 * 2 * 4, 64 * 2 * 4)
    # by hand (the x4 upscaler takes pixels, so the x2 output is decoded)
    sd = _direct("tiny/sd15")
    latents = sd(PROMPT, image=small, strength=0.8, **FAST, output_type="latent", generator=_gen()).images
    x2 = _direct("tiny/sd-x2-latent-upscaler", "DiffusionPipeline")
    mid = x2(PROMPT, image=latents, **UP, generator=_gen()).images[0]
    x4 = _direct("tiny/sd-x4-upscaler", "DiffusionPipeline")
    final = x4(PROMPT, image=mid, **UP, generator=_gen()).images[0]
    assert _eq(result.images[1], mid)
    assert _eq(result.image, final)


@pytest.mark.equality
def test_latents_false_decodes_every_stage_and_records_each_image(init):
    stages = [("tiny/sd15", {"prompt": "a", "strength": 0.6, **FAST}), ("tiny/sd15", {"prompt": "b", "strength": 0.5, **FAST})]
    result = run_chain(stages, image=init, latents=False)
    assert all(im is not None for im in result.images)
    pipe = lab.load_pipeline("tiny/sd15")
    first = pipe("a", image=init, strength=0.6, **FAST, generator=_gen()).images[0]
    assert _eq(result.images[0], first)
    assert _eq(result.image, pipe("b", image=first, strength=0.5, **FAST, generator=_gen()).images[0])
    assert result.row()["stage2.prompt"] == "b" and result.status == "ok"


def test_shared_vae_detection():
    sd15, x2 = lab.load_pipeline("tiny/sd15"), lab.load_pipeline("tiny/sd-x2-latent-upscaler")
    assert same_vae(sd15, x2)
    assert not same_vae(sd15, lab.load_pipeline("tiny/sdxl"))  # other scaling factor
    assert not same_vae(sd15, lab.load_pipeline("tiny/kandinsky22"))  # MoVQ
    assert same_vae(lab.load_pipeline("tiny/sdxl"), lab.load_pipeline("tiny/sdxl-refiner"))


@pytest.mark.parametrize(
    "stages,kwargs,match",
    [
        ([("tiny/sd15", {"prompt": "a"}), ("tiny/sd15", {"task": "text2img", "prompt": "b"})], {"image": "cat"},
         "only be the first stage"),
        ([("tiny/sd15", {"prompt": "a"}), ("tiny/kandinsky22", {"prompt": "b"})], {"image": "cat", "latents": True},
         "can't take stage 1's latents"),
        ([("tiny/sd15", {"prompt": "a", "output_type": "latent"}), ("tiny/sd-x4-upscaler", {"prompt": "b"})],
         {"image": "cat"}, "takes pixels"),
        ([("tiny/sd15", {"prompt": "a", "output_type": "latent"})], {"image": "cat"}, "last stage"),
        ([("tiny/sd16", {"prompt": "a"})], {"image": "cat"}, "not an embedded tiny model"),
        ([("tiny/sd15", {"prompt": "a"})], {}, "no `image` was given"),
        ([("tiny/sd15", {"prompt": "a", "generator": 1})], {"image": "cat"}, "generator"),
        ([("tiny/sd15", {"prompt": "a"}), ("tiny/sd15", {"prompt": "b", "image": "cat"})], {"image": "cat"}, "`image`"),
        ([("tiny/sd-x4-upscaler", {"task": "text2img", "prompt": "a"})], {}, "upscaler"),
        ([("tiny/sd15", {"task": "inpaint"})], {"image": "cat"}, "task"),
        ([], {}, "non-empty"),
    ],
)
def test_impossible_chains_fail_before_running(stages, kwargs, match, monkeypatch):
    def refuse(seed):  # each stage's generator is made just before its call: none may be
        raise AssertionError("a stage ran")

    monkeypatch.setattr("img2img_lab.chains.generator", refuse)
    with pytest.raises(ValidationError, match=match):
        run_chain(stages, **kwargs)


def test_stage_forms_and_overrides():
    chain = Chain([Stage("tiny/sd15", {"prompt": "a", "strength": 0.5}), ("tiny/sd15", {"prompt": "b"}),
                   {"model": "tiny/sd15", "kwargs": {"prompt": "c"}}], image="cat")
    changed = chain.with_params({"stage2.strength": 0.3, "seed": 4})
    assert changed.stages[1].kwargs == {"prompt": "b", "strength": 0.3} and changed.seed == 4
    assert chain.stages[1].kwargs == {"prompt": "b"}  # frozen original untouched
    with pytest.raises(ValidationError, match="stages 1..3"):
        chain.with_params({"stage4.strength": 0.3})
    with pytest.raises(ValidationError, match="stage<N>"):
        chain.with_params({"strength": 0.3})


@pytest.mark.equality
def test_sweep_over_stage_two_strength(tmp_path, init):
    chain = Chain([("tiny/sd15", {"prompt": "a", "strength": 0.6, **FAST}),
                   ("tiny/sd15", {"prompt": "b", "strength": 0.5, **FAST})], image=init)
    result = sweep_chain(chain, {"stage2.strength": [0.4, 0.8], "seed": [0, 1]}, tmp_path / "sweep", progress=False)
    df = result.df
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    assert sorted(df["stage2.strength"].unique()) == [0.4, 0.8]
    assert set(df["model"]) == {"tiny/sd15 -> tiny/sd15"} and set(df["prompt"]) == {"b"}
    assert "stage2.strength" in result.swept and "seed" in result.swept
    # each row's image is the chain run with that row's parameters
    row = df[(df["stage2.strength"] == 0.8) & (df["seed"] == 1)].iloc[0]
    expected = chain.with_params({"stage2.strength": 0.8, "seed": 1}).run().image
    assert _eq(result.image(row["key"]), expected)
    # reopened like any sweep; a re-run computes nothing
    again = lab.load_sweep(tmp_path / "sweep")
    assert set(again.df["key"]) == set(df["key"])
    rerun = sweep_chain(chain, {"stage2.strength": [0.4, 0.8], "seed": [0, 1]}, tmp_path / "sweep", progress=False)
    assert rerun.meta["runs"][-1]["computed"] == 0
    fig = lab.plot_grid(rerun, x="stage2.strength", y="seed")
    assert fig is not None


def test_sweep_axis_keys_are_validated(tmp_path):
    chain = Chain([("tiny/sd15", {"prompt": "a"})], image="cat")
    with pytest.raises(ValidationError, match="stage<N>"):
        sweep_chain(chain, {"strength": [0.3]}, tmp_path)
    with pytest.raises(ValidationError, match="non-empty"):
        sweep_chain(chain, {}, tmp_path)


def test_run_chain_shows_one_bar_over_its_stages_and_no_pipeline_bars(monkeypatch, capfd):
    import tqdm.auto

    bars = []

    class Recorder:
        def __init__(self, total=None, disable=False, **kwargs):
            self.total, self.n, self.disable, self.postfixes = total, 0, disable, []
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def set_postfix_str(self, text, refresh=True):
            self.postfixes.append(text)

        def close(self):
            pass

    pipe = lab.load_pipeline("tiny/sd15")  # first: huggingface_hub subclasses tqdm when it is imported
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    before = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    stages = [("tiny/sd15", {"prompt": "a", "strength": 0.6, **FAST}), ("tiny/sd15", {"prompt": "b", "strength": 0.5, **FAST})]
    result = run_chain(stages, image="astronaut")
    assert result.status == "ok"
    (bar,) = bars
    assert (bar.total, bar.n, bar.disable) == (2, 2, False)
    assert bar.postfixes == ["tiny/sd15", "tiny/sd15"]
    assert "it/s]" not in capfd.readouterr().err  # diffusers' per-call bars stayed off
    assert dict(getattr(pipe, "_progress_bar_config", {}) or {}) == before  # and come back after
    run_chain(stages, image="astronaut", progress=False)
    assert bars[-1].disable


def test_a_stage_size_resizes_the_input_of_a_pipeline_without_height(tmp_path):
    chain = lab.Chain([("tiny/sd15", {"prompt": "a", "strength": 0.5, "num_inference_steps": 2, "width": 64})],
                      image="astronaut")
    result = lab.sweep_chain(chain, {"stage1.height": [64, 96]}, tmp_path, progress=False)
    assert [result.image(i).size for i in range(2)] == [(64, 64), (64, 96)]
    assert result.df["stage1.height"].tolist() == [64, 96] and result.df["height"].tolist() == [64, 96]


def test_a_stage_size_on_latents_handed_over_is_refused_before_any_stage_runs():
    fast = {"prompt": "a", "num_inference_steps": 2, "strength": 0.5}
    with pytest.raises(ValidationError, match=r"^`height` of stage 2 \('tiny/sd15'\) can't be applied: "
                                              r"StableDiffusionImg2ImgPipeline takes no height"):
        lab.run_chain([("tiny/sd15", {**fast, "height": 64, "width": 64}), ("tiny/sd15", {**fast, "height": 96})],
                      image="astronaut", latents=True)


@pytest.mark.parametrize("seed", [-1, 2**64, True])
def test_chain_seeds_are_checked_like_a_specs(seed):
    with pytest.raises(ValidationError, match=r"`seed` must be an integer"):  # the spec's own check
        lab.Chain([("tiny/sd15", {"prompt": "a"})], image="astronaut", seed=seed)
    with pytest.raises(ValidationError, match=r"`seed` must be an integer in \[0, 2\*\*64 - 1\]"):
        lab.run_chain([("tiny/sd15", {"prompt": "a", "seed": seed})], image="astronaut")
