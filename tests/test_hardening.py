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
