"""load_pipeline: tiny models through the real from_pretrained path, options, validation, safety."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import img2img_lab as lab
from img2img_lab.errors import ValidationError
from img2img_lab.loaders import resolve_model


@pytest.fixture(scope="module")
def sd15():
    return lab.load_pipeline("tiny/sd15")


@pytest.fixture(scope="module")
def init():
    return lab.load_image("astronaut", size=64)


def test_tiny_sd15_is_the_real_img2img_class(sd15):
    from diffusers import StableDiffusionImg2ImgPipeline

    assert type(sd15) is StableDiffusionImg2ImgPipeline
    assert str(sd15.device) == "cpu" and sd15.unet.dtype == torch.float32


@pytest.mark.equality
def test_same_image_as_the_diffusers_class_called_directly(sd15, init):
    from diffusers import StableDiffusionImg2ImgPipeline

    kwargs = dict(prompt="a cat", image=init, strength=0.7, guidance_scale=6.0, num_inference_steps=6)
    ours = sd15(**kwargs, generator=torch.Generator().manual_seed(3)).images[0]
    direct_pipe = StableDiffusionImg2ImgPipeline.from_pretrained(lab.tiny_model_path("tiny/sd15"))
    direct = direct_pipe(**kwargs, generator=torch.Generator().manual_seed(3)).images[0]
    assert ours.size == (64, 64)
    assert np.array_equal(np.asarray(ours), np.asarray(direct))


def test_pipelines_are_cached_by_model_and_options(sd15):
    assert lab.load_pipeline("tiny/sd15") is sd15
    other = lab.load_pipeline("tiny/sd15", scheduler="euler")
    assert other is not sd15 and type(other.scheduler).__name__ == "EulerDiscreteScheduler"
    assert lab.load_pipeline("tiny/sd15", scheduler="euler") is other
    assert lab.load_pipeline("tiny/sd15", cache=False) is not sd15


@pytest.mark.parametrize(
    "name,cls",
    [("ddim", "DDIMScheduler"), ("pndm", "PNDMScheduler"), ("dpm++2m", "DPMSolverMultistepScheduler")],
)
def test_scheduler_names_swap_via_from_config(name, cls):
    pipe = lab.load_pipeline("tiny/sd15", scheduler=name, cache=False)
    assert type(pipe.scheduler).__name__ == cls
    assert pipe.scheduler.config.num_train_timesteps == 1000


def test_local_folder_loads_like_a_hub_checkpoint(tmp_path, sd15):
    sd15.save_pretrained(tmp_path / "copy")
    pipe = lab.load_pipeline(str(tmp_path / "copy"), cache=False)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"


def test_related_text2img_pipeline_shares_weights(sd15):
    t2i = lab.related_pipeline(sd15, "text2img")
    assert type(t2i).__name__ == "StableDiffusionPipeline"
    assert t2i.unet is sd15.unet


def test_runwayml_id_maps_to_the_mirror_with_a_warning():
    with pytest.warns(UserWarning, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        kind, source = resolve_model("runwayml/stable-diffusion-v1-5")
    assert (kind, source) == ("hub", "stable-diffusion-v1-5/stable-diffusion-v1-5")


@pytest.mark.parametrize(
    "options,match",
    [
        ({"schedular": "euler"}, r"unknown option `schedular`.*did you mean 'scheduler'"),
        ({"scheduler": "eulerr"}, r"`scheduler` must be one of .*'eulerr'"),
        ({"dtype": "float16", "device": "cpu"}, r"`dtype` float16 can't run on device 'cpu'"),
        ({"dtype": "int8"}, r"`dtype` must be one of .*'int8'"),
        ({"device": "tpu"}, r"`device` must be .*'tpu'"),
        ({"offload": "disk"}, r"`offload` must be one of .*'disk'"),
        ({"offload": "model", "device": "cpu"}, r"`offload`='model' .* needs a CUDA device"),
        ({"attention": "flash"}, r"`attention` must be one of .*'flash'"),
        ({"compile": "fast"}, r"`compile` must be one of .*'fast'"),
        ({"use_safetensors": "yes"}, r"`use_safetensors` must be True or False, got 'yes'"),
        ({"controlnet": "./no/such/controlnet"}, r"`controlnet` path does not exist: './no/such/controlnet'"),
        ({"prior": "/no/such/prior"}, r"`prior` path does not exist"),
    ],
)
def test_bad_options_fail_before_loading(options, match, monkeypatch):
    import img2img_lab.loaders as loaders

    monkeypatch.setattr(loaders, "_load_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ValidationError, match=match):
        lab.load_pipeline("tiny/sd15", cache=False, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValidationError, match=r"`device` is 'cuda' but no CUDA GPU"):
        lab.load_pipeline("tiny/sd15", device="cuda")


@pytest.mark.parametrize(
    "model,match",
    [
        ("tiny/sd16", r"not an embedded tiny model.*did you mean 'tiny/sd15'"),
        ("./missing/folder", r"`model` path does not exist: './missing/folder'"),
        ("/tmp/definitely/missing.safetensors", r"`model` path does not exist"),
        ("not a model id", r"neither an existing local path nor a hub id"),
        ("", r"`model` must be"),
        (None, r"`model` must be"),
    ],
)
def test_bad_model_ids(model, match):
    with pytest.raises(ValidationError, match=match):
        lab.load_pipeline(model)


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValidationError, match=r"`model` 'nobody-here/no-such-model' could not be found"):
        lab.load_pipeline("nobody-here/no-such-model", cache=False)


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="not in diffusers layout"):
        lab.load_pipeline(str(tmp_path))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not really a pickle")
    with pytest.raises(ValidationError, match=r"pickle checkpoint.*allow_pickle=True"):
        lab.load_pipeline(str(path))


def test_folder_with_only_pickle_weights_is_refused(tmp_path, sd15):
    folder = tmp_path / "pickled"
    sd15.save_pretrained(folder, safe_serialization=False)
    for p in folder.rglob("*.safetensors"):
        p.unlink()
    assert any(folder.rglob("*.bin"))
    with pytest.raises(ValidationError, match=r"only pickle weights.*allow_pickle=True"):
        lab.load_pipeline(str(folder), cache=False)


def test_other_file_types_are_refused(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("x")
    with pytest.raises(ValidationError, match=r"must be a .safetensors checkpoint"):
        lab.load_pipeline(str(path))


@pytest.mark.parametrize(
    "model,cls,call,size",
    [
        ("tiny/sd15", "StableDiffusionImg2ImgPipeline", {}, (64, 64)),
        ("tiny/sdxl", "StableDiffusionXLImg2ImgPipeline", {}, (64, 64)),
        ("tiny/sdxl-refiner", "StableDiffusionXLImg2ImgPipeline", {"aesthetic_score": 6.0}, (64, 64)),
        ("tiny/kandinsky22", "KandinskyV22Img2ImgCombinedPipeline",
         {"height": 64, "width": 64, "prior_num_inference_steps": 2}, (64, 64)),
        ("tiny/sd-x2-latent-upscaler", "StableDiffusionLatentUpscalePipeline", {}, (128, 128)),
        ("tiny/sd-x4-upscaler", "StableDiffusionUpscalePipeline", {}, (256, 256)),
    ],
)
def test_every_tiny_model_loads_through_load_pipeline(model, cls, call, size, init):
    pipe = lab.load_pipeline(model)
    assert type(pipe).__name__ == cls
    kwargs = {"prompt": "a cat", "image": init, "num_inference_steps": 3, **call}
    if "strength" in __import__("inspect").signature(pipe.__call__).parameters:
        kwargs["strength"] = 0.7
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == size


def test_tiny_controlnet_through_the_controlnet_option(init):
    pipe = lab.load_pipeline("tiny/sd15", controlnet=str(lab.tiny_model_path("tiny/controlnet-sd15")))
    assert type(pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    out = pipe(prompt="a cat", image=init, control_image=init, strength=0.7, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (64, 64)


def _fp16_opts():
    from img2img_lab.loaders import DEFAULT_OPTIONS

    return {**DEFAULT_OPTIONS, "dtype": torch.float16, "device": "cpu"}


def test_variant_auto_takes_fp16_weights_when_the_repo_has_them(tmp_path, sd15):
    from diffusers import AutoPipelineForImage2Image

    from img2img_lab.loaders import _from_pretrained_with_variant

    folder = tmp_path / "fp16-only"
    sd15.save_pretrained(folder, variant="fp16")
    assert any(p.name.endswith(".fp16.safetensors") for p in folder.rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback note: the variant was there
        pipe = _from_pretrained_with_variant(AutoPipelineForImage2Image.from_pretrained, str(folder), _fp16_opts())
    assert pipe.unet.dtype == torch.float16


def test_variant_auto_falls_back_with_a_note(tmp_path, sd15):
    from diffusers import AutoPipelineForImage2Image

    from img2img_lab.loaders import _from_pretrained_with_variant

    folder = tmp_path / "plain"
    sd15.save_pretrained(folder)
    with pytest.warns(UserWarning, match="has no 'fp16' variant"):
        pipe = _from_pretrained_with_variant(AutoPipelineForImage2Image.from_pretrained, str(folder), _fp16_opts())
    assert pipe.unet.dtype == torch.float16


def test_controlnet_option_takes_a_tiny_model_name(init):
    pipe = lab.load_pipeline("tiny/sd15", controlnet="tiny/controlnet-sd15")
    assert type(pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    with pytest.raises(ValidationError, match="not an embedded tiny model"):
        lab.load_pipeline("tiny/sd15", controlnet="tiny/controlnet-sd99")


def test_remote_code_is_never_an_option():
    for option in ("trust_remote_code", "custom_pipeline"):
        with pytest.raises(ValidationError, match=f"unknown option `{option}`"):
            lab.load_pipeline("tiny/sd15", **{option: True})


# --------------------------------------------------------------------------------------------
# an unreachable or offline hub: one probe, no retries, one clear line


def _cache_as_hub_repo(folder, repo_id: str, cache_dir) -> None:
    """Put a diffusers folder into a Hugging Face cache as if `repo_id` had been downloaded."""
    import shutil

    commit = "0" * 40
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit, dirs_exist_ok=True)


class _CountingServer:
    """A TCP server that counts the connections it accepts and closes each one at once."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.close()


_UNREACHABLE_SCRIPT = r"""
import json, socket
import img2img_lab as lab
from img2img_lab.control import depth_estimator
from img2img_lab.errors import ValidationError

attempts = []
original = socket.socket.connect
socket.socket.connect = lambda self, address: attempts.append(address) or original(self, address)
out, counts = {}, {}
for name, call in [
    ("model", lambda: lab.load_pipeline("some-org/not-a-real-model")),
    ("controlnet", lambda: lab.load_pipeline("tiny/sd15", controlnet="some-org/no-controlnet")),
    ("vae", lambda: lab.load_pipeline("tiny/sd15", vae="some-org/no-vae")),
    ("prior", lambda: lab.load_pipeline("tiny/kandinsky22", prior="some-org/no-prior")),
    ("depth", lambda: depth_estimator("some-org/no-depth-model")),
]:
    before = len(attempts)
    try:
        call()
        out[name] = "loaded"
    except ValidationError as exc:
        out[name] = str(exc)
    counts[name] = len(attempts) - before
before = len(attempts)
out["cached"] = type(lab.load_pipeline("tiny-org/cached-sd15")).__name__
counts["cached"] = len(attempts) - before
print("RESULT " + json.dumps({"out": out, "counts": counts}))
"""


@pytest.mark.heavy
def test_unreachable_hub_is_probed_once_without_retries(tmp_path):
    """Every hub-id load path fails at once: one accepted connection in all, not ~6 retries each."""
    import json
    import os
    import subprocess
    import sys

    hf_home = tmp_path / "hf"
    _cache_as_hub_repo(lab.tiny_model_path("tiny/sd15"), "tiny-org/cached-sd15", hf_home / "hub")
    server = _CountingServer()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.port}", HF_HOME=str(hf_home), OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-c", _UNREACHABLE_SCRIPT], env=env, capture_output=True,
                              text=True, timeout=600)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    counts, result = result["counts"], result["out"]
    # the one probe, then nothing: diffusers/transformers are never sent to the unreachable hub
    assert {name: counts[name] for name in ("model", "controlnet", "vae", "prior", "depth")} == {
        "model": 1, "controlnet": 0, "vae": 0, "prior": 0, "depth": 0}
    # a cached id loads with local_files_only=True; huggingface_hub itself may try once to fetch its
    # user-agent registry (one attempt, cached per process), never a retry loop
    assert counts["cached"] <= 1
    assert server.accepted == sum(counts.values())
    ids = {"model": "some-org/not-a-real-model", "controlnet": "some-org/no-controlnet", "vae": "some-org/no-vae",
           "prior": "some-org/no-prior", "depth": "some-org/no-depth-model"}
    for name, repo_id in ids.items():
        message = result[name]
        assert repr(repo_id) in message and "\n" not in message
        assert "can't be reached" in message and f"127.0.0.1:{server.port}" in message
        assert "HF_HUB_OFFLINE=1" in message and "local folder" in message
    assert "tiny/sd15" in result["model"] and "tiny/controlnet-sd15" in result["controlnet"]
    assert result["cached"] == "StableDiffusionImg2ImgPipeline"  # cached hub ids still load


@pytest.fixture
def count_connections(monkeypatch):
    """Counts every outgoing socket connection attempt of this process."""
    import socket

    attempts = []
    original = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: attempts.append(address) or 1)
    return attempts


@pytest.mark.parametrize(
    "options,what,repo_id",
    [
        ({}, "model", "nobody-here/no-such-model"),
        ({"controlnet": "nobody-here/no-controlnet"}, "controlnet", "nobody-here/no-controlnet"),
        ({"vae": "nobody-here/no-vae"}, "vae", "nobody-here/no-vae"),
    ],
)
def test_offline_hub_id_not_in_the_cache_fails_at_once(options, what, repo_id, count_connections):
    model = options and "tiny/sd15" or repo_id
    with pytest.raises(ValidationError) as info:
        lab.load_pipeline(model, cache=False, **options)
    message = str(info.value)
    assert message.startswith(f"`{what}` {repo_id!r} could not be found")
    assert "HF_HUB_OFFLINE" in message and "local folder" in message and "\n" not in message
    assert count_connections == []


def test_offline_prior_and_depth_model_not_in_the_cache_fail_at_once(count_connections):
    from img2img_lab.control import depth_estimator

    with pytest.raises(ValidationError, match=r"^`prior` 'nobody-here/no-prior' could not be found.*HF_HUB_OFFLINE"):
        lab.load_pipeline("tiny/kandinsky22", prior="nobody-here/no-prior", cache=False)
    with pytest.raises(ValidationError, match=r"^`model` 'nobody-here/no-depth' could not be found.*local folder"):
        depth_estimator("nobody-here/no-depth")
    assert count_connections == []


@pytest.mark.equality
def test_offline_cached_hub_id_loads_from_the_cache(count_connections, sd15, init):
    from huggingface_hub import constants

    _cache_as_hub_repo(lab.tiny_model_path("tiny/sd15"), "tiny-org/offline-sd15", Path(constants.HF_HUB_CACHE))
    pipe = lab.load_pipeline("tiny-org/offline-sd15", cache=False)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    kwargs = dict(prompt="a cat", image=init, strength=0.5, num_inference_steps=2)
    ours = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images[0]
    direct = sd15(**kwargs, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(direct))
    assert count_connections == []


def test_shared_layout_rows_and_pag_where_there_is_none_say_what_to_load():
    with pytest.raises(ValidationError, match=r"`model` 'tiny/sd-pag': the sd-pag row .*load 'tiny/sd15' with enable_pag=True"):
        lab.load_pipeline("tiny/sd-pag")
    with pytest.raises(ValidationError, match=r"load 'tiny/flux' with controlnet='tiny/controlnet-flux'"):
        lab.load_pipeline("tiny/flux-controlnet")
    with pytest.raises(ValidationError, match=r"^`enable_pag`=True: FluxPipeline \('tiny/flux'\) has no PAG variant.*sd-pag"):
        lab.load_pipeline("tiny/flux", enable_pag=True)
