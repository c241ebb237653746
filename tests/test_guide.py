"""Every experiment of the diffusers image-to-image guide, on the tiny models.

The guide: https://huggingface.co/docs/diffusers/using-diffusers/img2img.

Each library call is compared with the direct diffusers call with the same arguments and seeds
(`torch.Generator("cpu").manual_seed(seed)`): the pictures must be equal. Sweep cells go through
`runner.run_cell`, the path `run_sweep` takes for one cell.
"""

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab import chains, control, prompts, runner
from img2img_lab.errors import ValidationError

PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
CAT_PROMPT = "cat wizard, gandalf, lord of the rings, detailed, fantasy, cute, adorable, Pixar, Disney, 8k"
QUALITY_NEGATIVE = "ugly, deformed, disfigured, poor details, bad anatomy"
FAST = dict(num_inference_steps=4)
# Kandinsky's default strength is 0.3: 4 steps -> int(4 * 0.3) = 1 denoising step
KANDINSKY = dict(num_inference_steps=4, prior_num_inference_steps=2, height=64, width=64)


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=64)


@pytest.fixture(scope="module")
def direct_sd15():
    from diffusers import AutoPipelineForImage2Image

    return AutoPipelineForImage2Image.from_pretrained(lab.tiny_model_path("tiny/sd15"))


@pytest.fixture(scope="module")
def direct_refiner():
    from diffusers import AutoPipelineForImage2Image

    return AutoPipelineForImage2Image.from_pretrained(lab.tiny_model_path("tiny/sdxl-refiner"))


@pytest.fixture(scope="module")
def direct_kandinsky():
    from diffusers import AutoPipelineForImage2Image, KandinskyV22PriorPipeline

    from img2img_lab.tiny import kandinsky_prior_path

    prior = KandinskyV22PriorPipeline.from_pretrained(kandinsky_prior_path())
    return AutoPipelineForImage2Image.from_pretrained(
        lab.tiny_model_path("tiny/kandinsky22"), **{f"prior_{k}": v for k, v in prior.components.items()})


def _gen(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


def _eq(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


def _cell(pipe, call, seed=0):
    image, status = runner.run_cell(pipe, call, seed)
    assert status == "ok"
    return image


# 1. quickstart: Kandinsky 2.2 with its prior --------------------------------------------------


@pytest.mark.equality
def test_1_quickstart_kandinsky(direct_kandinsky):
    from diffusers.utils import make_image_grid

    cat = lab.load_image("cat", size=(64, 64))
    pipe = lab.load_pipeline("tiny/kandinsky22")
    assert type(pipe).__name__ == "KandinskyV22Img2ImgCombinedPipeline"
    ours = _cell(pipe, dict(prompt=CAT_PROMPT, image=cat, **KANDINSKY))
    direct = direct_kandinsky(prompt=CAT_PROMPT, image=cat, **KANDINSKY, generator=_gen()).images[0]
    assert _eq(ours, direct)
    assert make_image_grid([cat, ours], rows=1, cols=2).size == (128, 64)


@pytest.mark.equality
def test_1_kandinsky_knobs_are_sweepable(direct_kandinsky):
    cat = lab.load_image("cat", size=(64, 64))
    pipe = lab.load_pipeline("tiny/kandinsky22")
    base = dict(prompt=CAT_PROMPT, image=cat, strength=0.6, num_inference_steps=2)
    pictures = {}
    for knobs in [dict(prior_guidance_scale=4.0, prior_num_inference_steps=2),
                  dict(prior_guidance_scale=1.0, prior_num_inference_steps=2),
                  dict(prior_guidance_scale=4.0, prior_num_inference_steps=3)]:
        call = {**base, **knobs, "height": 64, "width": 64}
        ours = _cell(pipe, call)
        assert _eq(ours, direct_kandinsky(**call, generator=_gen()).images[0])
        pictures[tuple(knobs.values())] = np.asarray(ours)
    assert len({p.tobytes() for p in pictures.values()}) == 3
    call = {**base, "height": 64, "width": 128, "prior_num_inference_steps": 2}
    wide = _cell(pipe, call)
    assert _eq(wide, direct_kandinsky(**call, generator=_gen()).images[0])
    # diffusers 0.42's KandinskyV22Img2ImgPipeline passes (width, height) to preprocess(image, height, width),
    # so the picture comes out height x width; the lab does not correct diffusers
    assert sorted(wide.size) == [64, 128]


@pytest.mark.equality
def test_1_kandinsky_prior_by_folder(direct_kandinsky):
    from img2img_lab.tiny import kandinsky_prior_path

    pipe = lab.load_pipeline("tiny/kandinsky22", prior=str(kandinsky_prior_path()), cache=False)
    cat = lab.load_image("cat", size=(64, 64))
    call = dict(prompt=CAT_PROMPT, image=cat, **KANDINSKY)
    assert _eq(_cell(pipe, call), direct_kandinsky(**call, generator=_gen()).images[0])


# 2. model comparison ------------------------------------------------------------------------


@pytest.mark.equality
def test_2_model_comparison(init, direct_sd15, direct_refiner, direct_kandinsky):
    cases = [
        ("tiny/sd15", direct_sd15, dict(prompt=PROMPT, image=init, **FAST)),
        ("tiny/sdxl-refiner", direct_refiner, dict(prompt=PROMPT, image=init, strength=0.5, **FAST)),
        ("tiny/kandinsky22", direct_kandinsky, dict(prompt=PROMPT, image=init, **KANDINSKY)),
    ]
    for model, direct, call in cases:
        ours = _cell(lab.load_pipeline(model), call)
        assert _eq(ours, direct(**call, generator=_gen()).images[0]), model


# 3. and 4. strength and guidance_scale sweeps -------------------------------------------------


@pytest.mark.equality
@pytest.mark.parametrize("strength", [0.4, 0.6, 0.8, 1.0])
def test_3_strength(strength, init, direct_sd15):
    call = dict(prompt=PROMPT, image=init, strength=strength, num_inference_steps=5)
    ours = _cell(lab.load_pipeline("tiny/sd15"), call, seed=3)
    assert _eq(ours, direct_sd15(**call, generator=_gen(3)).images[0])
    assert runner.effective_steps(call) == int(5 * strength)


@pytest.mark.equality
@pytest.mark.parametrize("guidance_scale", [0.1, 5.0, 8.0, 10.0])
def test_4_guidance_scale(guidance_scale, init, direct_sd15):
    call = dict(prompt=PROMPT, image=init, strength=0.8, guidance_scale=guidance_scale, **FAST)
    ours = _cell(lab.load_pipeline("tiny/sd15"), call)
    assert _eq(ours, direct_sd15(**call, generator=_gen()).images[0])


# 5. negative_prompt on the SDXL refiner, and the refiner's own knobs -------------------------


@pytest.mark.equality
def test_5_negative_prompt_on_the_refiner(init, direct_refiner):
    pipe = lab.load_pipeline("tiny/sdxl-refiner")
    pictures = []
    for negative in (QUALITY_NEGATIVE, "jungle"):
        call = dict(prompt=PROMPT, negative_prompt=negative, image=init, strength=0.5, **FAST)
        ours = _cell(pipe, call)
        assert _eq(ours, direct_refiner(**call, generator=_gen()).images[0])
        pictures.append(np.asarray(ours))
    assert not np.array_equal(*pictures)


@pytest.mark.equality
def test_refiner_aesthetic_score_knobs(init, direct_refiner):
    pipe = lab.load_pipeline("tiny/sdxl-refiner")
    base = dict(prompt=PROMPT, image=init, strength=0.5, **FAST)
    default = _cell(pipe, base)
    call = {**base, "aesthetic_score": 9.0, "negative_aesthetic_score": 1.0}
    ours = _cell(pipe, call)
    assert _eq(ours, direct_refiner(**call, generator=_gen()).images[0])
    assert not _eq(ours, default)


def test_refiner_fp16_vae_nan_is_flagged(init, monkeypatch):
    """An fp16 VAE overflow decodes to NaN; the row gets status "nan" (forced here on CPU)."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    pipe = lab.load_pipeline("tiny/sdxl-refiner", cache=False)

    def overflow(z, return_dict=True, **kwargs):
        b, _, h, w = z.shape
        sample = torch.full((b, 3, h * 8, w * 8), float("nan"))
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    monkeypatch.setattr(pipe.vae, "decode", overflow)
    image, status = runner.run_cell(pipe, dict(prompt=PROMPT, image=init, strength=0.5, **FAST), 0)
    assert status == "nan" and image.size == init.size


@pytest.mark.equality
def test_refiner_fp16_safe_vae_option_swaps_the_vae(init, tmp_path):
    from diffusers import AutoencoderKL, AutoPipelineForImage2Image

    # a stand-in for madebyollin/sdxl-vae-fp16-fix: the tiny VAE with other decoder weights
    vae = AutoencoderKL.from_pretrained(lab.tiny_model_path("tiny/sdxl-refiner") / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias += 0.25
    vae.save_pretrained(tmp_path / "vae-fix", safe_serialization=True)
    pipe = lab.load_pipeline("tiny/sdxl-refiner", vae=str(tmp_path / "vae-fix"), cache=False)
    assert pipe.img2img_lab_info["options"]["vae"] == str(tmp_path / "vae-fix")
    direct = AutoPipelineForImage2Image.from_pretrained(
        lab.tiny_model_path("tiny/sdxl-refiner"), vae=AutoencoderKL.from_pretrained(tmp_path / "vae-fix"))
    call = dict(prompt=PROMPT, image=init, strength=0.5, **FAST)
    ours = _cell(pipe, call)
    assert _eq(ours, direct(**call, generator=_gen()).images[0])
    assert not _eq(ours, _cell(lab.load_pipeline("tiny/sdxl-refiner"), call))


# 6. chains (the three chains are compared with hand-written diffusers chains in test_chains.py)


@pytest.mark.equality
def test_6_text2img_then_img2img_chain_in_latent_space(direct_sd15):
    from diffusers import AutoPipelineForText2Image

    result = chains.run_chain([
        ("tiny/sd15", {"task": "text2img", "prompt": PROMPT, "height": 64, "width": 64, **FAST}),
        ("tiny/sd15", {"prompt": PROMPT + ", charliebo artstyle", "strength": 0.5, **FAST}),
    ], seed=2)
    t2i = AutoPipelineForText2Image.from_pipe(direct_sd15)
    latents = t2i(PROMPT, height=64, width=64, **FAST, output_type="latent", generator=_gen(2)).images
    final = direct_sd15(PROMPT + ", charliebo artstyle", image=latents, strength=0.5, **FAST,
                        generator=_gen(2)).images[0]
    assert _eq(result.image, final)
    assert [p["output_type"] for p in result.params] == ["latent", "pil"]


# 7. prompt weighting --------------------------------------------------------------------------


@pytest.mark.equality
def test_7_prompt_weighting(init, direct_sd15):
    from compel import Compel

    pipe = lab.load_pipeline("tiny/sd15")
    call = prompts.weighted_call(pipe, dict(prompt="Astronaut in a (jungle)1.5", negative_prompt=QUALITY_NEGATIVE,
                                            image=init, strength=0.6, **FAST))
    ours = _cell(pipe, call)
    # the guide: Compel builds prompt_embeds / negative_prompt_embeds, passed instead of the texts
    compel = Compel(tokenizer=direct_sd15.tokenizer, text_encoder=direct_sd15.text_encoder, truncate_long_prompts=False)
    embeds, negative = compel.pad_conditioning_tensors_to_same_length(
        [compel("Astronaut in a (jungle)1.5"), compel(QUALITY_NEGATIVE)])
    direct = direct_sd15(prompt_embeds=embeds, negative_prompt_embeds=negative, image=init, strength=0.6, **FAST,
                         generator=_gen()).images[0]
    assert _eq(ours, direct)


# 8. ControlNet img2img with a depth control image, then restyle ------------------------------


@pytest.mark.equality
def test_8_controlnet_depth_then_restyle(depth_model, direct_sd15):
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline
    from diffusers.utils import make_image_grid

    cn_path = str(lab.tiny_model_path("tiny/controlnet-sd15"))
    image = lab.load_image("astronaut", size=(64, 64))  # the guide: resize((958, 960))
    depth = control.depth_map(image, depth_model, device="cpu")
    restyle = dict(prompt="elden ring style astronaut in a jungle", negative_prompt=QUALITY_NEGATIVE,
                   strength=0.45, guidance_scale=10.5, **FAST)
    result = chains.run_chain([
        ("tiny/sd15", {"prompt": PROMPT, "control_image": depth, **FAST}, {"controlnet": cn_path}),
        ("tiny/sd15", restyle),
    ], image=image, latents=False)  # the guide hands the ControlNet's PIL image on
    cn = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        lab.tiny_model_path("tiny/sd15"), controlnet=ControlNetModel.from_pretrained(cn_path))
    first = cn(PROMPT, image=image, control_image=depth, **FAST, generator=_gen()).images[0]
    final = direct_sd15(image=first, **restyle, generator=_gen()).images[0]
    assert _eq(result.images[0], first) and _eq(result.image, final)
    assert make_image_grid([image, depth, first, final], rows=2, cols=2).size == (128, 128)


# 9. speed and memory knobs --------------------------------------------------------------------


def test_9_offload_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValidationError, match="offload"):
        lab.load_pipeline("tiny/sd15", offload="model")


def _fake_offload(monkeypatch):
    """Record enable_*_cpu_offload calls instead of moving weights (no GPU here)."""
    from diffusers import DiffusionPipeline

    calls = []
    monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload",
                        lambda self, gpu_id=None, device=None: calls.append((type(self).__name__, device)))
    monkeypatch.setattr(DiffusionPipeline, "remove_all_hooks", lambda self: None)
    pipe = lab.load_pipeline("tiny/sd15", cache=False)
    pipe.img2img_lab_info = {**pipe.img2img_lab_info,
                             "options": {**pipe.img2img_lab_info["options"], "offload": "model", "device": "cuda:1"}}
    return pipe, calls


def test_9_offload_is_reapplied_after_from_pipe(monkeypatch):
    pipe, calls = _fake_offload(monkeypatch)
    t2i = lab.related_pipeline(pipe, "text2img")
    assert any(name == "StableDiffusionPipeline" for name, _ in calls)  # the new text2img pipeline
    assert t2i.img2img_lab_info["options"]["offload"] == "model"


def test_9_offload_reapplied_on_the_same_device(monkeypatch):
    pipe, calls = _fake_offload(monkeypatch)
    lab.related_pipeline(pipe, "text2img")
    assert ("StableDiffusionPipeline", "cuda:1") in calls


@pytest.mark.equality
def test_9_sdpa_and_vae_slicing_tiling_keep_the_picture(init, direct_sd15):
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = lab.load_pipeline("tiny/sd15", attention="sdpa", vae_slicing=True, vae_tiling=True, cache=False)
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    options = pipe.img2img_lab_info["options"]
    assert (options["attention"], options["vae_slicing"], options["vae_tiling"]) == ("sdpa", True, True)
    call = dict(prompt=PROMPT, image=init, strength=0.6, **FAST)
    # tiling only kicks in above the VAE's tile size, so at 64 px the picture is unchanged
    assert _eq(_cell(pipe, call), direct_sd15(**call, generator=_gen()).images[0])


def test_9_compile_wraps_the_denoiser():
    pipe = lab.load_pipeline("tiny/sd15", compile="reduce-overhead", cache=False)
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)  # not called: compiling is slow on CPU
    assert pipe.img2img_lab_info["options"]["compile"] == "reduce-overhead"


# the sweep specs (the guide's, the modern families') on their tiny twins: small, said once ------

from pathlib import Path  # noqa: E402

from img2img_lab.families import entries  # noqa: E402
from img2img_lab.reports import COMPANIONS, SD15  # noqa: E402
from img2img_lab.spec import SweepSpec, tiny_size_note  # noqa: E402
from img2img_lab.tiny import TINY_SIZE  # noqa: E402

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))
# the modern families' specs: their checkpoints' twins from the key table
TWINS = {**{e.checkpoint: e.tiny for e in entries() if not e.load}, SD15: "tiny/sd15",
         **dict(COMPANIONS.values())}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_guide_sweeps_on_tiny_twins_run_at_the_tiny_size(path, capsys):
    real = SweepSpec.from_yaml(path)
    assert "height" not in real.params and "width" not in real.params  # the guide's specs set no size
    spec = real.replace(model=[TWINS[m] for m in real.model])
    cells = spec.cells()
    assert capsys.readouterr().out == ""  # cells() is pure: run_sweep says it, once per sweep
    assert tiny_size_note(spec).startswith(f"tiny models run at 64x64 px (the spec sets no height/width): {len(spec)} cell")
    assert all((c.call["height"], c.call["width"]) == (TINY_SIZE, TINY_SIZE) for c in cells)
    assert all("height" not in c.call for c in real.cells())  # real models: the guide's own sizes
    # as if the spec said so: the same calls and content keys as an explicit TINY_SIZE, none shared with 512 px
    keys = [c.key("h") for c in cells]
    assert keys == [c.key("h") for c in spec.replace(height=TINY_SIZE, width=TINY_SIZE).cells()]
    assert set(keys).isdisjoint(c.key("h") for c in spec.replace(height=512, width=512).cells())


def test_tiny_size_applies_only_to_tiny_models_and_only_without_a_size(capsys):
    base = dict(image="astronaut", prompt=PROMPT, strength=0.5)
    mixed = SweepSpec(model=["tiny/sd15", SD15], **base)
    tiny_cell, real_cell = mixed.cells()
    assert tiny_cell.call["height"] == TINY_SIZE and "height" not in real_cell.call
    assert tiny_size_note(mixed).endswith(": 1 cell")
    assert tiny_size_note(SweepSpec(model="tiny/sd15", height=128, **base)) is None
    assert tiny_size_note(SweepSpec(model="tiny/sd15", width=96, **base)) is None
    assert tiny_size_note(SweepSpec(model=SD15, **base)) is None
    assert "height" not in SweepSpec(model="tiny/sd15", width=96, **base).cells()[0].call


def test_tiny_size_is_recorded_in_the_rows(tmp_path):
    cat = lab.load_image("cat")  # 451 x 300: resized to the tiny size, as a spec with height/width would
    result = lab.run_sweep(SweepSpec(model="tiny/sd15", image="cat", prompt=PROMPT, num_inference_steps=2),
                           tmp_path / "s", progress=False)
    row = result.df.iloc[0]
    assert (row["width"], row["height"]) == (TINY_SIZE, TINY_SIZE) and result.image(0).size == (TINY_SIZE, TINY_SIZE)
    assert cat.size != (TINY_SIZE, TINY_SIZE)
