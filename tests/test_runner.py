"""run_sweep: cells equal direct calls, resume, extension, storage, PNG metadata, failures."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import img2img_lab as lab
from img2img_lab import runner
from img2img_lab.errors import ValidationError
from img2img_lab.store import read_png_parameters

BASE = dict(
    model="tiny/sd15",
    image="astronaut",
    prompt="Astronaut in a jungle",
    strength=[0.5, 1.0],
    guidance_scale=[1.0, 7.5],
    negative_prompt=[None, "jungle"],
    num_inference_steps=4,
    height=64,
    width=64,
)


@pytest.fixture(scope="module")
def pipe():
    return lab.load_pipeline("tiny/sd15")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, pipe):
    out = tmp_path_factory.mktemp("sweep")
    return lab.run_sweep(lab.SweepSpec.from_dict(BASE), out, progress=False, batched=False)


def _direct(pipe, row):
    init = lab.load_image("astronaut").resize((64, 64), lab.images.Image.Resampling.LANCZOS)
    neg = row["negative_prompt"] if isinstance(row["negative_prompt"], str) else None
    return pipe(
        prompt=row["prompt"], image=init, strength=row["strength"], guidance_scale=row["guidance_scale"],
        negative_prompt=neg, num_inference_steps=int(row["num_inference_steps"]),
        generator=torch.Generator("cpu").manual_seed(int(row["seed"])),
    ).images[0]


def test_one_row_per_cell_with_diffusers_names(swept):
    df = swept.df
    assert len(df) == 8 and df["key"].is_unique
    for col in ["strength", "guidance_scale", "negative_prompt", "num_inference_steps", "seed", "prompt",
                "model", "pipeline_class", "scheduler", "dtype", "device", "image_hash", "image_path",
                "seconds", "status", "error", "effective_steps", "width", "height"]:
        assert col in df.columns, col
    assert set(df["status"]) == {"ok"}
    assert set(df["pipeline_class"]) == {"StableDiffusionImg2ImgPipeline"}
    assert set(df["effective_steps"]) == {2, 4}
    assert set(df["dtype"]) == {"float32"} and set(df["device"]) == {"cpu"}
    assert sorted(swept.swept) == ["guidance_scale", "negative_prompt", "strength"]


@pytest.mark.equality
def test_every_image_equals_the_direct_pipeline_call(swept, pipe):
    for i, row in swept.df.iterrows():
        stored = np.asarray(swept.image(i))
        direct = np.asarray(_direct(pipe, row))
        assert np.array_equal(stored, direct), f"row {i} differs"


def test_batched_path_gives_the_same_images(tmp_path, swept):
    batched = lab.run_sweep(lab.SweepSpec.from_dict(BASE), tmp_path, progress=False, batched=True)
    assert list(batched.df["key"]) == list(swept.df["key"])
    for key in swept.df["key"]:
        a = np.asarray(swept.image(key), dtype=np.float32) / 255
        b = np.asarray(batched.image(key), dtype=np.float32) / 255
        assert np.abs(a - b).max() <= 1e-3 + 1 / 255  # 1e-3 before 8-bit rounding
    assert (batched.df["batch_size"] > 1).any()


def test_png_carries_its_parameters(swept):
    row = swept.df.iloc[3]
    params = read_png_parameters(swept.image_file(3))
    for key in ("strength", "guidance_scale", "negative_prompt", "seed", "num_inference_steps", "prompt", "model"):
        assert params[key] == (None if pd.isna(row[key]) else row[key]), key
    from PIL import Image

    with Image.open(swept.image_file(3)) as im:
        assert "Denoising strength" in im.text["parameters"]


def test_files_are_named_by_content_key_only(swept):
    for _, row in swept.df.iterrows():
        assert row["image_path"] == f"images/{row['key']}.png"
    assert not [p for p in (swept.out_dir / "images").iterdir() if p.name.endswith(".tmp")]


def test_load_sweep_reopens_the_table_spec_and_meta(swept):
    again = lab.load_sweep(swept.out_dir)
    pd.testing.assert_frame_equal(again.df, swept.df)
    assert again.spec == swept.spec
    assert again.meta["versions"]["diffusers"]
    assert again.meta["runs"][-1]["cells"] == 8


class _Counting:
    """Counts pipeline calls by wrapping run_cell."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = runner.run_cell

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(runner, "run_cell", counted)


def test_rerun_skips_and_extension_computes_only_new_cells(tmp_path, monkeypatch):
    counter = _Counting(monkeypatch)
    spec = lab.SweepSpec.from_dict({**BASE, "negative_prompt": None})
    lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    assert counter.calls == 4
    lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    assert counter.calls == 4  # nothing recomputed
    extended = spec.replace(strength=[0.5, 0.75, 1.0])
    result = lab.run_sweep(extended, tmp_path, progress=False, batched=False)
    assert counter.calls == 6  # only the two new cells
    assert len(result.df) == 6 and result.df["key"].is_unique
    assert list(result.df["strength"]) == [0.5, 0.5, 0.75, 0.75, 1.0, 1.0]  # spec order


def test_resume_after_an_interruption(tmp_path, monkeypatch):
    spec = lab.SweepSpec.from_dict({**BASE, "negative_prompt": None})
    original = runner.run_cell
    state = {"n": 0}

    def dies_on_third(*args, **kwargs):
        state["n"] += 1
        if state["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "run_cell", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    partial = lab.load_sweep(tmp_path)
    assert len(partial.df) == 2 and set(partial.df["status"]) == {"ok"}
    counter = _Counting(monkeypatch)
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: (counter.__setattr__("calls", counter.calls + 1), original(*a, **k))[1])
    full = lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    assert counter.calls == 2 and len(full.df) == 4


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    spec = lab.SweepSpec.from_dict({**BASE, "negative_prompt": None, "guidance_scale": 1.0})
    original = runner.run_cell

    def fails_for_full_strength(pipe, call, seed):
        if call["strength"] == 1.0:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(pipe, call, seed)

    monkeypatch.setattr(runner, "run_cell", fails_for_full_strength)
    result = lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    bad = result.df[result.df["strength"] == 1.0].iloc[0]
    assert bad["status"] == "error" and "out of memory" in bad["error"] and bad["image_path"] == ""
    assert (result.df[result.df["strength"] == 0.5]["status"] == "ok").all()
    # errors are retried on the next run
    monkeypatch.setattr(runner, "run_cell", original)
    again = lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    assert set(again.df["status"]) == {"ok"} and len(again.df) == 2


def test_nan_outputs_are_flagged(tmp_path, monkeypatch, pipe):
    original_decode = pipe.vae.decode

    def nan_decode(latents, *args, **kwargs):
        out = original_decode(latents, *args, **kwargs)
        (out[0] if isinstance(out, tuple) else out.sample)[:] = float("nan")  # an fp16 overflow
        return out

    monkeypatch.setattr(pipe.vae, "decode", nan_decode)
    spec = lab.SweepSpec.from_dict({**BASE, "strength": 0.5, "guidance_scale": 1.0, "negative_prompt": None})
    result = lab.run_sweep(spec, tmp_path, pipe=pipe, progress=False, batched=False)
    assert list(result.df["status"]) == ["nan"]


def test_scheduler_axis_swaps_and_restores(tmp_path, pipe):
    own = type(pipe.scheduler).__name__
    spec = lab.SweepSpec.from_dict({**BASE, "strength": 0.5, "guidance_scale": 1.0, "negative_prompt": None,
                                    "scheduler": ["euler", "ddim"]})
    result = lab.run_sweep(spec, tmp_path, pipe=pipe, progress=False, batched=False)
    assert list(result.df["scheduler_class"]) == ["EulerDiscreteScheduler", "DDIMScheduler"]
    assert type(pipe.scheduler).__name__ == own
    a, b = (np.asarray(result.image(i)) for i in range(2))
    assert not np.array_equal(a, b)


def test_arguments_the_pipeline_does_not_take_fail_before_running(tmp_path, pipe):
    spec = lab.SweepSpec.from_dict({**BASE, "controlnet_conditioning_scale": 0.5})
    with pytest.raises(ValidationError, match=r"`controlnet_conditioning_scale`=0.5 is not an argument of the only model of this sweep: 'tiny/sd15' "
                                              r"\(Stable Diffusion 1.x/2.x pipeline, StableDiffusionImg2ImgPipeline\)"):
        lab.run_sweep(spec, tmp_path, pipe=pipe, progress=False)
    assert not (tmp_path / "results.parquet").exists()


def test_bad_inputs_are_errors_before_any_model_loads(tmp_path, monkeypatch):
    import img2img_lab.loaders as loaders

    monkeypatch.setattr(loaders, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ValidationError, match="max_batch_size"):
        lab.run_sweep(lab.SweepSpec.from_dict(BASE), tmp_path, max_batch_size=0)
    with pytest.raises(ValidationError, match=r"`image` file does not exist"):
        lab.run_sweep(lab.SweepSpec.from_dict({**BASE, "image": str(tmp_path / "nope.png")}), tmp_path)
    with pytest.raises(ValidationError, match=r"`dtype` float16 can't run"):
        lab.run_sweep(lab.SweepSpec.from_dict({**BASE, "dtype": "float16", "device": "cpu"}), tmp_path)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValidationError, match=r"`out_dir` .* is not writable"):
        lab.run_sweep(lab.SweepSpec.from_dict(BASE), blocker / "sub", progress=False)


def test_load_sweep_of_an_empty_folder(tmp_path):
    with pytest.raises(ValidationError, match="holds no sweep"):
        lab.load_sweep(tmp_path)
    with pytest.raises(ValidationError, match="does not exist"):
        lab.load_sweep(tmp_path / "missing")


@pytest.mark.equality
def test_compel_sweep_passes_weighted_embeddings(tmp_path, pipe):
    from img2img_lab.prompts import encode_weighted

    spec = lab.SweepSpec.from_dict({**BASE, "prompt": ["a (red)1.5 cat", "a red cat"], "strength": 0.5,
                                    "guidance_scale": 3.0, "negative_prompt": "blurry", "compel": True})
    result = lab.run_sweep(spec, tmp_path, pipe=pipe, progress=False)
    assert list(result.df["prompt"]) == ["a (red)1.5 cat", "a red cat"]  # the text stays in the table
    init = lab.load_image("astronaut").resize((64, 64), lab.images.Image.Resampling.LANCZOS)
    embeds = encode_weighted(pipe, "a (red)1.5 cat", "blurry")
    direct = pipe(image=init, strength=0.5, guidance_scale=3.0, num_inference_steps=4, **embeds,
                  generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(result.image(0)), np.asarray(direct))
    plain = lab.run_sweep(spec.replace(compel=False), tmp_path / "plain", pipe=pipe, progress=False)
    assert plain.df["key"].iloc[0] != result.df["key"].iloc[0]


def test_controlnet_sweep_over_conditioning_scale(tmp_path):
    cn = lab.load_pipeline("tiny/sd15", controlnet=str(lab.tiny_model_path("tiny/controlnet-sd15")))
    spec = lab.SweepSpec.from_dict({**BASE, "strength": 0.5, "guidance_scale": 1.0, "negative_prompt": None,
                                    "control_image": "cat", "controlnet_conditioning_scale": [0.0, 1.0]})
    result = lab.run_sweep(spec, tmp_path, pipe=cn, progress=False)
    assert list(result.df["status"]) == ["ok", "ok"]
    assert list(result.df["controlnet_conditioning_scale"]) == [0.0, 1.0]
    assert not np.array_equal(np.asarray(result.image(0)), np.asarray(result.image(1)))


def test_in_memory_init_images_are_stored_and_the_spec_points_at_them(tmp_path, pipe):
    init = lab.load_image("cat", size=64)
    spec = lab.SweepSpec.from_dict({**BASE, "image": init, "strength": 0.5, "guidance_scale": 1.0,
                                    "negative_prompt": None})
    result = lab.run_sweep(spec, tmp_path, pipe=pipe, progress=False)
    assert list(result.df["status"]) == ["ok"]
    reopened = lab.load_sweep(tmp_path)
    (source,) = reopened.spec.image
    assert source.endswith(f"inputs/{result.df['image_hash'].iloc[0]}.png")
    # the stored spec reproduces the same cell: a re-run computes nothing new
    again = lab.run_sweep(reopened.spec, tmp_path, pipe=pipe, progress=False)
    assert list(again.df["key"]) == list(result.df["key"])
    assert again.meta["runs"][-1]["computed"] == 0


def test_the_run_dtype_is_part_of_every_key(tmp_path, pipe):
    spec = lab.SweepSpec.from_dict({**BASE, "strength": 0.5, "guidance_scale": 1.0, "negative_prompt": None})
    default = lab.run_sweep(spec, tmp_path / "a", progress=False)
    explicit = lab.run_sweep(spec.replace(dtype="float32"), tmp_path / "b", progress=False)
    assert list(default.df["key"]) == list(explicit.df["key"])  # float32 is what CPU resolves to
    bf16 = lab.load_pipeline("tiny/sd15", dtype="bfloat16")
    other = lab.run_sweep(spec, tmp_path / "a", pipe=bf16, progress=False)  # same folder
    assert len(other.df) == 2 and set(other.df["dtype"]) == {"float32", "bfloat16"}


def test_a_passed_pipeline_must_be_the_specs_model(tmp_path, pipe):
    spec = lab.SweepSpec.from_dict({**BASE, "model": "stable-diffusion-v1-5/stable-diffusion-v1-5"})
    with pytest.raises(ValidationError, match=r"`pipe` was loaded from 'tiny/sd15' but the spec's `model` is"):
        lab.run_sweep(spec, tmp_path, pipe=pipe, progress=False)
    with pytest.raises(ValidationError, match=r"`pipe` serves one model"):
        lab.run_sweep(spec.replace(model=["tiny/sd15", "tiny/sdxl"]), tmp_path, pipe=pipe, progress=False)
    assert not (tmp_path / "results.parquet").exists()


def test_scheduler_column_holds_the_name_asked_for(swept):
    assert swept.df["scheduler"].isna().all()  # the model's own scheduler
    assert set(swept.df["scheduler_class"]) == {"PNDMScheduler"}


def test_stored_files_are_readable_by_others(swept):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.parquet", "meta.json", "spec.yaml", swept.df["image_path"].iloc[0]):
        mode = stat.S_IMODE(os.stat(swept.out_dir / name).st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def test_cells_share_one_resized_init_image(tmp_path, pipe):
    from img2img_lab.store import SweepStore

    spec = lab.SweepSpec.from_dict(BASE)
    prepared = runner.prepare_cells(spec, SweepStore(tmp_path), "float32")
    shared = {}
    calls = [runner.call_for(pipe, p, shared) for p in prepared]
    assert calls[0]["image"].size == (64, 64)
    assert all(c["image"] is calls[0]["image"] for c in calls)  # preprocessed/encoded once when batched


# --------------------------------------------------------------------------------------------
# progress: one bar in images, moving at every denoising step, naming the model and batch


class _Recorded:
    """Captures the sweep's tqdm bar: every update (with its n and postfix) and image write, in order."""

    def __init__(self, monkeypatch):
        import tqdm.auto

        from img2img_lab.store import SweepStore

        self.events, self.bars = [], []
        recorder = self

        class Bar(tqdm.auto.tqdm):
            def __init__(self, *args, **kwargs):
                kwargs["disable"] = False  # shown even with pytest capturing the terminal
                super().__init__(*args, **kwargs)
                recorder.bars.append(self)

            def update(self, n=1):
                out = super().update(n)
                recorder.events.append(("update", self.n, self.postfix))
                return out

        write_image = SweepStore.write_image

        def writing(store, key, image, row):
            recorder.events.append(("write", key, None))
            return write_image(store, key, image, row)

        monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
        monkeypatch.setattr(SweepStore, "write_image", writing)

    def before_first_write(self):
        first = next(i for i, e in enumerate(self.events) if e[0] == "write")
        return [e for e in self.events[:first] if e[0] == "update"]


@pytest.mark.parametrize("batched,postfix,in_flight", [(True, "tiny/sd15 · batch 4", 4), (False, "tiny/sd15 · 1 call", 1)])
def test_progress_moves_during_a_batch_and_counts_cells(tmp_path, monkeypatch, batched, postfix, in_flight):
    recorded = _Recorded(monkeypatch)
    spec = lab.SweepSpec.from_dict({**BASE, "negative_prompt": None})  # 4 cells, 2 and 4 denoising steps
    result = lab.run_sweep(spec, tmp_path, batched=batched)
    assert len(recorded.bars) == 1
    bar = recorded.bars[0]
    assert bar.total == len(result.df) == 4 and bar.n == 4  # the final count is the number of cells, exactly
    early = recorded.before_first_write()
    # the bar moved by fractions of an image before the first image (of the batch) was written
    assert len(early) >= 2 and all(0 < n < in_flight for _, n, _ in early)
    assert [n for _, n, _ in early] == sorted(n for _, n, _ in early)
    counts = [n for kind, n, _ in recorded.events if kind == "update"]
    assert any(n != int(n) for n in counts)
    assert all(postfix in (p or "") for kind, _, p in recorded.events if kind == "update")
    assert "img/s" in str(bar) or "s/img" in str(bar)


def test_progress_postfix_names_each_group(tmp_path, monkeypatch):
    recorded = _Recorded(monkeypatch)
    spec = lab.SweepSpec.from_dict({**BASE, "negative_prompt": None, "guidance_scale": 1.0, "strength": 0.5,
                                    "scheduler": [None, "euler"]})
    lab.run_sweep(spec, tmp_path)
    postfixes = {p for kind, _, p in recorded.events if kind == "update"}
    assert "tiny/sd15 · 1 call" in postfixes and "tiny/sd15 · euler · 1 call" in postfixes
    assert recorded.bars[0].n == 2


@pytest.mark.equality
def test_step_callbacks_leave_the_images_unchanged(pipe):
    init = lab.load_image("astronaut", size=64)
    call = dict(prompt="a cat", image=init, strength=0.75, guidance_scale=5.0, num_inference_steps=4)
    steps = []
    plain, _ = runner.run_cell(pipe, call, 7)
    reported, _ = runner.run_cell(pipe, {**call, **runner.step_callback(pipe, lambda *a: steps.append(a))}, 7)
    assert np.array_equal(np.asarray(plain), np.asarray(reported))
    total = steps[-1][1]  # the pipeline's own loop length (PNDM repeats one timestep: 3 + 1)
    assert total in (3, 4) and steps == [(s, total) for s in range(1, total + 1)]


def test_legacy_callback_where_a_pipeline_has_only_that():
    upscaler = lab.load_pipeline("tiny/sd-x4-upscaler")
    init = lab.load_image("astronaut", size=32)
    call = dict(prompt="a cat", image=init, num_inference_steps=3)
    steps = []
    kwargs = runner.step_callback(upscaler, lambda *a: steps.append(a))
    assert set(kwargs) == {"callback", "callback_steps"}
    plain, _ = runner.run_cell(upscaler, call, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the legacy callback is this pipeline's own API: no deprecation
        reported, _ = runner.run_cell(upscaler, {**call, **kwargs}, 1)
    assert np.array_equal(np.asarray(plain), np.asarray(reported))
    assert [step for step, _ in steps] == [1, 2, 3]
