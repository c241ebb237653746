"""ControlNet image-to-image: control images, conditioning scale, multi-ControlNet, depth maps."""

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab import control
from img2img_lab.errors import ValidationError

CALL = dict(prompt="an astronaut", strength=0.6, num_inference_steps=3, guidance_scale=5.0)


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=64)


@pytest.fixture(scope="module")
def cn_path(tmp_path_factory):
    """tiny/controlnet-sd15 with its zero-initialised output convs filled in (seeded), so the
    control image and `controlnet_conditioning_scale` change the picture, as a trained one does."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(lab.tiny_model_path("tiny/controlnet-sd15"))
    torch.manual_seed(0)
    with torch.no_grad():
        for module in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            for param in module.parameters():
                param.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("controlnet") / "cn"
    net.save_pretrained(folder, safe_serialization=True)
    return str(folder)


@pytest.fixture(scope="module")
def cn_pipe(cn_path):
    return lab.load_pipeline("tiny/sd15", controlnet=cn_path)


def _gen():
    return torch.Generator("cpu").manual_seed(0)


def test_prepare_control_image_from_a_sample_name_sized_like_the_init(init):
    image = control.prepare_control_image("cat", size=init.size)
    assert image.size == init.size and image.mode == "RGB"
    both = control.prepare_control_image(["cat", "coffee"], size=init.size)
    assert [i.size for i in both] == [init.size, init.size]
    assert control.prepare_call({"prompt": "x"}) == {"prompt": "x"}
    assert control.prepare_call({"control_image": "cat"}, size=(32, 48))["control_image"].size == (32, 48)
    with pytest.raises(ValidationError, match="control_image"):
        control.prepare_control_image([])


@pytest.mark.equality
def test_controlnet_img2img_equals_the_diffusers_class(cn_pipe, cn_path, init):
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    assert type(cn_pipe) is StableDiffusionControlNetImg2ImgPipeline
    cond = control.prepare_control_image("cat", size=init.size)
    ours = cn_pipe(**CALL, image=init, control_image=cond, controlnet_conditioning_scale=0.7,
                   generator=_gen()).images[0]
    direct_pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        lab.tiny_model_path("tiny/sd15"), controlnet=ControlNetModel.from_pretrained(cn_path))
    direct = direct_pipe(**CALL, image=init, control_image=cond, controlnet_conditioning_scale=0.7,
                         generator=_gen()).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(direct))


def test_conditioning_scale_is_a_real_knob(cn_pipe, init):
    cond = control.prepare_control_image("cat", size=init.size)
    a = cn_pipe(**CALL, image=init, control_image=cond, controlnet_conditioning_scale=0.0, generator=_gen()).images[0]
    b = cn_pipe(**CALL, image=init, control_image=cond, controlnet_conditioning_scale=1.0, generator=_gen()).images[0]
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_multi_controlnet(cn_path, init):
    pipe = lab.load_pipeline("tiny/sd15", controlnet=[cn_path, cn_path])
    assert type(pipe.controlnet).__name__ == "MultiControlNetModel" and len(pipe.controlnet.nets) == 2
    conds = control.prepare_control_image(["cat", "coffee"], size=init.size)
    out = pipe(**CALL, image=init, control_image=conds, controlnet_conditioning_scale=[0.5, 1.0],
               generator=_gen()).images[0]
    assert out.size == init.size


@pytest.mark.equality
def test_depth_map_is_a_three_channel_picture_of_the_image_size(depth_model):
    image = lab.load_image("astronaut", size=(80, 64))
    depth = control.depth_map(image, depth_model, device="cpu")
    assert depth.mode == "RGB" and depth.size == (80, 64)
    array = np.asarray(depth)
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
    # the guide's get_depth_map, by hand
    from transformers import pipeline

    by_hand = np.asarray(pipeline("depth-estimation", model=depth_model, device="cpu")(image)["depth"])
    assert np.array_equal(array[..., 0], by_hand)
    assert control.depth_estimator(depth_model, "cpu") is control.depth_estimator(depth_model, "cpu")


def test_depth_map_feeds_the_controlnet(depth_model, cn_pipe, init):
    depth = control.depth_map(init, depth_model, device="cpu")
    out = cn_pipe(**CALL, image=init, control_image=depth, generator=_gen()).images[0]
    assert out.size == init.size


def test_missing_depth_model_is_a_validation_error(tmp_path):
    with pytest.raises(ValidationError, match="depth-estimation"):
        control.depth_estimator(str(tmp_path / "nothing"), "cpu")
