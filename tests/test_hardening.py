"""Bad input: each case is one clear error naming the argument and value, before any model loads.

Also the odd-but-valid inputs (RGBA, grayscale, 16-bit, sizes off the VAE grid, long prompts),
which run with a warning or a recorded adjustment rather than an error.
"""

import math

import numpy as np
import pytest
from PIL import Image

import img2img_lab as lab
import img2img_lab.images as images
import img2img_lab.loaders as loaders
from img2img_lab.errors import ValidationError
from img2img_lab.spec import SweepSpec

GOOD = dict(model="tiny/sd15", image="astronaut", prompt="a cat", strength=0.5, guidance_scale=3.0,
            num_inference_steps=2, height=64, width=64)


def _file(kind, tmp_path):
    path = tmp_path / "init.png"
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not an image")
    elif kind == "huge":
        Image.new("RGB", (400, 400)).save(path)
    return str(path)


# (case id, spec changes or callable(tmp_path) -> changes, expected message fragment)
SPEC_CASES = [
    ("strength negative", {"strength": -0.1}, "`strength` must be in [0, 1], got -0.1"),
    ("strength above 1", {"strength": 1.5}, "`strength` must be in [0, 1], got 1.5"),
    ("strength NaN", {"strength": math.nan}, "`strength`"),
    ("strength text", {"strength": "high"}, "'high'"),
    ("strength bool", {"strength": True}, "`strength`"),
    ("strength list with a bad value", {"strength": [0.3, 2.0]}, "2.0"),
    ("guidance negative", {"guidance_scale": -1.0}, "`guidance_scale`"),
    ("guidance NaN", {"guidance_scale": math.nan}, "`guidance_scale`"),
    ("guidance text", {"guidance_scale": "lots"}, "'lots'"),
    ("steps zero", {"num_inference_steps": 0}, "`num_inference_steps`"),
    ("steps negative", {"num_inference_steps": -1}, "`num_inference_steps`"),
    ("steps fractional", {"num_inference_steps": 2.5}, "2.5"),
    ("steps x strength below 1", {"num_inference_steps": 50, "strength": 0.01}, "int(50*0.01)=0"),
    ("empty prompt list", {"prompt": []}, "`prompt`"),
    ("prompt not text", {"prompt": 42}, "`prompt`"),
    ("missing prompt", {"prompt": None}, "`prompt`"),
    ("negative prompt not text", {"negative_prompt": 7}, "`negative_prompt`"),
    ("seed negative", {"seed": -1}, "`seed`"),
    ("seed too large", {"seed": 2**64}, "`seed`"),
    ("seed text", {"seed": "abc"}, "`seed`"),
    ("missing model", {"model": None}, "`model`"),
    ("unknown key", {"strenght": 0.5}, "unknown spec key `strenght`"),
    ("unknown scheduler", {"scheduler": "eulerr"}, "`scheduler`"),
    ("range with a bad step", {"strength": {"start": 0.2, "stop": 0.8, "step": 0}}, "step"),
    ("range text with a zero step", {"strength": "0.1-0.9 (+0)"}, "`strength` range step must not be 0"),
    ("range in another notation", {"strength": "0.1:0.9:0"}, "`strength` must be a number or a range like"),
    ("guidance infinite", {"guidance_scale": math.inf}, "`guidance_scale` must be a finite number >= 0, got inf"),
    ("seed far too large as text", {"seed": "1e30"}, "`seed` must be an integer in [0, 2**64 - 1], got 1.000e+30"),
    # sizes: whole numbers of pixels, at least 1 (the VAE factor is checked once the model is loaded)
    ("width negative", {"width": -64}, "`width` must be an integer in [1, 16384], got -64"),
    ("height zero", {"height": 0}, "`height` must be an integer in [1, 16384], got 0"),
    ("height fractional", {"height": 63.5}, "`height` must be an integer, got 63.5"),
    ("height bool", {"height": True}, "`height` must be an integer, got True"),
    ("height absurd", {"height": 10**6}, "`height` must be an integer in [1, 16384], got 1000000"),
    ("height as a list value", {"height": [[64, 64]]}, "`height` takes one number, got the list [64, 64]"),
    ("height in a list", {"height": [64, -8]}, "`height` must be an integer in [1, 16384], got -8"),
    # every other numeric call keyword: a finite number (not a bool), inside its documented bounds
    ("call keyword NaN", {"eta": math.nan}, "`eta` must be a finite number, got nan"),
    ("call keyword bool", {"eta": True}, "`eta` must be a number, got True"),
    ("call keyword infinite in a list value", {"controlnet_conditioning_scale": [[0.5, math.inf]]},
     "`controlnet_conditioning_scale` must be a finite number, got inf"),
    ("denoising_start above 1", {"denoising_start": 1.5}, "`denoising_start` must be a number in [0, 1], got 1.5"),
    ("control_guidance_end above 1 in a list", {"control_guidance_end": [[0.5, 1.2]]},
     "`control_guidance_end` must be a number in [0, 1], got 1.2"),
    ("prior steps zero", {"prior_num_inference_steps": 0}, "`prior_num_inference_steps` must be an integer >= 1, got 0"),
    ("noise level negative", {"noise_level": -5}, "`noise_level` must be an integer >= 0, got -5"),
    ("original_size not a pair", {"original_size": [[1024]]}, "`original_size` must be [height, width], two integers >= 1"),
    ("target_size negative", {"target_size": [[1024, -1]]}, "`target_size` must be [height, width], two integers >= 1"),
    ("crops_coords_top_left fractional", {"crops_coords_top_left": [[0, 0.5]]},
     "`crops_coords_top_left` must be [top, left], two integers >= 0"),
]

RUN_CASES = [
    ("image missing", lambda t: {"image": str(t / "missing.png")}, "`image` file does not exist"),
    ("image corrupt", lambda t: {"image": _file("corrupt", t)}, "`image`"),
    ("image zero-size", lambda t: {"image": _file("empty", t)}, "`image` file is empty"),
    ("image not an image", lambda t: {"image": _file("text", t)}, "is not an image file"),
    ("image too large", lambda t: {"image": _file("huge", t)}, "decompression-bomb guard"),
    ("model path missing", lambda t: {"model": "./no/such/model"}, "`model` path does not exist"),
    ("model not a hub id", lambda t: {"model": "not a model"}, "neither an existing local path nor a hub id"),
    ("unknown tiny model", lambda t: {"model": "tiny/sd99"}, "not an embedded tiny model"),
    ("float16 on the CPU", lambda t: {"dtype": "float16", "device": "cpu"}, "`dtype` float16 can't run"),
    ("offload without a GPU", lambda t: {"offload": "model", "device": "cpu"}, "`offload`='model'"),
    ("unknown attention", lambda t: {"attention": "flash"}, "`attention`"),
]


@pytest.fixture()
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(loaders, "_load_pretrained", refuse)
    monkeypatch.setattr(loaders, "_load_single_file", refuse)


@pytest.mark.parametrize("case,changes,message", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_values(case, changes, message, no_model_loads):
    with pytest.raises(ValidationError) as info:
        SweepSpec.from_dict({**GOOD, **changes})
    assert message in str(info.value)


@pytest.mark.parametrize("case,make,message", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_inputs_found_before_any_model_loads(case, make, message, tmp_path, monkeypatch, no_model_loads):
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    with pytest.raises(ValidationError) as info:
        lab.run_sweep(SweepSpec.from_dict({**GOOD, **make(tmp_path)}), tmp_path / "out", progress=False)
    assert message in str(info.value)
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_yaml_with_python_tags_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: tiny/sd15\nprompt: !!python/object/apply:os.system ['touch pwned']\nimage: cat\n")
    with pytest.raises(ValidationError):
        SweepSpec.from_yaml(path)
    assert not (tmp_path / "pwned").exists()


def test_unwritable_output_folder(tmp_path, no_model_loads):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValidationError, match=r"`out_dir` .* is not writable"):
        lab.run_sweep(SweepSpec.from_dict(GOOD), blocker / "runs", progress=False)


def test_unreachable_hub_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValidationError, match=r"`model` 'someone/not-here' could not be found"):
        lab.run_sweep(SweepSpec.from_dict({**GOOD, "model": "someone/not-here"}), tmp_path, progress=False)


def test_bad_cli_set_values_are_validated_like_spec_keys(tmp_path, capsys):
    from img2img_lab.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text("model: tiny/sd15\nprompt: a cat\nimage: cat\n")
    assert main(["sweep", str(spec), "--set", "strength=7", "--quiet"]) == 2
    assert "`strength` must be in [0, 1], got 7" in capsys.readouterr().err


@pytest.mark.parametrize("setting,message", [
    ("width=-64", "`width` must be an integer in [1, 16384], got -64"),
    ("strength=.nan", "`strength` must be in [0, 1], got nan"),
    ("guidance_scale=.inf", "`guidance_scale` must be a finite number >= 0, got inf"),
    ("eta=.nan", "`eta` must be a finite number, got nan"),
    ("num_inference_steps=0", "`num_inference_steps` must be an integer in [1, 10000], got 0"),
    ("num_inference_steps=1e400", "`num_inference_steps` must be an integer in [1, 10000], got "),
    ("seed=-1", "`seed` must be an integer in [0, 2**64 - 1], got -1"),
])
def test_bad_cli_set_numbers_name_the_argument_and_value(setting, message, tmp_path, capsys, no_model_loads):
    from img2img_lab.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text("model: tiny/sd15\nprompt: a cat\nimage: cat\n")
    assert main(["sweep", str(spec), "--set", setting, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.parquet").exists()


# -- sizes against the model's own VAE factor: after loading, before any cell runs -----------


@pytest.fixture()
def no_cell_runs(monkeypatch):
    import img2img_lab.batched as batched
    import img2img_lab.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("a cell ran before the bad size was reported")

    monkeypatch.setattr(runner, "run_cell", refuse)
    monkeypatch.setattr(batched, "run_batched", refuse)


@pytest.mark.parametrize("changes,message", [
    ({"height": 63}, "`height` must be a multiple of 8 for StableDiffusionImg2ImgPipeline (model 'tiny/sd15'), "
                     "got 63 (use 56 or 64)"),
    ({"width": 70}, "`width` must be a multiple of 8 for StableDiffusionImg2ImgPipeline (model 'tiny/sd15'), "
                    "got 70 (use 64 or 72)"),
    ({"width": 4}, "`width` must be a multiple of 8 for StableDiffusionImg2ImgPipeline (model 'tiny/sd15'), "
                   "got 4 (use 8)"),
    ({"height": [64, 60]}, "`height` must be a multiple of 8 for StableDiffusionImg2ImgPipeline (model 'tiny/sd15'), "
                           "got 60 (use 56 or 64)"),
])
def test_sizes_off_the_vae_factor_fail_before_any_cell_runs(changes, message, tmp_path, pipe, no_cell_runs):
    spec = SweepSpec.from_dict({**GOOD, **changes})
    for given in (pipe, None):  # a passed pipeline, or the one run_sweep loads by name
        with pytest.raises(ValidationError) as info:
            lab.run_sweep(spec, tmp_path / "out", pipe=given, progress=False)
        assert str(info.value) == message
    assert not list((tmp_path / "out" / "images").glob("*.png"))
    assert not (tmp_path / "out" / "results.parquet").exists() or lab.load_sweep(tmp_path / "out").df.empty


def test_the_vae_factor_is_the_models_own(tmp_path, no_cell_runs):
    upscaler = lab.load_pipeline("tiny/sd-x4-upscaler")  # its VAE factor is 4, not 8
    spec = SweepSpec.from_dict({**GOOD, "model": "tiny/sd-x4-upscaler", "height": 62,
                                "strength": None})  # an upscaler takes none
    with pytest.raises(ValidationError, match=r"^`height` must be a multiple of 4 for StableDiffusionUpscalePipeline "
                                              r"\(model 'tiny/sd-x4-upscaler'\), got 62 \(use 60 or 64\)$"):
        lab.run_sweep(spec, tmp_path / "out", pipe=upscaler, progress=False)
    # Kandinsky 2.2: the MoVQ factor (8) times its UNet's downsampling (2 in the tiny twin), or the
    # UNet fails on an odd latent size
    kandinsky = lab.load_pipeline("tiny/kandinsky22")
    spec = SweepSpec.from_dict({**GOOD, "model": "tiny/kandinsky22", "width": 56, "prior_num_inference_steps": 2})
    with pytest.raises(ValidationError, match=r"^`width` must be a multiple of 16 for KandinskyV22Img2ImgCombinedPipeline "
                                              r"\(model 'tiny/kandinsky22'\), got 56 \(use 48 or 64\)$"):
        lab.run_sweep(spec, tmp_path / "kandinsky", pipe=kandinsky, progress=False)


def test_size_multiple_reads_the_pipelines_image_processor():
    from types import SimpleNamespace

    from img2img_lab.validation import check_sizes, size_multiple

    def processor(factor):
        return SimpleNamespace(config=SimpleNamespace(vae_scale_factor=factor))

    assert size_multiple(SimpleNamespace(image_processor=processor(8), vae_scale_factor=8)) == 8
    # a combined pipeline (Kandinsky 2.2) decodes in its decoder pipeline, with the MoVQ's factor
    combined = SimpleNamespace(decoder_pipe=SimpleNamespace(image_processor=processor(4)))
    assert size_multiple(combined) == 4
    assert size_multiple(SimpleNamespace(vae_scale_factor=8)) == 8
    assert size_multiple(SimpleNamespace()) is None  # no factor known: nothing to check
    check_sizes(SimpleNamespace(), "custom", {"height": 63})
    with pytest.raises(ValidationError, match=r"`width` must be a multiple of 4 .* got 66 \(use 64 or 68\)"):
        check_sizes(combined, "tiny/kandinsky22", {"height": 64, "width": 66})


def test_init_image_sizes_diffusers_rounds_are_the_rows_sizes(tmp_path):
    """Without height/width diffusers rounds an odd init image down to the VAE factor: that is its
    behaviour, and the row records the size the image really has."""
    odd = tmp_path / "odd.png"
    Image.new("RGB", (77, 67), (90, 120, 30)).save(odd)
    folder = str(lab.tiny_model_path("tiny/sd15"))  # not named tiny/: no tiny run size
    spec = SweepSpec.from_dict({**{k: v for k, v in GOOD.items() if k not in ("height", "width")},
                                "model": folder, "image": str(odd)})
    result = lab.run_sweep(spec, tmp_path / "out", progress=False)
    row = result.df.iloc[0]
    assert result.image(0).size == (72, 64)
    assert (row["width"], row["height"]) == (72, 64)


def test_chain_stage_numbers_and_sizes_fail_before_any_stage_runs(monkeypatch):
    def refuse(seed):
        raise AssertionError("a stage ran")

    monkeypatch.setattr("img2img_lab.chains.generator", refuse)
    fast = {"prompt": "a", "num_inference_steps": 2}
    with pytest.raises(ValidationError, match=r"^`strength` must be in \[0, 1\], got nan$"):
        lab.run_chain([("tiny/sd15", {**fast, "strength": math.nan})], image="cat")
    with pytest.raises(ValidationError, match=r"^`guidance_scale` must be a finite number >= 0, got inf$"):
        lab.run_chain([("tiny/sd15", {**fast, "strength": 0.5}), ("tiny/sd15", {**fast, "guidance_scale": math.inf})],
                      image="cat")
    with pytest.raises(ValidationError, match=r"^`width` must be an integer in \[1, 16384\], got -64$"):
        lab.run_chain([("tiny/sd15", {**fast, "width": -64})], image="cat")
    with pytest.raises(ValidationError, match=r"^`height` must be a multiple of 8 for StableDiffusionImg2ImgPipeline "
                                              r"\(model 'tiny/sd15'\), got 63 \(use 56 or 64\)$"):
        lab.run_chain([("tiny/sd15", {**fast, "height": 63})], image="cat")


def test_chain_sweep_sizes_fail_before_any_cell_runs(tmp_path, monkeypatch):
    def refuse(seed):
        raise AssertionError("a stage ran")

    monkeypatch.setattr("img2img_lab.chains.generator", refuse)
    chain = lab.Chain([("tiny/sd15", {"prompt": "a", "strength": 0.5, "num_inference_steps": 2})], image="cat")
    with pytest.raises(ValidationError, match=r"^`height` must be a multiple of 8 .* got 63 \(use 56 or 64\)$"):
        lab.sweep_chain(chain, {"stage1.height": [64, 63]}, tmp_path / "out", progress=False)
    with pytest.raises(ValidationError, match=r"^`strength` must be in \[0, 1\], got 1.5$"):
        lab.sweep_chain(chain, {"stage1.strength": [0.5, 1.5]}, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("images/*.png"))


# -- odd but valid inputs: they run, with a warning or a recorded adjustment ----------------


@pytest.fixture(scope="module")
def pipe():
    return lab.load_pipeline("tiny/sd15")


def _run(tmp_path, pipe, image, **changes):
    base = {k: v for k, v in GOOD.items() if k not in changes or changes[k] is not None}
    spec = SweepSpec.from_dict({**base, "image": image, **{k: v for k, v in changes.items() if v is not None}})
    return lab.run_sweep(spec, tmp_path, pipe=pipe, progress=False)


def test_rgba_grayscale_and_16_bit_images_run(tmp_path, pipe):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (64, 64), (200, 10, 10, 100)).save(rgba)
    gray = tmp_path / "gray.png"
    Image.new("L", (64, 64), 128).save(gray)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(deep)
    with pytest.warns(UserWarning, match="alpha"):
        result = _run(tmp_path / "out", pipe, [str(rgba), str(gray), str(deep)])
    assert list(result.df["status"]) == ["ok", "ok", "ok"]
    assert result.init_image(2).getpixel((0, 0)) == (156, 156, 156)  # scaled, not clipped to 255


def test_sizes_off_the_vae_grid_are_resized_and_recorded(tmp_path, pipe):
    odd = tmp_path / "odd.png"
    Image.new("RGB", (70, 67), (90, 120, 30)).save(odd)
    result = _run(tmp_path / "out", pipe, str(odd), height=None, width=None)
    row = result.df.iloc[0]
    assert (row["width"], row["height"]) == (64, 64)  # what diffusers actually used (multiples of 8)
    assert result.image(0).size == (64, 64)


def test_prompt_longer_than_the_text_encoder_warns_how_many_tokens_are_cut(tmp_path, pipe, recwarn):
    long_prompt = "ab" * 60  # the tiny tokenizer is byte-level with no merges: 120 tokens + start/end
    # named `tiny/...`, the count is the byte tokenizer's, meaningless for a real model: nothing said
    result = _run(tmp_path / "tiny", pipe, "astronaut", prompt=long_prompt)
    assert list(result.df["status"]) == ["ok"] and not [w for w in recwarn if "tokens" in str(w.message)]
    # the same weights loaded from their folder are a model like any other: the cut is said
    folder = str(lab.tiny_model_path("tiny/sd15"))
    spec = SweepSpec.from_dict({**GOOD, "model": folder, "image": "astronaut", "prompt": long_prompt})
    with pytest.warns(UserWarning, match=r"has 122 tokens but the text encoder .* takes 77: the last 45 tokens are cut"):
        result = lab.run_sweep(spec, tmp_path / "folder", progress=False)
    assert list(result.df["status"]) == ["ok"]


def test_file_names_never_come_from_prompts_or_model_ids(tmp_path, pipe):
    result = _run(tmp_path / "out", pipe, "astronaut", prompt="../../etc/passwd <b>x</b>")
    (path,) = result.df["image_path"]
    assert path.startswith("images/") and ".." not in path and "passwd" not in path
    assert (tmp_path / "out" / path).exists()
