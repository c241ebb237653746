"""The img2img-lab command line: exit codes, one-line errors, overrides, summaries."""

import subprocess
import sys

import pandas as pd
import pytest

from img2img_lab import catalog
from img2img_lab.cli import main
from img2img_lab.families import entries
from img2img_lab.tiny import TINY_MODELS

SPEC = """
model: stable-diffusion-v1-5/stable-diffusion-v1-5
image: astronaut
prompt: "Astronaut in a jungle"
strength: [0.5, 1.0]
guidance_scale: 3.0
num_inference_steps: 2
height: 64
width: 64
"""


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def test_sweep_runs_offline_with_model_override(spec_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["sweep", str(spec_file), "--model", "tiny/sd15", "--out", str(out), "--quiet",
               "--set", "guidance_scale=[1.0,3.0]"])
    assert rc == 0
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 4 and set(df["model"]) == {"tiny/sd15"}
    text = capsys.readouterr().out
    assert "4 images: 4 ok" in text and "results.parquet" in text


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "strength=1.5"], "`strength` must be in [0, 1]"),
        (["--set", "strenght=0.5"], "strenght"),
        (["--set", "noequals"], "key=value"),
        (["--model", "tiny/nope"], "tiny/nope"),
    ],
)
def test_bad_input_exits_2_with_one_line(spec_file, tmp_path, capsys, args, message):
    rc = main(["sweep", str(spec_file), "--out", str(tmp_path / "o"), "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("img2img-lab: error:") and message in err
    assert "Traceback" not in err


def test_missing_spec_file(tmp_path, capsys):
    rc = main(["sweep", str(tmp_path / "missing.yaml"), "--quiet"])
    assert rc == 2 and "missing.yaml" in capsys.readouterr().err


def test_python_tags_in_yaml_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo hacked']\nprompt: x\nimage: cat\n")
    rc = main(["sweep", str(path), "--quiet"])
    assert rc == 2 and "hacked" not in capsys.readouterr().out


def test_module_entry_point_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "img2img_lab", "sweep", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_models_prints_the_families_table_then_the_tiny_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    table, tiny = out.split("\ntiny models:\n")
    assert table.startswith(catalog.text() + "\n")
    rows = table.splitlines()[1:len(entries()) + 1]
    assert [row.split()[0] for row in rows] == [e.key for e in entries()]
    assert [line.split()[0] for line in tiny.splitlines()] == list(TINY_MODELS)
    assert main(["models", "--tiny"]) == 0  # the tiny models alone, as before
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(TINY_MODELS)


def test_an_empty_model_override_is_an_error(spec_file, capsys):
    assert main(["sweep", str(spec_file), "--model", "", "--quiet"]) == 2
    assert "`--model` must name a model" in capsys.readouterr().err


def test_summary_lists_only_the_rows_of_the_sweep_just_run(spec_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(spec_file), "--model", "tiny/sd15", "--out", str(out), "--quiet",
                 "--set", "guidance_scale=[1.0,3.0]"]) == 0
    capsys.readouterr()
    # a second, different sweep into the same folder: 1 new cell, 4 rows of the first sweep stay
    assert main(["sweep", str(spec_file), "--model", "tiny/sd15", "--out", str(out), "--quiet",
                 "--set", "strength=0.75", "--set", "guidance_scale=5.0"]) == 0
    text = capsys.readouterr().out
    assert len(pd.read_parquet(out / "results.parquet")) == 5
    table = text.split("\n\n")[0].splitlines()
    assert len(table) == 1 + 1  # header + this sweep's one row
    assert "1 images: 1 ok; the folder holds 4 other rows" in text
    # the first sweep again: all 4 cells found done, listed, and the new sweep's row counted apart
    assert main(["sweep", str(spec_file), "--model", "tiny/sd15", "--out", str(out), "--quiet",
                 "--set", "guidance_scale=[1.0,3.0]"]) == 0
    text = capsys.readouterr().out
    assert len(text.split("\n\n")[0].splitlines()) == 1 + 4
    assert "4 images: 4 ok (0 computed now, 4 already there); the folder holds 1 other row (results.parquet)" in text
