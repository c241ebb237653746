"""The axes beyond strength and guidance: LoRA, IP-Adapter, prompt search/replace, variants; and
the plan of a sweep before it runs. On the tiny models and their tiny adapters, offline."""

import json

import numpy as np
import pytest
from PIL import Image

import img2img_lab as lab
from img2img_lab.errors import ValidationError
from img2img_lab.store import read_png_parameters
from img2img_lab.tiny import tiny_model_path
from img2img_lab.widgets import code_snippet

BASE = dict(model="tiny/sd15", prompt="a cat in the jungle", image="cat", strength=0.6, num_inference_steps=4)


def pixels(result, i) -> np.ndarray:
    return np.asarray(result.image(i))


@pytest.fixture(scope="module")
def second_lora(tmp_path_factory):
    """Another LoRA for tiny/sd15 as a single .safetensors file: tiny/sd15-lora's weights, halved."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_model_path("tiny/sd15-lora") / "pytorch_lora_weights.safetensors"))
    path = tmp_path_factory.mktemp("lora-b") / "halved.safetensors"
    save_file({k: v * 0.5 for k, v in tensors.items()}, str(path))
    return str(path)


class Loads:
    """Counts the real model loads (`from_pretrained` of the image-to-image AutoPipeline)."""

    def __init__(self, monkeypatch):
        import diffusers

        self.calls = []
        original = diffusers.AutoPipelineForImage2Image.from_pretrained.__func__

        def counted(cls, *args, **kwargs):
            self.calls.append(args[0] if args else kwargs.get("pretrained_model_or_path"))
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(diffusers.AutoPipelineForImage2Image, "from_pretrained", classmethod(counted))


@pytest.fixture(scope="module")
def lora_sweep(tmp_path_factory, second_lora):
    """Two LoRAs and the base model at scales 0 and 1, the LoRA axis written last in the spec."""
    mp = pytest.MonkeyPatch()
    try:
        lab.clear_pipeline_cache()
        loads = Loads(mp)
        spec = lab.SweepSpec(**BASE, lora_scale=[0.0, 1.0], lora=[None, "tiny/sd15-lora", second_lora])
        result = lab.run_sweep(spec, tmp_path_factory.mktemp("lora-sweep"), progress=False, batched=False)
    finally:
        mp.undo()
    return spec, result, loads


def test_lora_scale_zero_gives_the_base_image_bit_for_bit(lora_sweep):
    _, result, _ = lora_sweep
    df = result.df
    assert (df["status"] == "ok").all()
    base = [i for i in range(len(df)) if df["lora"].isna()[i]]
    zero = [i for i in range(len(df)) if df["lora"][i] == "tiny/sd15-lora" and df["lora_scale"][i] == 0.0]
    one = [i for i in range(len(df)) if df["lora"][i] == "tiny/sd15-lora" and df["lora_scale"][i] == 1.0]
    assert len(base) == 2 and len(zero) == 1 and len(one) == 1
    assert np.array_equal(pixels(result, base[0]), pixels(result, zero[0]))
    assert np.array_equal(pixels(result, base[0]), pixels(result, base[1]))  # the base ignores lora_scale
    assert np.abs(pixels(result, one[0]).astype(int) - pixels(result, base[0])).mean() > 1.0


def test_two_loras_and_the_base_load_the_model_once(lora_sweep, second_lora):
    spec, result, loads = lora_sweep
    assert len(loads.calls) == 1  # one from_pretrained for six cells over three LoRA settings
    run = result.meta["runs"][-1]
    assert run["loads"] == {"model": 1, "lora": 2, "ip_adapter": 0, "scheduler": 0}
    assert lab.plan(spec).loads == run["loads"]  # the plan counts what the run loads
    # each LoRA row records its source, file hash and scale; the halved file hashes differently
    df = result.df.dropna(subset=["lora"])
    assert set(df["lora"]) == {"tiny/sd15-lora", second_lora}
    assert df.groupby("lora")["lora_sha256"].nunique().eq(1).all() and df["lora_sha256"].nunique() == 2
    assert set(df["lora_scale"]) == {0.0, 1.0}
    # the cached pipeline is the base model again after the sweep
    pipe = lab.load_pipeline("tiny/sd15")
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())


def test_a_resumed_sweep_with_a_new_lora_computes_only_its_cells(lora_sweep, tmp_path, second_lora):
    spec, first, _ = lora_sweep
    fewer = spec.replace(lora=[None, "tiny/sd15-lora"])
    folder = tmp_path / "resume"
    lab.run_sweep(fewer, folder, progress=False, batched=False)
    again = lab.run_sweep(spec, folder, progress=False, batched=False)
    run = again.meta["runs"][-1]
    assert (run["computed"], run["skipped"]) == (2, 4)
    assert run["loads"]["lora"] == 1  # only the new LoRA was loaded
    assert sorted(again.df["key"]) == sorted(first.df["key"])


def test_a_lora_cell_reproduces_from_its_snippet_and_png(lora_sweep):
    _, result, _ = lora_sweep
    i = int(np.flatnonzero((result.df["lora"] == "tiny/sd15-lora") & (result.df["lora_scale"] == 1.0))[0])
    code = code_snippet(result, i)
    assert "pipe.load_lora_weights(lab.tiny_model_path('tiny/sd15-lora')" in code
    assert "pipe.set_adapters(['lora0'], [1.0])" in code
    scope: dict = {}
    exec(code, scope)
    assert np.array_equal(np.asarray(scope["image"]), pixels(result, i))
    params = read_png_parameters(result.out_dir / result.df["image_path"][i])
    assert params["lora"] == "tiny/sd15-lora" and params["lora_scale"] == 1.0 and len(params["lora_sha256"]) == 12


def test_several_loras_at_once_with_weights(tmp_path, second_lora):
    spec = lab.SweepSpec(**BASE, lora={"tiny/sd15-lora": 0.5, second_lora: 1.0}, lora_scale=[1.0, {second_lora: 0.0}])
    result = lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    weights = [json.loads(w) for w in result.df["lora_weights"]]
    assert weights == [{"tiny/sd15-lora": 0.5, second_lora: 1.0}, {"tiny/sd15-lora": 0.5, second_lora: 0.0}]
    assert result.df["lora"][0] == f"tiny/sd15-lora×0.5 + {second_lora}"
    assert result.df["lora_scale"][1] == f"{second_lora}=0"
    assert not np.array_equal(pixels(result, 0), pixels(result, 1))


def test_lcm_lora_style_variants_in_one_spec(tmp_path):
    spec = lab.SweepSpec(model="tiny/sd15", prompt="a cat", image="cat", strength=0.5, variants={
        "base": {"num_inference_steps": 8},
        "lcm-lora": {"lora": "tiny/sd15-lora", "scheduler": "lcm", "num_inference_steps": 4, "guidance_scale": 1.0},
    })
    assert spec.swept == ("variants",)
    result = lab.run_sweep(spec, tmp_path, progress=False)
    df = result.df.set_index("variants")
    assert df.loc["lcm-lora", "scheduler_class"] == "LCMScheduler" and df.loc["lcm-lora", "lora"] == "tiny/sd15-lora"
    assert df.loc["lcm-lora", "num_inference_steps"] == 4 and df.loc["base", "num_inference_steps"] == 8
    assert df["scheduler"].isna()["base"] and df["lora"].isna()["base"]
    assert lab.SweepSpec.from_yaml(spec.to_yaml()) == spec


def test_prompt_search_replace_labels_and_prompts(tmp_path):
    spec = lab.SweepSpec(model="tiny/sd15", prompt="a cat in the jungle", negative_prompt="jungle haze, blur",
                         image="cat", strength=0.5, num_inference_steps=2, prompt_sr=["jungle", "desert", "city"])
    assert [c.swept["prompt_sr"] for c in spec.cells()] == ["jungle", "desert", "city"]
    assert [c.call["prompt"] for c in spec.cells()] == ["a cat in the jungle", "a cat in the desert", "a cat in the city"]
    assert spec.cells()[1].call["negative_prompt"] == "desert haze, blur"
    result = lab.run_sweep(spec, tmp_path, progress=False)
    assert list(result.df["prompt_sr"]) == ["jungle", "desert", "city"]
    assert list(result.df["negative_prompt"]) == ["jungle haze, blur", "desert haze, blur", "city haze, blur"]
    assert result.swept == ["prompt_sr"]  # the prompts follow it: not axes of their own
    grid = lab.grid_image(result, x="prompt_sr", y="seed", cell_size=64)
    assert grid.width > 3 * 64


def test_a_search_term_in_no_prompt_is_refused_by_name():
    with pytest.raises(ValidationError, match=r"`prompt_sr` term 'forest' occurs in none of the prompts"):
        lab.SweepSpec(model="tiny/sd15", prompt="a cat in the jungle", image="cat", prompt_sr=["forest", "desert"])


def test_adapter_settings_without_the_adapter_are_refused():
    with pytest.raises(ValidationError, match=r"`lora_scale`=\[0.5\] is set but `lora` is not"):
        lab.SweepSpec(**BASE, lora_scale=0.5)
    with pytest.raises(ValidationError, match=r"`ip_adapter_image` is set but `ip_adapter` is not"):
        lab.SweepSpec(**BASE, ip_adapter_image="cat")
    with pytest.raises(ValidationError, match=r"needs a reference picture"):
        lab.SweepSpec(**BASE, ip_adapter="tiny/sd15-ip-adapter")
    with pytest.raises(ValidationError, match=r"`variants` 'soft' sets `strength`, which the spec also sweeps"):
        lab.SweepSpec(**{**BASE, "strength": [0.3, 0.6]}, variants={"soft": {"strength": 0.2}, "hard": {}})


def test_an_adapter_on_a_family_without_one_is_refused_before_loading(tmp_path, monkeypatch):
    import diffusers

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr(diffusers.AutoPipelineForImage2Image, "from_pretrained", no_loading)
    spec = lab.SweepSpec(model="tiny/sd-x4-upscaler", prompt="a cat", image="cat", num_inference_steps=2,
                         ip_adapter="tiny/sd15-ip-adapter", ip_adapter_image="astronaut")
    with pytest.raises(ValidationError, match=r"`ip_adapter` 'tiny/sd15-ip-adapter' can't be used with model "
                                              r"'tiny/sd-x4-upscaler': StableDiffusionUpscalePipeline has no "
                                              r"load_ip_adapter"):
        lab.run_sweep(spec, tmp_path / "x", progress=False)
    with pytest.raises(ValidationError, match=r"`lora` 'tiny/sd15-loras' is not an embedded tiny LoRA; the tiny "
                                              r"ones are .*\(did you mean 'tiny/sd15-lora'\?\)"):
        lab.SweepSpec(**BASE, lora="tiny/sd15-loras")
    missing = tmp_path / "nowhere.safetensors"
    for source in (str(missing), "loras/nowhere.safetensors"):  # never taken for a Hub repo (no network asked)
        with pytest.raises(ValidationError, match=r"`lora` '.*nowhere.safetensors': no such file or folder "
                                                  r"\(looked for /.*nowhere.safetensors\)"):
            lab.plan(lab.SweepSpec(**BASE, lora=source))
        with pytest.raises(ValidationError, match=r"no such file or folder"):
            lab.run_sweep(lab.SweepSpec(**BASE, lora=source), tmp_path / "y", progress=False)


def test_ip_adapter_axes(tmp_path):
    spec = lab.SweepSpec(**BASE, ip_adapter=[None, "tiny/sd15-ip-adapter"], ip_adapter_scale=[0.0, 1.0],
                         ip_adapter_image=["astronaut", "cat"])
    result = lab.run_sweep(spec, tmp_path, progress=False)
    df = result.df
    assert (df["status"] == "ok").all() and len(df) == 8
    assert df["ip_adapter"].isna().sum() == 4  # the base model at each scale and picture: the grid is complete
    with_ip = df.dropna(subset=["ip_adapter"])
    assert len(with_ip) == 4 and set(with_ip["ip_adapter_scale"]) == {0.0, 1.0}
    assert set(with_ip["ip_adapter_image"]) == {"astronaut", "cat"} and with_ip["ip_adapter_sha256"].str.len().eq(12).all()
    assert not with_ip["batched"].any()  # the IP-Adapter's image embeddings: one call per cell
    assert result.meta["runs"][-1]["loads"]["ip_adapter"] == 1
    full = with_ip[with_ip["ip_adapter_scale"] == 1.0].index
    assert not np.array_equal(pixels(result, full[0]), pixels(result, full[1]))  # the reference picture matters
    i = int(full[0])
    scope: dict = {}
    exec(code_snippet(result, i), scope)
    assert np.array_equal(np.asarray(scope["image"]), pixels(result, i))


def test_plan_loads_nothing_and_counts_what_a_run_would(tmp_path, monkeypatch, second_lora):
    import diffusers

    spec = lab.SweepSpec(**BASE, lora=[None, "tiny/sd15-lora"], seed=[0, 1], scheduler=[None, "euler"])
    folder = tmp_path / "planned"
    lab.run_sweep(spec.replace(seed=0), folder, progress=False)

    def no_loading(*args, **kwargs):
        raise AssertionError("the plan loaded a model")

    for cls in (diffusers.DiffusionPipeline, diffusers.AutoPipelineForImage2Image, diffusers.ModelMixin):
        monkeypatch.setattr(cls, "from_pretrained", no_loading)
    plan = lab.plan(spec, folder)
    assert (plan.cells, plan.done, plan.todo) == (8, 4, 4)
    assert plan.loads == {"model": 1, "lora": 1, "ip_adapter": 0, "scheduler": 2}
    assert plan.seconds is not None and plan.seconds > 0  # tiny/sd15 at 64 px ran here before
    assert plan.batch == {"tiny/sd15": 1}  # each group of cells holds one cell per batch
    text = str(plan)
    for line in ("cells", "already done", "to compute", "loads", "images per batch", "estimated time",
                 "disk needed", "grid"):
        assert line in text
    assert "1 model, 1 LoRA, 2 schedulers" in text
    before = sorted(p.name for p in folder.rglob("*"))
    assert sorted(p.name for p in folder.rglob("*")) == before  # nothing written


def test_plan_says_unknown_without_timings_and_calibrate_times_one_call(tmp_path, monkeypatch):
    monkeypatch.setenv("IMG2IMG_LAB_HOME", str(tmp_path / "home"))  # no earlier runs here (tiny models rebuilt)
    spec = lab.SweepSpec(**{**BASE, "strength": [0.4, 0.8]}, height=128, width=128)
    plan = lab.plan(spec)
    assert plan.seconds is None and "unknown (no earlier run of tiny/sd15 at 128x128" in str(plan)
    calibrated = lab.plan(spec, calibrate=True)
    assert calibrated.seconds is not None and calibrated.seconds > 0
    assert lab.plan(spec).seconds == calibrated.seconds  # kept for later plans


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    from img2img_lab.cli import main

    path = tmp_path / "spec.yaml"
    lab.SweepSpec(**BASE, lora=[None, "tiny/sd15-lora"], guidance_scale=[3.0, 7.5]).to_yaml(path)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "to compute" in text and "4" in text and "1 model, 1 LoRA" in text
    assert not out.exists()


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_the_lora_and_prompt_sr_specs_run_on_the_tiny_twins(tmp_path):
    lcm = lab.SweepSpec.from_yaml(ROOT / "sweeps" / "lcm_lora.yaml")
    assert lcm.swept == ("seed", "variants", "strength")
    data = lcm.to_dict()
    data["model"], data["seed"] = "tiny/sd15", 0
    data["variants"]["lcm-lora"]["lora"] = "tiny/sd15-lora"
    data["variants"]["base"]["num_inference_steps"] = 4
    result = lab.run_sweep(lab.SweepSpec.from_dict(data, image="cat"), tmp_path / "lcm", progress=False)
    assert (result.df["status"] == "ok").all() and set(result.df["variants"]) == {"base", "lcm-lora"}
    sr = lab.SweepSpec.from_yaml(ROOT / "sweeps" / "prompt_search_replace.yaml")
    assert [c.call["prompt"].split(",")[0] for c in sr.cells()][::2] == [
        "Astronaut in a jungle", "Astronaut in a desert", "Astronaut in a city at night", "Astronaut in a snowfield"]
    plan = lab.plan(sr.replace(model="tiny/sd15", image="cat"))
    assert plan.todo == 8 and (plan.grid.x, plan.grid.y, plan.grid.z) == ("strength", "prompt_sr", None)


def test_a_tiny_adapter_is_not_a_model():
    with pytest.raises(ValidationError, match=r"`model` 'tiny/sd15-lora' is a tiny LoRA, not a model: load it into "
                                              r"its base, e.g. `model: tiny/sd15` with `lora: tiny/sd15-lora`"):
        lab.load_pipeline("tiny/sd15-lora")


def test_the_png_infotext_names_the_lora_hashes(lora_sweep):
    _, result, _ = lora_sweep
    i = int(np.flatnonzero(result.df["lora"] == "tiny/sd15-lora")[0])
    with Image.open(result.out_dir / result.df["image_path"][i]) as im:
        text = im.text["parameters"]
    assert f'Lora hashes: "pytorch_lora_weights: {result.df["lora_sha256"][i]}"' not in text  # named by source
    assert f'Lora hashes: "sd15-lora: {result.df["lora_sha256"][i]}"' in text


def test_the_explorer_filters_the_new_axes(lora_sweep):
    _, result, _ = lora_sweep
    view = lab.explore(result)
    described = repr(view) + " ".join(str(getattr(w, "description", "")) for w in _walk(view))
    assert "lora" in described and "lora_scale" in described
    assert {"lora", "lora_scale"} <= set(result.swept)


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()) or ():
        yield from _walk(child)


def test_batched_lora_cells_stay_within_the_tolerance_of_direct_calls(tmp_path):
    spec = lab.SweepSpec(**{**BASE, "strength": [0.5, 0.75, 1.0]}, lora=[None, "tiny/sd15-lora"], lora_scale=0.7)
    batched = lab.run_sweep(spec, tmp_path / "b", progress=False)
    direct = lab.run_sweep(spec, tmp_path / "d", progress=False, batched=False)
    assert batched.df["batched"].all() and (batched.df["batch_size"] == 3).all()
    assert list(batched.df["key"]) == list(direct.df["key"])
    for i in range(len(spec)):
        diff = np.abs(pixels(batched, i).astype(int) - pixels(direct, i))
        assert diff.max() <= lab.vocab.BATCHED_TOLERANCE


@pytest.mark.parametrize("model, lora", [("tiny/sdxl", "tiny/sdxl-lora"), ("tiny/flux", "tiny/flux-lora")])
def test_the_sdxl_and_flux_loras_sweep_like_sd15s(tmp_path, model, lora):
    spec = lab.SweepSpec(model=model, prompt="a cat", image="cat", strength=0.6, num_inference_steps=2,
                         lora=[None, lora], lora_scale=[0.0, 1.0])
    result = lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    df = result.df
    assert (df["status"] == "ok").all() and result.meta["runs"][-1]["loads"]["lora"] == 1
    base = int(np.flatnonzero(df["lora"].isna())[0])
    zero = int(np.flatnonzero((df["lora"] == lora) & (df["lora_scale"] == 0.0))[0])
    one = int(np.flatnonzero((df["lora"] == lora) & (df["lora_scale"] == 1.0))[0])
    assert np.array_equal(pixels(result, base), pixels(result, zero))
    assert not np.array_equal(pixels(result, base), pixels(result, one))


def test_variants_survive_replace_and_yaml():
    spec = lab.SweepSpec(model="tiny/sd15", prompt="a cat", image="cat", variants={
        "one": {"lora": "tiny/sd15-lora", "strength": 0.4},
        "two": {"lora": [["tiny/sd15-lora", "./other.safetensors"]], "strength": 0.6},  # one combination
        "weighted": {"lora": {"tiny/sd15-lora": 0.5}},
    })
    again = spec.replace(model="tiny/sd15", seed=[0, 1])
    assert again.variants == spec.variants and len(again) == 6
    assert lab.SweepSpec.from_yaml(spec.to_yaml()) == spec
    assert [c.lora for c in spec.cells()] == [(("tiny/sd15-lora", 1.0),),
                                              (("tiny/sd15-lora", 1.0), ("./other.safetensors", 1.0)),
                                              (("tiny/sd15-lora", 0.5),)]


def test_a_lora_for_another_model_is_refused_before_any_cell_runs(tmp_path, capfd):
    with pytest.raises(ValidationError, match=r"`lora` 'tiny/sdxl-lora' is made for 'tiny/sdxl', not for model "
                                              r"'tiny/sd15'"):
        lab.plan(lab.SweepSpec(**BASE, lora="tiny/sdxl-lora"))
    # the same file under a path: found by loading it, before any cell runs, in one line
    folder = tmp_path / "sdxl-lora"
    __import__("shutil").copytree(tiny_model_path("tiny/sdxl-lora"), folder)
    spec = lab.SweepSpec(**BASE, lora=[None, str(folder)])
    capfd.readouterr()
    with pytest.raises(ValidationError, match=r"`lora` '.*sdxl-lora' can't be loaded into model 'tiny/sd15' "
                                              r"\(StableDiffusionImg2ImgPipeline\): .*another base model\?"):
        lab.run_sweep(spec, tmp_path / "run", progress=False)
    assert "size mismatch" not in capfd.readouterr().err  # diffusers' own report is not printed
    assert not list((tmp_path / "run" / "images").glob("*.png"))  # not even the base cell ran
    assert lab.load_sweep(tmp_path / "run").df.empty
    pipe = lab.load_pipeline("tiny/sd15")  # and the cached pipeline is the base model still
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())


def test_none_as_text_is_the_base_model_and_reference_errors_name_their_argument(tmp_path):
    assert lab.SweepSpec(**BASE, lora=["none", "tiny/sd15-lora"]).lora == (None, (("tiny/sd15-lora", 1.0),))
    spec = lab.SweepSpec(**BASE, ip_adapter="tiny/sd15-ip-adapter", ip_adapter_image=str(tmp_path / "nope.png"))
    with pytest.raises(ValidationError, match=r"^`ip_adapter_image` file does not exist"):
        lab.run_sweep(spec, tmp_path / "run", progress=False)


def test_two_loras_load_without_noise(tmp_path, capfd, second_lora):
    capfd.readouterr()
    spec = lab.SweepSpec(**BASE, lora=[None, "tiny/sd15-lora", second_lora])
    lab.run_sweep(spec, tmp_path, progress=False)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err and "peft_config" not in err, err


def test_the_base_model_at_each_lora_scale_is_computed_once(lora_sweep):
    spec, result, _ = lora_sweep
    df = result.df
    base = df[df["lora"].isna()]
    assert len(base) == 2 and base["same_image_as"].notna().sum() == 1
    twin = base[base["same_image_as"].notna()].iloc[0]
    assert twin["same_image_as"] in set(base["key"]) and twin["seconds"] == 0.0
    assert lab.plan(spec).same_image == 1 and "1 of them the same picture as another cell" in str(lab.plan(spec))


def test_an_exact_snippet_of_several_loras_is_bit_for_bit(tmp_path, second_lora):
    spec = lab.SweepSpec(**BASE, lora=[None, second_lora, {"tiny/sd15-lora": 0.7, second_lora: 0.3}],
                         lora_scale=[0.5, 1.0], exact=True)
    result = lab.run_sweep(spec, tmp_path, progress=False)
    i = int(np.flatnonzero(result.df["lora"].str.contains(" + ", regex=False).fillna(False))[-1])
    code = code_snippet(result, i)
    assert "cache=False" in code and repr(str(__import__("pathlib").Path(second_lora).parent)) in code
    scope: dict = {}
    exec(code, scope)
    assert np.array_equal(np.asarray(scope["image"]), pixels(result, i))


def test_a_plan_works_offline_with_an_init_image_url():
    spec = lab.SweepSpec(model="stable-diffusion-v1-5/stable-diffusion-v1-5", prompt="a cat",
                         image="https://example.invalid/init.png", strength=[0.4, 0.8], lora=[None, "owner/style-lora"])
    plan = lab.plan(spec)
    assert (plan.cells, plan.done, plan.todo) == (4, None, 4) and plan.loads["lora"] == 1
    assert plan.seconds is None and plan.disk_bytes is None and plan.grid.width is None
    text = str(plan)
    assert "`image` URL could not be fetched" in text and "already done      unknown" in text
    assert "HTTPSConnectionPool" not in text
