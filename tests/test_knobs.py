"""knobs.check_knobs: which arguments a mixed-family sweep records as not applied, before any cell runs."""

import pytest

from img2img_lab.errors import ValidationError
from img2img_lab.families import tiny_call
from img2img_lab.knobs import check_knobs

SD = "StableDiffusionImg2ImgPipeline"
KONTEXT = "FluxKontextPipeline"
KLEIN = "Flux2KleinPipeline"


def _calls(**by_model):
    """model -> (class, its cells' calls): each tiny twin's cells carry its own options, as cells.py makes them."""
    return {model: (cls, [{**call, **tiny_call(model)} for call in calls]) for model, (cls, calls) in by_model.items()}


def test_a_twins_own_options_are_not_the_sweeps_axes():
    calls = _calls(**{"tiny/sd15": (SD, [{"prompt": "a", "strength": 0.5}]),
                      "tiny/flux-kontext": (KONTEXT, [{"prompt": "a", "strength": 0.5}]),
                      "tiny/flux2-klein": (KLEIN, [{"prompt": "a", "strength": 0.5}])})
    assert {"max_area", "_auto_resize"} <= set(tiny_call("tiny/flux-kontext"))
    assert "text_encoder_out_layers" in tiny_call("tiny/flux2-klein")
    skipped = check_knobs(calls)
    # strength, set by the spec, is not applied where the pipeline has none; Kontext's max_area and
    # FLUX.2's text-encoder layers are the twins' own, so not recorded against the other models
    assert skipped == {"tiny/sd15": set(), "tiny/flux-kontext": {"strength"}, "tiny/flux2-klein": {"strength"}}


def test_an_option_the_spec_sets_is_recorded_where_it_does_not_apply():
    calls = _calls(**{"tiny/sd15": (SD, [{"prompt": "a", "max_area": 4096}]),
                      "tiny/flux-kontext": (KONTEXT, [{"prompt": "a", "max_area": 4096}])})
    assert check_knobs(calls)["tiny/sd15"] == {"max_area"}


def test_an_argument_no_model_takes_is_an_error():
    with pytest.raises(ValidationError, match="`prompt_3`=.b. is not an argument of any model"):
        check_knobs(_calls(**{"tiny/sd15": (SD, [{"prompt": "a", "prompt_3": "b"}]),
                              "tiny/flux-kontext": (KONTEXT, [{"prompt": "a"}])}))
