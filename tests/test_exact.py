"""The reproducibility promise as it really holds, and the exact mode that users choose per sweep.

- a cell run as one call (`batched=False`, `exact=True`) equals the direct diffusers call and its
  explorer snippet bit for bit, at whatever thread count both run (`make test` reruns the
  `equality` tests at 1 and 16 threads);
- a batched cell equals it within `vocab.BATCHED_TOLERANCE` 8-bit levels;
- `exact=True` / `--exact`: one call per cell under deterministic algorithms, recorded per row.
"""

import numpy as np
import pandas as pd
import pytest
import torch

import img2img_lab as lab
from img2img_lab import runner
from img2img_lab.cli import main
from img2img_lab.errors import ValidationError
from img2img_lab.store import SweepStore
from img2img_lab.vocab import BATCHED_TOLERANCE
from img2img_lab.widgets import code_snippet

SPEC = dict(model="tiny/sd15", prompt="a cat", image="astronaut", strength=[0.5, 0.8], guidance_scale=5.0,
            num_inference_steps=3, scheduler="euler", height=64, width=64)


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exact")
    return lab.run_sweep(lab.SweepSpec.from_dict(SPEC), out, progress=False, exact=True)


@pytest.mark.equality
def test_exact_cells_equal_their_snippet_bit_for_bit(exact_run):
    df = exact_run.df
    assert df["exact"].eq(True).all() and df["batch_size"].eq(1).all()
    assert df["threads"].eq(torch.get_num_threads()).all()
    for i in range(len(df)):
        code = code_snippet(exact_run, i)
        assert code.startswith("# This cell ran in exact mode (one call, deterministic algorithms)")
        assert "torch.use_deterministic_algorithms(True, warn_only=True)" in code
        namespace = {}
        try:
            exec(code, namespace)
        finally:
            torch.use_deterministic_algorithms(False)
        np.testing.assert_array_equal(np.asarray(namespace["image"]), np.asarray(exact_run.image(i)))


@pytest.mark.equality
def test_one_call_cells_equal_the_plain_diffusers_call(exact_run):
    pipe = lab.load_pipeline("tiny/sd15", scheduler="euler")
    init = lab.load_image("astronaut", size=(64, 64))
    for i, row in exact_run.df.iterrows():
        direct = pipe(prompt="a cat", image=init, strength=float(row["strength"]), guidance_scale=5.0,
                      num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(int(row["seed"]))).images[0]
        np.testing.assert_array_equal(np.asarray(direct), np.asarray(exact_run.image(i)))


def test_batched_cells_stay_within_the_stated_tolerance_and_say_so(exact_run, tmp_path):
    batched = lab.run_sweep(lab.SweepSpec.from_dict(SPEC), tmp_path, progress=False)
    assert batched.df["batch_size"].gt(1).all() and batched.df["exact"].eq(False).all()
    for key in exact_run.df["key"]:
        a = np.asarray(exact_run.image(key)).astype(int)
        b = np.asarray(batched.image(key)).astype(int)
        assert np.abs(a - b).max() <= BATCHED_TOLERANCE
    code = code_snippet(batched, 0)
    assert code.startswith("# This cell ran in a batch of 2: this code gives its image within 1 8-bit level")
    assert "exact=True" in code.splitlines()[1] and "use_deterministic_algorithms" not in code


def test_an_exact_run_recomputes_what_a_batched_run_left(tmp_path, monkeypatch):
    spec = lab.SweepSpec.from_dict(SPEC)
    first = lab.run_sweep(spec, tmp_path, progress=False)
    # a metric added to the batched table must not stay beside the recomputed image
    SweepStore(tmp_path).write_table(first.df.assign(ssim=0.123))
    calls = []
    original = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = lab.run_sweep(spec, tmp_path, progress=False, exact=True)
    assert len(calls) == 2 and again.df["exact"].eq(True).all() and len(again.df) == 2
    assert again.df["ssim"].isna().all()
    # exact cells satisfy a later run of either mode: nothing is recomputed
    calls.clear()
    lab.run_sweep(spec, tmp_path, progress=False)
    lab.run_sweep(spec, tmp_path, progress=False, exact=True)
    assert calls == []


def test_deterministic_mode_is_on_during_the_calls_and_restored(tmp_path, monkeypatch):
    seen = []
    original = runner.run_cell

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "run_cell", spy)
    lab.run_sweep(lab.SweepSpec.from_dict({**SPEC, "strength": 0.5}), tmp_path, progress=False, exact=True)
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()


def test_exact_must_be_a_bool(tmp_path):
    with pytest.raises(ValidationError, match=r"`exact` must be True or False, got 'yes'"):
        lab.run_sweep(lab.SweepSpec.from_dict(SPEC), tmp_path, progress=False, exact="yes")


def test_cli_exact_records_the_mode(tmp_path):
    spec = tmp_path / "spec.yaml"
    lab.SweepSpec.from_dict({**SPEC, "strength": 0.5}).to_yaml(spec)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--exact"]) == 0
    assert "exact: true" in (tmp_path / "out" / "spec.yaml").read_text()
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["exact"].tolist() == [True] and df["batch_size"].tolist() == [1]


def test_exact_is_a_spec_key_that_round_trips_and_is_checked(tmp_path):
    spec = lab.SweepSpec.from_dict({**SPEC, "strength": 0.5, "exact": True})
    assert spec.exact is True and "exact: true" in spec.to_yaml()
    assert lab.SweepSpec.from_yaml(spec.to_yaml()) == spec
    with pytest.raises(ValidationError, match=r"`exact` must be true or false, got 'yes'"):
        lab.SweepSpec.from_dict({**SPEC, "exact": "yes"})
    # the spec's mode is the run's, unless the call says otherwise
    assert lab.run_sweep(spec, tmp_path / "a", progress=False).df["exact"].tolist() == [True]
    assert lab.run_sweep(spec, tmp_path / "b", progress=False, exact=False).df["exact"].tolist() == [False]


def test_exact_chain_sweeps_record_the_mode(tmp_path):
    chain = lab.Chain(stages=[("tiny/sd15", {"prompt": "a cat", "strength": 0.5, "num_inference_steps": 2})],
                      image="astronaut")
    result = lab.sweep_chain(chain, {"seed": [0, 1]}, tmp_path, progress=False, exact=True)
    assert result.df["exact"].eq(True).all() and result.df["status"].eq("ok").all()
    assert result.df["threads"].eq(torch.get_num_threads()).all()


def test_sizes_of_every_model_are_checked_before_any_cell_runs(tmp_path, monkeypatch):
    calls = []
    original = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: calls.append(1) or original(*a, **k))
    spec = lab.SweepSpec.from_dict({**SPEC, "strength": 0.5, "model": ["tiny/sd15", "tiny/kandinsky22"],
                                    "height": 72, "width": 72, "scheduler": None})
    with pytest.raises(ValidationError, match=r"`height` must be a multiple of 16 for Kandinsky.*got 72"):
        lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    assert calls == [] and not list(tmp_path.glob("images/*.png"))


def test_an_init_image_the_pipeline_rounds_is_said():
    from types import SimpleNamespace

    from PIL import Image

    # tiny models run at 64x64 unless told otherwise, so the rounding is checked on the rule itself
    pipe = lab.load_pipeline("tiny/sd15")
    cell = SimpleNamespace(cell=SimpleNamespace(call={}), image=Image.new("RGB", (60, 68)), row={"image": "pic.png"})
    sized = SimpleNamespace(cell=SimpleNamespace(call={"height": 64, "width": 64}), image=cell.image, row=cell.row)
    assert runner.rounding_notes(pipe, [cell, sized]) == [
        "`image` 'pic.png' is 60x68 px, not a multiple of 8: StableDiffusionImg2ImgPipeline rounds it down to "
        "56x64 (the rows record that size; set height/width to choose another)"]
    # what the note says is what diffusers does
    out = pipe(prompt="a cat", image=cell.image, strength=0.5, num_inference_steps=2,
               generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert out.size == (56, 64)


@pytest.mark.equality
def test_a_lone_cell_of_a_batched_sweep_is_one_call(tmp_path):
    spec = lab.SweepSpec.from_dict({**SPEC, "strength": [0.5, 0.6, 0.8]})
    result = lab.run_sweep(spec, tmp_path / "b", progress=False, max_batch_size=2)
    df = result.df
    assert df["batched"].tolist().count(True) == 2 and df["batched"].tolist().count(False) == 1
    lone = df.index[~df["batched"]][0]
    assert df.loc[lone, "batch_size"] == 1
    assert code_snippet(result, lone).startswith("# This cell ran as one call with ")
    exact = lab.run_sweep(spec, tmp_path / "e", progress=False, exact=True)
    np.testing.assert_array_equal(np.asarray(result.image(lone)), np.asarray(exact.image(df.loc[lone, "key"])))
