"""What a notebook shows while sweeping: our own notices once, pointing at the user's call;
third-party messages that tell the user nothing, silenced around our calls only."""

import warnings

import pytest

import img2img_lab as lab

LONG = "a very detailed photograph of an astronaut riding a horse in a jungle, " * 6  # > 77 CLIP tokens

# third-party lines once seen in executed notebooks
NOISE = (
    "The following part of your input was truncated",  # diffusers' encode_prompt, once per call
    "Token indices sequence length is longer",  # transformers' tokenizer
    "should be kept in float32",  # the SDXL pipelines' own VAE upcast
    "Loading pipeline components",  # diffusers' loading bar
    "Loading weights",  # transformers' loading bar
    "Writing model shards",  # transformers' save_pretrained bar (tiny models)
    "callback_steps",  # Kandinsky 2.2's combined pipeline hands its default to its decoder
    "local_dir_use_symlinks",
)


def _assert_quiet(text):
    for noise in NOISE:
        assert noise not in text, noise


def _ours(record):
    return [w for w in record if "tokens are cut" in str(w.message)]


@pytest.mark.heavy
def test_a_sweep_over_three_families_says_a_long_prompt_once_and_nothing_else(tmp_path, capfd, recwarn):
    from img2img_lab.tiny import tiny_model_path

    lab.clear_pipeline_cache()  # load again: the loading bars are part of what is checked
    # loaded from their folders: a `tiny/...` name says nothing of cut prompts (its byte-level count is meaningless)
    models = [str(tiny_model_path(f"tiny/{name}")) for name in ("sd15", "sdxl-refiner")] + ["tiny/kandinsky22"]
    spec = lab.SweepSpec(model=models, image="astronaut",
                         prompt=LONG, strength=[0.5, 1.0], guidance_scale=[1.0, 5.0], num_inference_steps=2,
                         height=64, width=64)
    result = lab.run_sweep(spec, tmp_path / "a", progress=False)
    assert set(result.df["status"]) == {"ok"}
    lab.run_sweep(spec.replace(model=models[0], seed=1), tmp_path / "b", progress=False, batched=False)
    lab.run_sweep(spec.replace(model="tiny/sd15", seed=2), tmp_path / "c", progress=False)  # says nothing
    out, err = capfd.readouterr()
    _assert_quiet(out + err)
    ours = _ours(recwarn)
    assert len(ours) == 2  # once per sweep, not once per model or per call
    assert all(w.category is UserWarning and w.filename == __file__ for w in ours)  # the user's line
    assert "350 tokens" in str(ours[0].message) and "\n" not in str(ours[0].message)
    others = [w for w in recwarn if w not in ours]
    assert not others, [f"{w.category.__name__}: {w.message} ({w.filename})" for w in others]


def test_run_chain_says_a_long_prompt_once_pointing_at_the_call(capfd, recwarn):
    from img2img_lab.tiny import tiny_model_path

    out = lab.run_chain([(str(tiny_model_path("tiny/sd15")), {"task": "text2img", "prompt": LONG, "num_inference_steps": 2,
                                        "height": 64, "width": 64}),
                         ("tiny/sd15", {"prompt": "an astronaut", "strength": 0.5, "num_inference_steps": 2})])
    assert out.status == "ok"
    ours = _ours(recwarn)
    assert len(ours) == 1 and ours[0].filename == __file__
    _assert_quiet("".join(capfd.readouterr()))


def test_loading_and_building_are_quiet_and_settings_come_back(tmp_path, monkeypatch, capfd):
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub import utils as hub_utils

    monkeypatch.setenv("IMG2IMG_LAB_HOME", str(tmp_path / "home"))  # built afresh: save_pretrained runs
    before = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
              hub_utils.are_progress_bars_disabled())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = lab.load_pipeline("tiny/sd15", controlnet="tiny/controlnet-sd15", cache=False)
    assert type(pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    _assert_quiet("".join(capfd.readouterr()))
    after = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
             hub_utils.are_progress_bars_disabled())
    assert after == before  # the libraries' own settings are the user's again


def test_filters_are_local_to_our_calls(capfd):
    """The same diffusers message outside our calls still shows: nothing is silenced globally."""
    from diffusers.utils import logging as diffusers_logging

    from img2img_lab.loaders import quiet_call

    import logging

    logger = diffusers_logging.get_logger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img")
    message = "The following part of your input was truncated because CLIP can only handle sequences up to 77 tokens"
    seen = []

    class Record(logging.Handler):  # what reaches the handlers (the console's may write to an old stderr)
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Record()
    diffusers_logging.get_logger("diffusers").addHandler(handler)
    try:
        with quiet_call():
            logger.warning(message)
            with pytest.warns(FutureWarning):  # pytest.warns records everything; the filter is still in place
                warnings.warn("other FutureWarning", FutureWarning)
        assert message not in seen
        logger.warning(message)
        assert message in seen
    finally:
        diffusers_logging.get_logger("diffusers").removeHandler(handler)
    with pytest.warns(FutureWarning, match="callback_steps"):
        warnings.warn("`callback_steps` is deprecated and will be removed", FutureWarning)
