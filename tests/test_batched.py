"""Batched denoising gives the images of direct pipeline calls, on every supported scheduler."""

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")

from img2img_lab.batched import BatchedOutput, can_batch, clear_prompt_cache, run_batched  # noqa: E402
from img2img_lab.tiny import tiny_model_path  # noqa: E402

STEPS = 10
# Mixed strengths (start steps), guidance scales (0.1 and 1.0 mean no CFG in diffusers) and
# negative prompts, all in one batch.
GRID = [
    (0.3, 0.1, None),
    (0.55, 1.0, "ugly"),
    (0.8, 5.0, "jungle"),
    (1.0, 8.0, None),
    (0.3, 8.0, "ugly"),
    (0.55, 5.0, None),
    (0.8, 0.1, "jungle"),
    (1.0, 1.0, "ugly"),
    (0.8, 8.0, None),
    (0.55, 8.0, "jungle"),
    (0.3, 5.0, "jungle"),
    (1.0, 0.1, None),
]


@pytest.fixture(scope="session")
def base_pipe():
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model_path("tiny/sd15"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def init_image():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def with_scheduler(pipe, name):
    scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    new = diffusers.StableDiffusionImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False)
    new.set_progress_bar_config(disable=True)
    return new


def make_calls(image, grid=GRID, **extra):
    """Call kwargs without generators; `seeded` adds a fresh generator per call."""
    return [
        dict(
            prompt=("a cat", "a dog")[i % 2],
            image=image,
            strength=strength,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            num_inference_steps=STEPS,
            output_type="np",
            **extra,
        )
        for i, (strength, guidance_scale, negative_prompt) in enumerate(grid)
    ]


def seeded(calls):
    return [dict(call, generator=torch.Generator().manual_seed(100 + i)) for i, call in enumerate(calls)]


def direct(pipe, calls):
    calls = seeded(calls)
    images = [pipe(**call).images[0] for call in calls]
    return images, [call["generator"].get_state() for call in calls]


def assert_matches(outputs, expected, tolerance=1e-3):
    assert len(outputs) == len(expected)
    for i, (output, image) in enumerate(zip(outputs, expected)):
        assert output.error is None, f"call {i}: {output.error!r}"
        diff = np.abs(np.asarray(output.image, dtype=np.float32) - np.asarray(image, dtype=np.float32)).max()
        assert diff <= tolerance, f"call {i} differs by {diff}"


@pytest.mark.parametrize(
    "scheduler",
    [
        "PNDMScheduler",  # tiny/sd15's own; the others are the heavy tier (each ~1 s)
        *(pytest.param(name, marks=pytest.mark.heavy) for name in (
            "DDIMScheduler",
            "EulerDiscreteScheduler",
            "DPMSolverMultistepScheduler",
            "EulerAncestralDiscreteScheduler",
            "DDPMScheduler",
            "LMSDiscreteScheduler",
            "UniPCMultistepScheduler",
            "HeunDiscreteScheduler",
        )),
    ],
)
def test_matches_direct_calls(base_pipe, init_image, scheduler):
    pipe = with_scheduler(base_pipe, scheduler)
    calls = make_calls(init_image)
    expected, states = direct(pipe, calls)

    batched_calls = seeded(calls)
    outputs = run_batched(pipe, batched_calls, max_batch_size=8)

    assert_matches(outputs, expected)
    assert sorted(output.batch_size for output in outputs) == [4] * 4 + [8] * 8
    assert not any(output.nan for output in outputs)
    # every generator advanced exactly as in its direct call
    for call, state in zip(batched_calls, states):
        assert torch.equal(call["generator"].get_state(), state)


def test_ddim_eta_mixes_in_one_batch(base_pipe, init_image):
    pipe = with_scheduler(base_pipe, "DDIMScheduler")
    calls = make_calls(init_image, GRID[:4]) + make_calls(init_image, GRID[4:8], eta=0.7)
    expected, _ = direct(pipe, calls)
    assert_matches(run_batched(pipe, seeded(calls)), expected)


def test_default_output_is_pil_within_rounding(base_pipe, init_image):
    calls = [{k: v for k, v in call.items() if k != "output_type"} for call in make_calls(init_image, GRID[:3])]
    expected, _ = direct(base_pipe, calls)
    outputs = run_batched(base_pipe, seeded(calls))
    assert all(isinstance(output.image, Image.Image) for output in outputs)
    for output, image in zip(outputs, expected):
        diff = np.abs(np.asarray(output.image, dtype=np.float32) - np.asarray(image, dtype=np.float32)).max()
        assert diff <= 1  # one uint8 level, where float noise crosses a rounding boundary


def test_out_of_memory_halves_the_batch(base_pipe, init_image, monkeypatch):
    unet = base_pipe.unet
    forward = unet.forward

    def small_memory(sample, *args, **kwargs):
        if len(sample) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(sample, *args, **kwargs)

    calls = make_calls(init_image, [(0.8, 5.0, None), (0.55, 8.0, "ugly"), (0.8, 0.1, None)] * 2)
    expected, _ = direct(base_pipe, calls)
    monkeypatch.setattr(unet, "forward", small_memory)
    done = []
    outputs = run_batched(base_pipe, seeded(calls), max_batch_size=8, progress=done.append)

    assert_matches(outputs, expected)  # generators were rewound before each retry
    assert {output.batch_size for output in outputs} <= {1, 2}
    assert sum(done) == len(calls)


def test_static_shapes_pad_every_unet_call(base_pipe, init_image):
    sizes = []
    hook = base_pipe.unet.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        calls = make_calls(init_image, GRID[:5])
        outputs = run_batched(base_pipe, seeded(calls), max_batch_size=4, static_shapes=True)
    finally:
        hook.remove()
    assert set(sizes) == {8}
    assert_matches(outputs, direct(base_pipe, calls)[0])


def test_each_text_is_encoded_once(base_pipe, init_image):
    clear_prompt_cache()
    encoded = []
    hook = base_pipe.text_encoder.register_forward_pre_hook(lambda module, args: encoded.append(1))
    try:
        calls = make_calls(init_image, GRID[:6])
        run_batched(base_pipe, seeded(calls), max_batch_size=4)
        # "a cat", "a dog", "" (negative_prompt=None), "ugly", "jungle"
        assert len(encoded) == 5
        run_batched(base_pipe, seeded(calls))
        assert len(encoded) == 5
    finally:
        hook.remove()


def test_bad_calls_are_reported_and_the_rest_run(base_pipe, init_image):
    calls = seeded(make_calls(init_image, GRID[:3]))
    calls[1]["strength"] = 1.5
    calls.append(dict(calls[2]))  # same generator object twice
    calls.append(dict(calls[0], prompt=["a list"]))
    outputs = run_batched(base_pipe, calls)
    assert [output.error is None for output in outputs] == [True, False, True, False, False]
    assert "strength" in str(outputs[1].error)
    assert "generator" in str(outputs[3].error)
    assert isinstance(outputs[0], BatchedOutput) and outputs[0].batch_size == 2


def test_nan_is_flagged(base_pipe, init_image, monkeypatch):
    forward = base_pipe.unet.forward
    monkeypatch.setattr(
        base_pipe.unet, "forward", lambda *args, **kwargs: (forward(*args, **kwargs)[0] * float("nan"),)
    )
    outputs = run_batched(base_pipe, seeded(make_calls(init_image, GRID[:2])))
    assert all(output.nan and output.error is None for output in outputs)


def test_can_batch(base_pipe, init_image):
    call = dict(prompt="a cat", image=init_image, generator=torch.Generator().manual_seed(0))
    assert can_batch(base_pipe, call)
    assert can_batch(base_pipe, dict(call, negative_prompt="ugly", strength=0.5, guidance_scale=3.0, eta=0.1))
    for unsupported in (
        dict(call, prompt=["a cat", "a dog"]),
        dict(call, generator=None),
        dict(call, clip_skip=1),
        dict(call, callback_on_step_end=lambda *args: {}),
        dict(call, output_type="latent"),
        dict(call, num_images_per_prompt=2),
    ):
        assert not can_batch(base_pipe, unsupported)
    assert not can_batch(with_scheduler(base_pipe, "LCMScheduler"), call)
    assert not can_batch(diffusers.StableDiffusionPipeline(**base_pipe.components), call)


@pytest.mark.equality
def test_on_step_reports_every_denoising_step_and_changes_nothing(base_pipe, init_image):
    calls = make_calls(init_image, GRID[:6])
    plain = run_batched(base_pipe, seeded(calls), max_batch_size=6)
    steps = []
    reported = run_batched(base_pipe, seeded(calls), max_batch_size=6, on_step=lambda *a: steps.append(a))
    for a, b in zip(plain, reported):
        assert np.array_equal(a.image, b.image)  # bit-identical: the callback only reads
    for index, call in enumerate(calls):
        mine = [(step, total) for i, step, total in steps if i == index]
        total = mine[-1][1]  # the loop's length: int(STEPS * strength), +1 for PNDM's extra step
        assert total in (int(STEPS * call["strength"]), int(STEPS * call["strength"]) + 1)
        assert mine == [(s, total) for s in range(1, total + 1)]
    # reported while the batch runs: late starters' first steps come after early starters' steps
    first = [next(n for n, (i, _, _) in enumerate(steps) if i == index) for index in range(len(calls))]
    assert max(first) > 0
