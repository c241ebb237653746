"""The catalog of families (`lab.families()`): one row per key-table entry, diffusers' mapping
covered, knobs and defaults as the installed pipelines' `__call__` says, the README's table current."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import img2img_lab as lab
from img2img_lab import catalog
from img2img_lab.families import entries, family_of_class
from img2img_lab.knobs import known_class, signature_defaults
from img2img_lab.tiny import TINY_MODELS

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def df():
    return catalog.families()


@pytest.fixture(scope="module")
def diffusers():
    import diffusers

    return diffusers


def test_one_row_per_key_table_entry_in_its_order(df):
    assert list(df["key"]) == [e.key for e in entries()]
    assert df["key"].is_unique
    assert lab.families().equals(df)  # the families package, called: the catalog
    for column in ("key", "mapping_key", "pipeline", "family", "tiny", *catalog.KNOBS, "control_image",
                   "image_list", "defaults", "speed", "checkpoint", "single_file", "note"):
        assert column in df.columns, column
    for column in (*catalog.KNOBS, "control_image", "image_list", "single_file"):
        assert df[column].map(type).eq(bool).all(), column
    assert list(df["family"]) == [family_of_class(e.pipeline).key for e in entries()]


def test_every_key_of_diffusers_image2image_mapping_is_covered_by_its_class(df, diffusers):
    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING as mapping

    mapped = df.dropna(subset=["mapping_key"])
    assert set(mapped["mapping_key"]) == set(mapping), "mapping keys without a row, or rows with a key diffusers lacks"
    for row in mapped.itertuples():
        assert row.pipeline == mapping[row.mapping_key].__name__, row.key
    # a key is on one row, or on rows of one class that are distinct checkpoints (SDXL base and refiner)
    for key, rows in mapped.groupby("mapping_key"):
        if len(rows) > 1:
            assert rows["tiny"].is_unique and rows["checkpoint"].is_unique, key
    assert set(mapped.groupby("mapping_key").size().loc[lambda n: n > 1].index) == {"stable-diffusion-xl"}
    # the rest are pipelines outside the mapping (the upscalers)
    outside = df[df["mapping_key"].isna()]
    assert set(outside["family"]) == {"upscalers"}
    assert not set(outside["pipeline"]) & {cls.__name__ for cls in mapping.values()}


def test_knobs_are_the_arguments_of_each_pipelines_call(df, diffusers):
    for row in df.to_dict("records"):
        params = set(inspect.signature(getattr(diffusers, row["pipeline"]).__call__).parameters)
        for knob in catalog.KNOBS:
            assert row[knob] == (knob in params), (row["key"], knob)
        assert row["control_image"] == bool(params & set(catalog.CONTROL_ARGUMENTS)), row["key"]
    by_key = df.set_index("key")
    assert not by_key.loc["flux-kontext", "strength"] and not by_key.loc["qwenimage-edit", "strength"]
    assert by_key.loc["flux", "true_cfg_scale"] and not by_key.loc["sd15", "true_cfg_scale"]
    assert by_key.loc["sd3", "prompt_3"] and not by_key.loc["sdxl", "prompt_3"]
    assert by_key.loc["flux-control", "control_image"] and not by_key.loc["flux", "control_image"]
    assert by_key.loc["flux2", "image_list"] and not by_key.loc["flux", "image_list"]


def test_defaults_are_the_familys_else_the_signatures(df, diffusers):
    for row in df.to_dict("records"):
        cls = getattr(diffusers, row["pipeline"])
        expected = {**signature_defaults(cls), **family_of_class(row["pipeline"]).call_defaults.get(row["pipeline"], {})}
        shown = dict(pair.split("=") for pair in row["defaults"].split(", ")) if row["defaults"] else {}
        params = inspect.signature(cls.__call__).parameters
        assert set(shown) == {n for n in catalog.SILENT if n in params and expected.get(n) is not None}, row["key"]
        for name, text in shown.items():
            assert text == repr(expected[name]), (row["key"], name)
    by_key = df.set_index("key")
    assert "guidance_scale=3.5" in by_key.loc["flux", "defaults"]          # FLUX.1's distilled guidance, not 7.0
    assert "strength=0.3" in by_key.loc["sdxl", "defaults"]
    assert "strength" not in by_key.loc["flux-kontext", "defaults"]


def test_tiny_twins_load_as_their_rows_pipeline_and_say_where_they_share_a_layout(df):
    table = {e.key: e for e in entries()}
    for row in df.to_dict("records"):
        e = table[row["key"]]
        if e.tiny is None:
            assert row["tiny"] == ""
            continue
        assert e.tiny in TINY_MODELS and row["tiny"].startswith(e.tiny)
        assert known_class(e.tiny, dict(e.load)) == e.pipeline, row["key"]
        for name, value in e.load.items():
            assert f" + {name}={value}" in row["tiny"], row["key"]
    by_key = df.set_index("key")
    assert by_key.loc["sd15", "tiny"] == "tiny/sd15"
    assert by_key.loc["sd-pag", "tiny"] == "tiny/sd15 + enable_pag=True (sd15's layout)"
    assert by_key.loc["flux-controlnet", "tiny"] == "tiny/flux + controlnet=tiny/controlnet-flux (flux's layout)"
    assert by_key.loc["sdxl-refiner", "tiny"] == "tiny/sdxl-refiner"  # its own layout
    assert "max_area=4096" in by_key.loc["flux-kontext", "tiny_call"]


def test_speed_is_the_familys_path(df):
    for row in df.to_dict("records"):
        assert row["speed"] == family_of_class(row["pipeline"]).speed_path(row["pipeline"])
        assert row["speed"] == "batched" or re.match(r"per cell: \S", row["speed"]), row["key"]
    assert df.set_index("key").loc["sd15", "speed"] == "batched"


def test_summary_text_and_markdown_hold_every_row(df):
    summary = catalog.summary(df)
    assert list(summary.columns) == list(catalog.SUMMARY_COLUMNS)
    assert summary.set_index("key").loc["sd15", "knobs"] == "strength, guidance_scale, negative_prompt"
    assert set(summary["speed"]) == {"batched", "per cell"}
    text = catalog.text(df).splitlines()
    assert text[0].split() == list(catalog.SUMMARY_COLUMNS) and len(text) == len(df) + 1
    md = catalog.markdown(df).splitlines()
    assert len(md) == len(df) + 2
    assert all(line.startswith("| ") and line.endswith(" |") for line in md[2:])
    assert all(line.count(" | ") == len(catalog.SUMMARY_COLUMNS) - 1 for line in md[2:])  # no stray pipes


def test_readme_shows_the_table_as_it_is_now():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- families table:[^\n]*-->\n(.*?)<!-- end of families table -->", text, re.S)
    assert found, "README.md lost its families table markers"
    assert found.group(1) == catalog.markdown(), (
        "README.md's families table is stale: paste img2img_lab.catalog.markdown() between its markers")


def test_the_catalog_imports_neither_torch_nor_diffusers():
    code = ("import sys, img2img_lab as lab; lab.families(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
