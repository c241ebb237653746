"""SweepSpec: ranges, validation, grid expansion, YAML, content keys. Pure: no torch, no models."""

import copy
import dataclasses
import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from img2img_lab.errors import ValidationError
from img2img_lab.spec import (
    AXES,
    SCHEDULER_NAMES,
    SweepSpec,
    call_parameters,
    expand_range,
    known_keys,
    option_names,
    parse_set,
)

BASE = {"model": "tiny/sd15", "prompt": "a cat", "image": "cat"}


def make(**kwargs):
    return SweepSpec(**{**BASE, **kwargs})


# --------------------------------------------------------------------------------------------
# purity


def test_module_imports_neither_torch_nor_diffusers():
    code = (
        "import sys; from img2img_lab.spec import SweepSpec, call_parameters; "
        "s = SweepSpec.from_dict({'model': 'tiny/sd15', 'prompt': 'p', 'image': 'cat', 'eta': 0.0}); "
        "[c.key('h') for c in s.cells()]; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


PACKAGE = Path(__file__).resolve().parent.parent / "img2img_lab"
SPEC_MODULES = ("vocab", "frozen", "ranges", "validation", "cells", "spec")


def _package_imports(name: str) -> list[tuple[str, bool]]:
    """(imported package module, at the module's top) for every `from .x import` in a module."""
    import ast

    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            targets = [node.module] if node.module else [a.name for a in node.names]
            out += [(t.split(".")[0], id(node) in top) for t in targets]
    return out


def test_the_vocabulary_imports_nothing_of_the_package():
    assert _package_imports("vocab") == []


def test_the_spec_modules_import_each_other_at_the_top_in_one_direction():
    # vocab <- frozen <- ranges <- validation <- cells <- spec: each imports only those before it
    # (and errors, and the model-family registry, which imports only errors), all at the module
    # top: no cycle, nothing hidden in a function
    for i, name in enumerate(SPEC_MODULES):
        imports = _package_imports(name)
        assert all(top for _, top in imports), (name, imports)
        assert {m for m, _ in imports} <= {"errors", "families", *SPEC_MODULES[:i]}, (name, imports)


def test_effective_steps_is_diffusers_arithmetic():
    from img2img_lab.vocab import effective_steps

    assert effective_steps({"num_inference_steps": 50, "strength": 0.3}) == 15
    assert effective_steps({"num_inference_steps": 10, "strength": 1.0}) == 10
    assert effective_steps({"num_inference_steps": 3, "strength": 0.2}) == 0
    assert effective_steps({"num_inference_steps": 7}) == 7  # no strength (upscalers): every step runs
    assert effective_steps({"strength": 0.5}) is None  # the pipeline's default step count: known once loaded
    assert make(strength=0.3, num_inference_steps=50).cells()[0].effective_steps == 15


@pytest.mark.parametrize("text,path,hub", [
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", False, True),
    ("owner/name.v2", False, True),
    ("./models/sd", True, False),
    ("../sd", True, False),
    ("/abs/sd", True, False),
    ("~/sd", True, False),
    (".cache/sd", True, False),
    ("C:\\models\\sd", True, False),
    ("models\\sd", True, False),
    ("a/b/c", True, False),
    ("model.safetensors", True, False),
    ("owner/model.ckpt", True, True),  # both forms: a checkpoint file name wins (loaders test the path first)
    ("not a model", False, False),
    ("", False, False),
])
def test_what_a_path_and_a_hub_id_look_like(text, path, hub):
    from img2img_lab.vocab import looks_like_hub_id, looks_like_path

    assert looks_like_path(text) is path
    assert looks_like_hub_id(text) is hub


def test_metric_columns_have_one_definition():
    from img2img_lab import metrics, plots, result
    from img2img_lab.vocab import METRIC_NAMES, is_metric_column

    assert metrics.METRIC_NAMES is METRIC_NAMES
    assert result.is_metric_column is is_metric_column and plots.is_metric_column is is_metric_column
    assert all(is_metric_column(c) for c in (*METRIC_NAMES, "metric_sharpness"))
    assert not any(is_metric_column(c) for c in ("strength", "seconds", "metrics", 3))
    import pandas as pd

    df = pd.DataFrame({"strength": [0.5], "ssim": [0.9], "metric_mine": [1.0], "status": ["ok"]})
    sweep = result.SweepResult(df=df, out_dir=Path("."))
    assert sweep.metrics == ["ssim", "metric_mine"] and sweep.parameters == ["strength"]


def test_call_parameters_cover_the_supported_pipelines():
    params = call_parameters()
    for name in ("controlnet_conditioning_scale", "eta", "aesthetic_score", "prior_guidance_scale",
                 "height", "width", "noise_level", "control_image", "original_size", "clip_skip"):
        assert name in params
    for name in ("generator", "latents", "prompt_embeds", "callback_on_step_end", "return_dict",
                 "output_type", "num_images_per_prompt", "strength", "image", "prompt"):
        assert name not in params
    assert params["eta"][0] == "float" and params["noise_level"][0] == "int"
    assert params["original_size"][1] is tuple


def test_call_keywords_and_options_do_not_overlap():
    assert not set(call_parameters()) & set(option_names())
    assert not set(AXES) & (set(call_parameters()) | set(option_names()))
    assert "scheduler" not in option_names()


def test_scheduler_names_point_at_diffusers_classes():
    # read diffusers' export list as text: importing diffusers would import torch
    root = Path(importlib.util.find_spec("diffusers").submodule_search_locations[0])
    exported = (root / "__init__.py").read_text()
    for name in ("euler", "euler-a", "dpm++2m", "dpm++2m-karras", "ddim", "pndm", "lms", "heun", "unipc", "ddpm"):
        assert name in SCHEDULER_NAMES
    for name, (cls_name, overrides) in SCHEDULER_NAMES.items():
        assert f'"{cls_name}"' in exported, name
        assert isinstance(overrides, dict)
    assert SCHEDULER_NAMES["dpm++2m-karras"] == ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True})


# --------------------------------------------------------------------------------------------
# grid expansion


def test_defaults_and_single_cell():
    spec = make()
    # silent: each pipeline's own defaults (resolved when it is loaded; the row records them)
    assert (spec.strength, spec.guidance_scale, spec.num_inference_steps, spec.seed) == ((None,), (None,), (None,), (0,))
    assert spec.negative_prompt == (None,) and spec.scheduler == (None,)
    assert len(spec) == 1 and spec.swept == ()
    (cell,) = spec.cells()
    assert dict(cell.call) == {"prompt": "a cat", "negative_prompt": None, "strength": None,
                               "guidance_scale": None, "num_inference_steps": None,
                               "height": 64, "width": 64}  # a tiny model without a size: TINY_SIZE
    assert (cell.model, cell.image, cell.seed, cell.scheduler) == ("tiny/sd15", "cat", 0, None)
    assert cell.effective_steps is None
    assert SweepSpec.from_yaml(spec.to_yaml()) == spec
    assert make(strength=[None, 0.5]).strength == (None, 0.5)  # the pipeline's default beside a value


def test_cells_last_axis_varies_fastest():
    spec = make(strength=[0.4, 0.8], guidance_scale=[5, 7.5])
    got = [(c.call["strength"], c.call["guidance_scale"]) for c in spec.cells()]
    assert got == [(0.4, 5.0), (0.4, 7.5), (0.8, 5.0), (0.8, 7.5)]
    assert spec.swept == ("strength", "guidance_scale")
    assert dict(spec.cells()[1].swept) == {"strength": 0.4, "guidance_scale": 7.5}


def test_cell_order_over_every_axis_then_params_by_name():
    spec = make(model=["tiny/sd15", "tiny/sdxl"], image=["cat", "astronaut"], prompt=["a", "b"],
                negative_prompt=[None, "blurry"], seed=[1, 2], num_inference_steps=[10, 20],
                scheduler=["euler", "ddim"], strength=[0.5, 0.9], guidance_scale=[3, 7],
                params={"eta": [0.0, 1.0], "aesthetic_score": [1, 2]})
    assert len(spec) == 2**11 == len(spec.cells())
    order = ("model", "image", "prompt", "negative_prompt", "seed", "num_inference_steps", "scheduler",
             "strength", "guidance_scale", "aesthetic_score", "eta")
    assert spec.swept == order
    cells = spec.cells()

    def point(c):
        values = {"model": c.model, "image": c.image, "seed": c.seed, "scheduler": c.scheduler, **c.call}
        return tuple(values[k] for k in order)

    assert point(cells[0]) == ("tiny/sd15", "cat", "a", None, 1, 10, "euler", 0.5, 3.0, 1, 0.0)
    assert point(cells[-1]) == ("tiny/sdxl", "astronaut", "b", "blurry", 2, 20, "ddim", 0.9, 7.0, 2, 1.0)
    assert (cells[1].call["eta"], cells[1].call["aesthetic_score"]) == (1.0, 1)
    assert (cells[2].call["eta"], cells[2].call["aesthetic_score"]) == (0.0, 2)
    assert cells[2**10].model == "tiny/sdxl" and cells[2**10 - 1].model == "tiny/sd15"
    assert len({point(c) for c in cells}) == len(cells)


def test_lists_become_tuples_and_numbers_their_type():
    spec = make(strength=[1, 0.5], guidance_scale=7, num_inference_steps=50.0, seed=[3])
    assert spec.strength == (1.0, 0.5) and all(type(v) is float for v in spec.strength)
    assert spec.guidance_scale == (7.0,) and type(spec.guidance_scale[0]) is float
    assert spec.num_inference_steps == (50,) and type(spec.num_inference_steps[0]) is int
    assert spec.prompt == ("a cat",) and spec.image == ("cat",)
    assert make(image=Path("/tmp/x.png")).image == ("/tmp/x.png",)


def test_spec_is_frozen_hashable_and_picklable():
    spec = SweepSpec.from_dict({**BASE, "eta": 0.0, "offload": "model"})
    assert hash(spec) == hash(SweepSpec.from_dict({**BASE, "offload": "model", "eta": 0.0}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.strength = 0.5
    with pytest.raises(TypeError):
        spec.params["eta"] = (1.0,)
    with pytest.raises(TypeError):
        spec.options.update(offload=None)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) == spec
    assert hash(spec.cells()[0]) == hash(copy.deepcopy(spec.cells()[0]))


def test_list_valued_call_arguments_are_wrapped_and_thawed_for_the_pipeline():
    spec = SweepSpec.from_dict({**BASE, "controlnet_conditioning_scale": [[0.5, 1.0]], "original_size": [[1024, 768]],
                                "cross_attention_kwargs": {"scale": 0.5}})
    assert len(spec) == 1
    call = spec.cells()[0].call
    assert call["controlnet_conditioning_scale"] == [0.5, 1.0]  # diffusers checks isinstance(list)
    assert call["original_size"] == (1024, 768)  # SDXL adds tuples: must stay a tuple
    assert call["cross_attention_kwargs"] == {"scale": 0.5}
    assert len(SweepSpec.from_dict({**BASE, "controlnet_conditioning_scale": [0.5, 1.0]})) == 2


# --------------------------------------------------------------------------------------------
# ranges

RANGES = [
    ("strength", {"start": 0.3, "stop": 0.9, "step": 0.2}, (0.3, 0.5, 0.7, 0.9)),
    ("strength", {"start": 0.3, "stop": 0.9, "num": 4}, (0.3, 0.5, 0.7, 0.9)),
    ("strength", "0.3-0.9 (+0.2)", (0.3, 0.5, 0.7, 0.9)),
    ("strength", "0.3-0.9 [4]", (0.3, 0.5, 0.7, 0.9)),
    ("strength", "0.1-0.3 (+0.1)", (0.1, 0.2, 0.3)),
    ("strength", "0.9-0.3 (-0.2)", (0.9, 0.7, 0.5, 0.3)),
    ("strength", {"start": 0.2, "stop": 1, "num": 5}, (0.2, 0.4, 0.6, 0.8, 1.0)),
    ("guidance_scale", {"start": 0, "stop": 1, "num": 4}, (0.0, 1 / 3, 2 / 3, 1.0)),
    ("strength", "0.2-0.9 (+0.3)", (0.2, 0.5, 0.8)),  # stops before stop when the step overshoots
    ("strength", "0.3, 0.5", (0.3, 0.5)),
    ("strength", [0.1, "0.5-0.9 (+0.2)"], (0.1, 0.5, 0.7, 0.9)),
    ("strength", [{"start": 0.5, "stop": 0.6, "step": 0.05}], (0.5, 0.55, 0.6)),
    ("guidance_scale", "5-9", (5.0, 6.0, 7.0, 8.0, 9.0)),
    ("guidance_scale", "1.5-7.5 (+1.5)", (1.5, 3.0, 4.5, 6.0, 7.5)),
    ("seed", "1-5", (1, 2, 3, 4, 5)),
    ("seed", "0-6 (+3)", (0, 3, 6)),
    ("seed", "1-3, 8", (1, 2, 3, 8)),
    ("seed", "10-1 (-3)", (10, 7, 4, 1)),
    ("seed", {"start": 0, "stop": 2, "step": 1}, (0, 1, 2)),
    ("num_inference_steps", "10-50 [3]", (10, 30, 50)),
    ("num_inference_steps", "10-50 [4]", (10, 23, 37, 50)),  # counts on int axes round half up
    ("num_inference_steps", {"start": 20, "stop": 40, "num": 2}, (20, 40)),
]


@pytest.mark.parametrize("key, value, expected", RANGES)
def test_ranges(key, value, expected):
    got = getattr(make(**{key: value}), key)
    assert got == expected
    assert [repr(v) for v in got] == [repr(v) for v in expected]  # no 0.7000000000000001, ints stay ints


def test_ranges_for_numeric_params():
    spec = SweepSpec.from_dict({**BASE, "controlnet_conditioning_scale": "0.5-1.0 [3]", "noise_level": "10-30 (+10)"})
    assert spec.params["controlnet_conditioning_scale"] == (0.5, 0.75, 1.0)
    assert spec.params["noise_level"] == (10, 20, 30)
    assert all(type(v) is int for v in spec.params["noise_level"])


def test_expand_range_directly():
    assert expand_range({"start": 0.3, "stop": 0.9, "step": 0.2}) == [0.3, 0.5, 0.7, 0.9]
    assert expand_range("1-4", integer=True) == [1, 2, 3, 4]


RANGE_ERRORS = [
    ("strength", {"start": 0.3, "stop": 0.9, "step": 0}, "step must not be 0"),
    ("strength", "0.3-0.9 (-0.2)", "goes away from stop"),
    ("strength", "0.3-0.9", "needs a step"),
    ("strength", {"start": 0.3, "stop": 0.9}, "start, stop and either step or num"),
    ("strength", {"start": 0.3, "stop": 0.9, "step": 0.1, "num": 3}, "start, stop and either step or num"),
    ("strength", {"start": "a", "stop": 0.9, "step": 0.1}, "range start must be a number"),
    ("strength", {"start": 0.3, "stop": 0.9, "num": 0}, "num must be an integer >= 1"),
    ("strength", {"start": 0.0, "stop": 1.0, "step": 1e-9}, "more than 10000"),
    ("seed", "1-2 (+0.5)", "whole numbers"),
    ("seed", "0.5", "must be an integer"),
]


@pytest.mark.parametrize("key, value, message", RANGE_ERRORS)
def test_range_errors(key, value, message):
    with pytest.raises(ValidationError, match=message) as info:
        make(**{key: value})
    assert f"`{key}`" in str(info.value)


# --------------------------------------------------------------------------------------------
# validation: each error names the key and the value

VALIDATION = [
    ({"strength": -0.1}, "strength", "-0.1"),
    ({"strength": 1.5}, "strength", "1.5"),
    ({"strength": float("nan")}, "strength", "nan"),
    ({"strength": "high"}, "strength", "'high'"),
    ({"strength": True}, "strength", "True"),
    ({"strength": [None, None]}, "strength", "None"),  # None alone is the pipeline's default
    ({"strength": [0.5, 0.5]}, "strength", "0.5"),
    ({"strength": []}, "strength", "empty list"),
    ({"guidance_scale": -1}, "guidance_scale", "-1"),
    ({"guidance_scale": float("nan")}, "guidance_scale", "nan"),
    ({"guidance_scale": float("inf")}, "guidance_scale", "inf"),
    ({"guidance_scale": False}, "guidance_scale", "False"),
    ({"num_inference_steps": 0}, "num_inference_steps", "0"),
    ({"num_inference_steps": -1}, "num_inference_steps", "-1"),
    ({"num_inference_steps": 2.5}, "num_inference_steps", "2.5"),
    ({"num_inference_steps": "many"}, "num_inference_steps", "'many'"),
    ({"num_inference_steps": True}, "num_inference_steps", "True"),
    ({"seed": -1}, "seed", "-1"),
    ({"seed": 2**64}, "seed", str(2**64)),
    ({"seed": 1.5}, "seed", "1.5"),
    ({"seed": "random"}, "seed", "'random'"),
    ({"seed": True}, "seed", "True"),
    ({"model": None}, "model", "required"),
    ({"model": ""}, "model", "''"),
    ({"model": 3}, "model", "3"),
    ({"prompt": None}, "prompt", "required"),
    ({"prompt": []}, "prompt", "empty list"),
    ({"prompt": 42}, "prompt", "42"),
    ({"prompt": ["a", None]}, "prompt", "None"),
    ({"negative_prompt": 1.0}, "negative_prompt", "1.0"),
    ({"negative_prompt": []}, "negative_prompt", "empty list"),
    ({"image": None}, "image", "required"),
    ({"image": ""}, "image", "''"),
    ({"image": 7}, "image", "7"),
    ({"scheduler": "eulr"}, "scheduler", "'eulr'"),
    ({"scheduler": 1}, "scheduler", "1"),
    ({"name": 5}, "name", "5"),
    ({"params": {"eta": "lots"}}, "eta", "'lots'"),
    ({"params": {"eta": float("nan")}}, "eta", "nan"),
    ({"params": {"noise_level": 2.5}}, "noise_level", "2.5"),
    ({"params": {"guess_mode": 1}}, "guess_mode", "1"),
    ({"params": {"height": True}}, "height", "True"),
    ({"params": {"prompt_2": 3}}, "prompt_2", "3"),
    ({"params": {"eta": []}}, "eta", "empty list"),
    ({"params": {"cross_attention_kwargs": {"scale": object()}}}, "cross_attention_kwargs", "object"),
    ({"params": {"generator": 0}}, "generator", "0"),
    ({"params": {"strength": 0.5}}, "strength", "axis"),
    ({"params": {"offload": "model"}}, "offload", "options"),
    ({"params": "eta=0"}, "params", "'eta=0'"),
    ({"options": {"scheduler": "euler"}}, "scheduler", "axis"),
    ({"options": {"ofload": "model"}}, "ofload", "did you mean 'offload'"),
    ({"options": {"controlnet": object()}}, "controlnet", "object"),
]


@pytest.mark.parametrize("kwargs, key, value", VALIDATION)
def test_validation_errors_name_key_and_value(kwargs, key, value):
    with pytest.raises(ValidationError) as info:
        make(**kwargs)
    message = str(info.value)
    assert f"`{key}`" in message and value in message, message


def test_validation_error_is_a_value_error():
    with pytest.raises(ValueError):
        make(strength=2)


@pytest.mark.parametrize("strength, steps", [(0.01, 50), (0.0, 50), (0.09, 10), (0.5, 1)])
def test_cell_with_no_denoising_step_is_named(strength, steps):
    with pytest.raises(ValidationError) as info:
        make(strength=[1.0, strength], num_inference_steps=[steps])
    message = str(info.value)
    assert f"strength={strength!r}" in message and f"num_inference_steps={steps}" in message
    assert f"int({steps}*{strength!r})={int(steps * strength)}" in message


def test_effective_step_check_matches_diffusers_float_arithmetic():
    assert make(strength=0.02, num_inference_steps=50).cells()[0].effective_steps == 1
    assert make(strength=0.1, num_inference_steps=10).cells()[0].effective_steps == 1


def test_denoising_start_cells_skip_the_strength_check():
    spec = SweepSpec.from_dict({**BASE, "strength": 0.01, "denoising_start": 0.8, "num_inference_steps": 50})
    assert len(spec) == 1
    with pytest.raises(ValidationError, match="strength=0.01"):
        SweepSpec.from_dict({**BASE, "strength": 0.01, "denoising_start": [0.8, None], "num_inference_steps": 50})


# --------------------------------------------------------------------------------------------
# unknown keys


@pytest.mark.parametrize("key, suggestion", [
    ("strenght", "strength"),
    ("guidance", "guidance_scale"),
    ("num_inference_step", "num_inference_steps"),
    ("negative_promt", "negative_prompt"),
    ("controlnet_conditioning_scal", "controlnet_conditioning_scale"),
    ("ofload", "offload"),
])
def test_unknown_key_suggests_the_closest(key, suggestion):
    with pytest.raises(ValidationError) as info:
        SweepSpec.from_dict({**BASE, key: 1})
    message = str(info.value)
    assert f"`{key}`=1" in message and f"did you mean {suggestion!r}" in message


def test_unknown_key_in_yaml_and_replace():
    with pytest.raises(ValidationError, match="unknown spec key `cfg`"):
        SweepSpec.from_yaml("model: tiny/sd15\nprompt: a\nimage: cat\ncfg: 7\n")
    with pytest.raises(ValidationError, match="unknown spec key `cfg`"):
        make().replace(cfg=7)


# --------------------------------------------------------------------------------------------
# routing, YAML


def test_flat_keys_route_to_params_and_options():
    spec = SweepSpec.from_dict({**BASE, "strength": [0.4, 0.6], "controlnet_conditioning_scale": 0.5,
                                "eta": [0.0, 1.0], "scheduler": "euler", "offload": "model", "dtype": "float16"})
    assert dict(spec.params) == {"controlnet_conditioning_scale": (0.5,), "eta": (0.0, 1.0)}
    assert dict(spec.options) == {"dtype": "float16", "offload": "model"}
    assert spec.scheduler == ("euler",)
    assert spec.swept == ("strength", "eta")
    flat = spec.to_dict()
    assert flat["eta"] == [0.0, 1.0] and flat["controlnet_conditioning_scale"] == 0.5
    assert flat["offload"] == "model" and "params" not in flat and "options" not in flat
    assert SweepSpec.from_dict(flat) == spec
    nested = SweepSpec.from_dict({**BASE, "strength": [0.4, 0.6], "scheduler": "euler",
                                  "params": {"controlnet_conditioning_scale": 0.5, "eta": [0.0, 1.0]},
                                  "options": {"offload": "model", "dtype": "float16"}})
    assert nested == spec
    assert SweepSpec(**BASE, strength=[0.4, 0.6], scheduler="euler", params=dict(spec.params),
                     options=dict(spec.options)) == spec


def test_yaml_round_trip(tmp_path):
    spec = SweepSpec.from_dict({
        "name": "everything", "model": ["tiny/sd15", "tiny/sdxl"], "prompt": ["a cat", "yes", "123", ""],
        "image": ["cat", "https://example.com/a b.png"], "negative_prompt": [None, "blurry, low quality"],
        "seed": [0, 2**64 - 1], "num_inference_steps": "10-30 (+10)", "scheduler": [None, "dpm++2m-karras"],
        "strength": "0.3-0.9 (+0.2)", "guidance_scale": [0, 7.5, 1e-5], "eta": 0.0,
        "controlnet_conditioning_scale": [[0.5, 1.0], 0.25], "original_size": [[1024, 1024]],
        "cross_attention_kwargs": {"scale": 0.5}, "prompt_2": "null", "offload": "model", "dtype": "float16",
        "controlnet": ["a/b", "c/d"],
    })
    text = spec.to_yaml()
    assert "strength: [0.3, 0.5, 0.7, 0.9]" in text
    again = SweepSpec.from_yaml(text)
    assert again == spec and hash(again) == hash(spec)
    assert again.to_yaml() == text
    path = tmp_path / "spec.yaml"
    assert spec.to_yaml(path) == text and path.read_text() == text
    assert SweepSpec.from_yaml(path) == spec == SweepSpec.from_yaml(str(path))
    assert [c.key("h") for c in SweepSpec.from_yaml(path).cells()[:64]] == [c.key("h") for c in spec.cells()[:64]]


def test_to_yaml_refuses_in_memory_images():
    from PIL import Image

    spec = make(image=Image.new("RGB", (8, 8)))
    assert len(spec) == 1
    with pytest.raises(ValidationError, match="`image`"):
        spec.to_yaml()


def test_yaml_python_tags_are_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    text = f"model: tiny/sd15\nprompt: !!python/object/apply:os.system ['touch {marker}']\nimage: cat\n"
    with pytest.raises(ValidationError, match="safely"):
        SweepSpec.from_yaml(text)
    assert not marker.exists()
    with pytest.raises(ValidationError, match="safely"):
        SweepSpec.from_yaml("!!python/object:img2img_lab.spec.SweepSpec {}\n")


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "mapping"),
    ("", "`model` is required"),
    ("model: [unclosed\n", r"spec YAML is malformed at line \d+"),
    ("model: a/b\nprompt: x\nimage: cat\nstrength: 0.3\nstrength: 0.5\n", r"gives `strength` twice \(line 5\)"),
    ("model: !!python/object/apply:os.system [\"true\"]\n", "no Python tags allowed"),
])
def test_bad_yaml(text, message):
    with pytest.raises(ValidationError, match=message):
        SweepSpec.from_yaml(text)


def test_missing_spec_file():
    with pytest.raises(ValidationError, match="no_such.yaml"):
        SweepSpec.from_yaml("no_such.yaml")


def test_from_yaml_overrides_fill_a_missing_model():
    text = "prompt: a cat\nimage: cat\nstrength: [0.4, 0.6]\n"
    with pytest.raises(ValidationError, match="`model` is required"):
        SweepSpec.from_yaml(text)
    assert SweepSpec.from_yaml(text, model="tiny/sd15").model == ("tiny/sd15",)


# --------------------------------------------------------------------------------------------
# content keys


def _key(**kwargs):
    return SweepSpec.from_dict({**BASE, **kwargs}).cells()[0].key("imagehash")


def test_key_is_stable_and_short():
    key = _key()
    assert key == _key() and len(key) == 20 and int(key, 16) >= 0
    # golden values: changing the key definition silently would recompute every stored sweep
    explicit = dict(strength=0.8, guidance_scale=7.5, num_inference_steps=50)
    assert _key(model="stable-diffusion-v1-5/stable-diffusion-v1-5", **explicit) == "b11806eb227190ac2f14"
    # a spec silent on strength/guidance/steps runs with each pipeline's own defaults: another cell
    # (SDXL's defaults are not SD 1.5's), so another key
    assert _key(model="stable-diffusion-v1-5/stable-diffusion-v1-5") == "00dafaa0f953f8133ee9"
    # a tiny model without a size runs at TINY_SIZE: its key is that of the explicit size
    assert _key(**explicit) == _key(height=64, width=64, **explicit) == "fd886b75160818be7a2c"
    assert key == _key(height=64, width=64)


@pytest.mark.parametrize("change", [
    {"model": "tiny/sdxl"}, {"prompt": "a dog"}, {"negative_prompt": ""}, {"negative_prompt": "blurry"},
    {"strength": 0.5}, {"guidance_scale": 7.0}, {"num_inference_steps": 49}, {"seed": 1},
    {"scheduler": "euler"}, {"eta": 0.0}, {"controlnet_conditioning_scale": 0.5}, {"dtype": "float16"},
    {"variant": "fp16"}, {"controlnet": "a/b"}, {"prior": "a/b"}, {"vae": "a/b"}, {"revision": "main"},
])
def test_any_change_changes_the_key(change):
    assert _key(**change) != _key()


def test_key_changes_with_the_image_content_not_its_source():
    spec = make()
    assert spec.cells()[0].key("a") != spec.cells()[0].key("b")
    assert make(image="/elsewhere/cat.png").cells()[0].key("a") == spec.cells()[0].key("a")
    with pytest.raises(ValidationError, match="image_hash"):
        spec.cells()[0].key("")


@pytest.mark.parametrize("change", [
    {"offload": "model"}, {"attention": "sdpa"}, {"compile": True}, {"vae_slicing": True},
    {"device": "cuda"}, {"name": "a title"}, {"variant": "auto"},
])
def test_speed_and_memory_options_keep_the_key(change):
    assert _key(**change) == _key()


def test_key_ignores_dict_order_and_number_spelling():
    a = SweepSpec.from_dict({**BASE, "eta": 0.5, "guidance_rescale": 0.7, "dtype": "fp16", "variant": "fp16"})
    b = SweepSpec.from_dict({"variant": "fp16", "dtype": "float16", "guidance_rescale": 0.7, "eta": 0.5, **BASE})
    assert a.cells()[0].key("h") == b.cells()[0].key("h")
    assert _key(guidance_scale=7) == _key(guidance_scale=7.0) == _key(guidance_scale="7")


def test_same_cell_in_a_larger_spec_has_the_same_key():
    small = make(strength=0.5)
    large = make(strength=[0.3, 0.5, 0.7], seed=0)
    assert small.cells()[0].key("h") == large.cells()[1].key("h")


# --------------------------------------------------------------------------------------------
# replace, parse_set


def test_replace_routes_and_validates():
    spec = make(strength=[0.4, 0.6])
    new = spec.replace(model="tiny/sdxl", strength="0.3-0.5 (+0.1)", eta=0.5, offload="model")
    assert new.model == ("tiny/sdxl",) and new.strength == (0.3, 0.4, 0.5)
    assert dict(new.params) == {"eta": (0.5,)} and dict(new.options) == {"offload": "model"}
    assert spec.strength == (0.4, 0.6) and not spec.params  # the original is unchanged
    assert new.replace(params={}).params == {} and new.replace(options={}).options == {}
    assert spec.replace() == spec
    with pytest.raises(ValidationError, match="`strength` must be in"):
        spec.replace(strength=2)
    with pytest.raises(ValidationError, match="strength=0.01"):
        spec.replace(strength=0.01, num_inference_steps=50)


@pytest.mark.parametrize("text, expected", [
    ("strength=[0.3,0.5]", ("strength", [0.3, 0.5])),
    ("strength=0.3-0.9 (+0.2)", ("strength", "0.3-0.9 (+0.2)")),
    ("strength=0.5", ("strength", 0.5)),
    ("seed=1-4", ("seed", "1-4")),
    ("num_inference_steps=30", ("num_inference_steps", 30)),
    ("negative_prompt=null", ("negative_prompt", None)),
    ("negative_prompt=None", ("negative_prompt", None)),
    ("negative_prompt=[null, blurry]", ("negative_prompt", [None, "blurry"])),
    ("prompt=a cat: cute, 4k", ("prompt", "a cat: cute, 4k")),
    ("prompt=123", ("prompt", "123")),
    ("prompt=", ("prompt", "")),
    ("model=tiny/sd15", ("model", "tiny/sd15")),
    ("eta=1e-3", ("eta", "1e-3")),
    ("offload=model", ("offload", "model")),
    ("vae_tiling=true", ("vae_tiling", True)),
    ("original_size=[[1024, 1024]]", ("original_size", [[1024, 1024]])),
    ("scheduler=dpm++2m", ("scheduler", "dpm++2m")),
])
def test_parse_set(text, expected):
    key, value = parse_set(text)
    assert (key, value) == expected
    make().replace(**{key: value})  # what the CLI does next


@pytest.mark.parametrize("text, message", [
    ("strength", "key=value"),
    ("strength=high", "`strength` must be a number.*got 'high'"),
    ("strength=1.5", "`strength` must be in \\[0, 1\\], got 1.5"),
    ("num_inference_steps=2.5", "`num_inference_steps` must be an integer, got 2.5"),
    ("strenght=0.5", "did you mean 'strength'"),
    ("scheduler=eulr", "did you mean 'euler'"),
    ("strength=[0.3", "not valid YAML"),
])
def test_parse_set_errors(text, message):
    with pytest.raises(ValidationError, match=message):
        parse_set(text)


def test_known_keys():
    keys = known_keys()
    assert set(AXES) | {"name", "eta", "offload", "dtype"} <= set(keys)
    assert "generator" not in keys


def test_key_with_the_run_dtype():
    base = SweepSpec(model="tiny/sd15", prompt="a", image="cat")
    (cell,) = base.cells()
    (explicit,) = base.replace(dtype="fp32").cells()
    assert cell.key("h", "float32") == explicit.key("h", "float32") == explicit.key("h")
    assert cell.key("h", "float16") != cell.key("h", "float32")


def test_constructor_takes_flat_keys_like_yaml():
    spec = SweepSpec(model="tiny/sd15", prompt="a", image="cat", height=64,
                     controlnet_conditioning_scale=[0.5, 1.0], offload="model")
    assert spec == SweepSpec.from_dict({"model": "tiny/sd15", "prompt": "a", "image": "cat", "height": 64,
                                        "controlnet_conditioning_scale": [0.5, 1.0], "offload": "model"})
    assert dict(spec.params) == {"controlnet_conditioning_scale": (0.5, 1.0), "height": (64,)}
    assert dict(spec.options) == {"offload": "model"}
    with pytest.raises(ValidationError, match=r"unknown spec key `strenght`=0.3 \(did you mean 'strength'\?\)"):
        SweepSpec(model="tiny/sd15", prompt="a", image="cat", strenght=0.3)


# --------------------------------------------------------------------------------------------
# clip_skip: refused while the installed transformers/diffusers pair can't run it


def _clip_text_model_has_text_model() -> bool:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        encoder = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_attention_heads=1,
                                               num_hidden_layers=1, vocab_size=8, max_position_embeddings=8))
    return hasattr(encoder, "text_model")


@pytest.fixture
def fresh_clip_skip_check():
    from img2img_lab import validation

    check = validation.clip_skip_broken
    check.cache_clear()
    yield validation
    check.cache_clear()


def test_clip_skip_is_refused_naming_the_installed_versions(fresh_clip_skip_check):
    import importlib.metadata as md

    if _clip_text_model_has_text_model():
        assert make(clip_skip=2).params["clip_skip"] == (2,)  # this pair runs it: accepted
        return
    for value in (2, [1, 2], [None, 1]):
        with pytest.raises(ValidationError) as info:
            make(clip_skip=value)
        message = str(info.value)
        assert message.startswith("`clip_skip`=")
        assert f"transformers {md.version('transformers')}" in message
        assert f"diffusers {md.version('diffusers')}" in message and "text_model" in message
    assert make(clip_skip=None).params["clip_skip"] == (None,)  # no skipping asked: fine


def test_clip_skip_check_is_a_feature_check(fresh_clip_skip_check, monkeypatch):
    """Works again as soon as CLIPTextModel has `text_model` again (no version list)."""
    import torch
    import transformers

    class WithTextModel(transformers.CLIPTextModel):
        def __init__(self, config):
            super().__init__(config)
            self.text_model = torch.nn.Identity()

    monkeypatch.setattr(transformers, "CLIPTextModel", WithTextModel)
    assert make(clip_skip=[1, 2]).params["clip_skip"] == (1, 2)

    class WithoutTextModel(transformers.CLIPTextModel):
        def __getattr__(self, name):
            if name == "text_model":
                raise AttributeError(name)
            return super().__getattr__(name)

    fresh_clip_skip_check.clip_skip_broken.cache_clear()
    monkeypatch.setattr(transformers, "CLIPTextModel", WithoutTextModel)
    with pytest.raises(ValidationError, match=r"`clip_skip`=1 can't be used.*transformers .* diffusers "):
        SweepSpec.from_dict({**BASE, "clip_skip": 1})


def test_clip_skip_is_refused_on_the_cli_before_any_model_loads(tmp_path, capsys, monkeypatch,
                                                                fresh_clip_skip_check):
    from img2img_lab import cli

    monkeypatch.setattr(fresh_clip_skip_check, "clip_skip_broken", lambda: "the test says so")
    monkeypatch.setattr("img2img_lab.runner.run_sweep", lambda *a, **k: pytest.fail("ran a sweep"))
    spec = tmp_path / "s.yaml"
    spec.write_text("model: tiny/sd15\nprompt: a cat\nimage: cat\n")
    assert cli.main(["sweep", str(spec), "--set", "clip_skip=2", "--out", str(tmp_path / "out")]) == 2
    assert "`clip_skip`=2 can't be used: the test says so" in capsys.readouterr().err


def test_yaml_reads_one_key_a_line_with_values_on_it():
    spec = make(strength=[0.4, 0.6], negative_prompt=[None, "blurry"])
    lines = spec.to_yaml().splitlines()
    assert "strength: [0.4, 0.6]" in lines and "negative_prompt: [null, blurry]" in lines
    assert "model: tiny/sd15" in lines and not any(line.startswith(("{", "- ")) for line in lines)
    assert SweepSpec.from_dict(yaml.safe_load(spec.to_yaml())) == spec
    single = make().to_yaml()
    assert single.startswith("model: tiny/sd15\n") and "{" not in single  # not one flow-style line
