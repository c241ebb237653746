"""Sweeps split over processes with `accelerate launch`: no cell twice, none lost, same images.

Each test starts `accelerate launch` and two worker processes (each imports torch and diffusers):
offline but slow, so `heavy`.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import img2img_lab as lab

pytestmark = pytest.mark.heavy

SPEC = """
model: tiny/sd15
image: astronaut
prompt: "Astronaut in a jungle"
strength: [0.5, 0.75, 1.0]
guidance_scale: [1.0, 3.0]
negative_prompt: [null, jungle]
num_inference_steps: 3
height: 64
width: 64
"""


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def single(spec_file, tmp_path_factory):
    return lab.run_sweep(lab.SweepSpec.from_yaml(spec_file), tmp_path_factory.mktemp("single"), progress=False)


def _env():
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _assert_same_images(a, b):
    """Same cells, same pictures. Batches are composed differently in each process, so float sums
    run in another order: within 1e-3 before 8-bit rounding, i.e. at most one level after it."""
    assert sorted(a.df["key"]) == sorted(b.df["key"])
    for key in a.df["key"]:
        x = np.asarray(a.image(key), dtype=np.int16)
        y = np.asarray(b.image(key), dtype=np.int16)
        assert np.abs(x - y).max() <= 1, key


def _processes(out):
    runs = json.loads((out / "meta.json").read_text())["runs"]
    return sorted((r["process"], r["num_processes"], r["computed"]) for r in runs)


def test_accelerate_launch_splits_cells_between_two_processes(spec_file, single, tmp_path):
    out = tmp_path / "multi"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "img2img_lab", "sweep", str(spec_file), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _processes(out) == [(0, 2, 6), (1, 2, 6)]  # each process computed its half
    multi = lab.load_sweep(out)
    assert len(multi.df) == 12 and multi.df["key"].is_unique
    assert list(multi.df["key"]) == list(single.df["key"])  # same table order as one process
    _assert_same_images(single, multi)
    assert proc.stdout.count("12 images: 12 ok") == 1  # only the main process prints the summary


def test_cli_option_delegates_to_accelerate_and_resumes(spec_file, single, tmp_path):
    out = tmp_path / "cli"
    # a first, partial run (one strength, in this process) leaves cells for the multi-process run to skip
    first = lab.run_sweep(lab.SweepSpec.from_yaml(spec_file).replace(strength=0.5), out, progress=False)
    assert len(first.df) == 4 and set(first.df["key"]) < set(single.df["key"])
    proc = subprocess.run([sys.executable, "-m", "img2img_lab", "sweep", str(spec_file), "--out", str(out),
                           "--quiet", "--num-processes", "2"], capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((out / "meta.json").read_text())["runs"]
    assert sum(r["computed"] for r in runs if r["num_processes"] == 2) == 8  # 12 cells - 4 done
    _assert_same_images(single, lab.load_sweep(out))
