"""Single-file checkpoints: export a diffusers pipeline in the original layout and load it back."""

import shutil

import pytest

import img2img_lab as lab
from img2img_lab.errors import ValidationError

torch = pytest.importorskip("torch")


def _assert_same_weights(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{what}: {sorted(set(sa) ^ set(sb))[:5]}"
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, f"{what}: tensors differ: {bad[:5]}"


@pytest.fixture(scope="module")
def sd15_folder():
    return str(lab.tiny_model_path("tiny/sd15"))


@pytest.fixture(scope="module")
def sd15_pipe(sd15_folder):
    from diffusers import StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline.from_pretrained(sd15_folder)


@pytest.fixture(scope="module")
def sd15_file(sd15_pipe, tmp_path_factory):
    return lab.save_single_file(sd15_pipe, tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors")


def test_file_has_the_original_layout(sd15_file):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    state = load_file(sd15_file)
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in state
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in state
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in state
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as the original
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in state
    assert infer_diffusers_model_type(state) == "v1"


@pytest.mark.equality
def test_round_trip_weights_and_image(sd15_file, sd15_folder, sd15_pipe):
    pipe = lab.load_pipeline(str(sd15_file), config=sd15_folder, cache=False)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(sd15_pipe, name), getattr(pipe, name), name)

    image = lab.load_image("cat", size=(64, 64))
    args = dict(prompt="a cat", image=image, strength=0.6, num_inference_steps=3, guidance_scale=5.0,
                output_type="np")
    ours = pipe(**args, generator=torch.Generator("cpu").manual_seed(7)).images
    theirs = sd15_pipe(**args, generator=torch.Generator("cpu").manual_seed(7)).images
    assert ours.shape == (1, 64, 64, 3)
    assert (ours == theirs).all()


def test_controlnet_class_is_inferred(sd15_file, sd15_folder):
    controlnet = str(lab.tiny_model_path("tiny/controlnet-sd15"))
    pipe = lab.load_pipeline(str(sd15_file), config=sd15_folder, controlnet=controlnet, cache=False)
    assert type(pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    assert type(pipe.controlnet).__name__ == "ControlNetModel"


def test_pickle_suffix_is_refused(sd15_file, sd15_folder, tmp_path):
    ckpt = tmp_path / "tiny-sd15.ckpt"
    shutil.copy(sd15_file, ckpt)
    with pytest.raises(ValidationError, match=r"`model` .*pickle checkpoint.*allow_pickle=True"):
        lab.load_pipeline(str(ckpt), config=sd15_folder, cache=False)


def test_unknown_layout_is_a_validation_error(sd15_folder, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3), "bar.baz": torch.ones(2)}, str(path))
    with pytest.raises(ValidationError, match=r"`model` .*not a Stable Diffusion checkpoint of a known layout"):
        lab.load_pipeline(str(path), config=sd15_folder, cache=False)


def test_unreadable_safetensors_is_a_validation_error(sd15_folder, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValidationError, match=r"`model` .*could not be read"):
        lab.load_pipeline(str(path), config=sd15_folder, cache=False)


def test_save_refuses_other_suffixes_and_pipelines(sd15_pipe, tmp_path):
    with pytest.raises(ValidationError, match=r"`path` must end in .safetensors"):
        lab.save_single_file(sd15_pipe, tmp_path / "model.ckpt")
    with pytest.raises(ValidationError, match=r"`pipe` must be a diffusers pipeline"):
        lab.save_single_file(object(), tmp_path / "model.safetensors")


def test_half_precision_export(sd15_pipe, tmp_path):
    from safetensors.torch import load_file

    path = lab.save_single_file(sd15_pipe, tmp_path / "half.safetensors", dtype="float16", metadata={"note": "tiny"})
    state = load_file(path)
    assert {v.dtype for v in state.values()} == {torch.float16}
    # the pipeline itself is untouched
    assert next(sd15_pipe.unet.parameters()).dtype == torch.float32


@pytest.mark.parametrize("name", ["tiny/sdxl", "tiny/sdxl-refiner"])
def test_sdxl_export_reads_back_with_diffusers_converters(name):
    """SDXL export against diffusers' own readers, component by component.

    (A full from_single_file round trip is not possible with the tiny SDXL: both its text encoders
    have the same width, so diffusers can't tell CLIP-L from OpenCLIP-bigG by shape.)"""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from diffusers.loaders import single_file_utils as sfu

    from img2img_lab.checkpoints import pipeline_to_original_state_dict

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(lab.tiny_model_path(name)))
    state = pipeline_to_original_state_dict(pipe)

    def same(model, converted):
        expected = model.state_dict()
        assert expected.keys() == converted.keys(), sorted(set(expected) ^ set(converted))[:5]
        assert all(torch.equal(expected[k], converted[k]) for k in expected)

    same(pipe.unet, sfu.convert_ldm_unet_checkpoint(state, pipe.unet.config))
    same(pipe.vae, sfu.convert_ldm_vae_checkpoint(state, pipe.vae.config))
    if pipe.text_encoder is not None:
        assert any(k.startswith("conditioner.embedders.0.transformer.text_model.") for k in state)
        flat = {k.removeprefix("text_model."): v for k, v in sfu.convert_ldm_clip_checkpoint(state).items()}
        expected = pipe.text_encoder.state_dict()
        if not any(k.startswith("text_model.") for k in expected):  # transformers >= 5.6 flattens CLIPTextModel
            converted = flat
        else:
            converted = {"text_model." + k: v for k, v in flat.items()}
        assert expected.keys() == converted.keys()
        assert all(torch.equal(expected[k], converted[k]) for k in expected)
        big_g = "conditioner.embedders.1.model."
    else:
        big_g = "conditioner.embedders.0.model."
    assert f"{big_g}transformer.resblocks.0.attn.in_proj_weight" in state
    same(pipe.text_encoder_2, sfu.convert_open_clip_checkpoint(pipe.text_encoder_2, state, prefix=big_g))


def test_config_and_controlnet_take_tiny_model_names(sd15_file):
    pipe = lab.load_pipeline(str(sd15_file), config="tiny/sd15", controlnet="tiny/controlnet-sd15", cache=False)
    assert type(pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
