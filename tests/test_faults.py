"""Faults: SIGKILL at random moments, concurrent writers, NaN/black outputs, out-of-memory.

The kill and concurrency tests drive the command line (`img2img_lab.cli.main`, what `python -m
img2img_lab sweep` runs) in separate processes on the tiny model. The reference run is a real
`python -m img2img_lab` subprocess; the killed and concurrent runs are forked from one warm server
(tests/_warm_cli.py) that imported torch and diffusers once, so each start costs a fork and a model
load, not ~8 s of imports, and the kill trials run one after another in the same folder (kill,
check, restart, kill again ...). Both are offline and take tens of seconds: `heavy`.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import img2img_lab as lab
from img2img_lab import batched as engine
from img2img_lab import runner
from img2img_lab.store import STALE_TEMP_SECONDS, SweepStore, read_png_parameters

from _warm_cli import WarmCLI

# 24 cells at 64 px and 2 steps: about 0.05 s a cell on one CPU thread, so the writes take a second
# or two after the process starts.
SPEC = """
model: tiny/sd15
image: astronaut
prompt: "a cat in a jungle"
negative_prompt: [null, blurry]
seed: [0, 1]
strength: [0.5, 0.75, 1.0]
guidance_scale: [1.0, 7.5]
num_inference_steps: 2
height: 64
width: 64
"""
MIN_KILLS = 10
COMPARED = ["key", "prompt", "negative_prompt", "seed", "strength", "guidance_scale", "num_inference_steps",
            "effective_steps", "width", "height", "status", "error", "image_path", "init_image_path"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _sweep_args(spec, out, *extra):
    return ["sweep", str(spec), "--out", str(out), "--quiet", *extra]


def _sweep_cmd(spec, out, *extra):
    return [sys.executable, "-m", "img2img_lab", *_sweep_args(spec, out, *extra)]


def _run(spec, out, *extra):
    proc = subprocess.run(_sweep_cmd(spec, out, *extra), capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _expected_keys(spec_path) -> list[str]:
    spec = lab.SweepSpec.from_yaml(spec_path)
    digest = lab.image_hash(lab.load_image("astronaut"))
    return [cell.key(digest, "float32") for cell in spec.cells()]  # the dtype CPU runs resolve to


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults_spec") / "spec.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def warm_cli():
    """Forks of one warm command line, with the same environment as the subprocesses."""
    with WarmCLI(_env()) as server:
        yield server


def _run_warm(warm_cli, spec, out, *extra, log):
    proc = warm_cli.start(_sweep_args(spec, out, *extra), log)
    assert proc.wait(timeout=600) == 0, Path(log).read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def reference(spec_file, tmp_path_factory):
    """One uninterrupted run (same command line, same thread count): its table and pixels."""
    out = tmp_path_factory.mktemp("faults_reference")
    _run(spec_file, out, "--no-batched")
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 24 and set(df["status"]) == {"ok"}
    return df, {key: _pixels(out / path) for key, path in zip(df["key"], df["image_path"])}


# -- SIGKILL -------------------------------------------------------------------------------------


def _entries(out: Path) -> set:
    names = set()
    for sub in ("images", "rows"):
        try:
            names.update(f"{sub}/{name}" for name in os.listdir(out / sub))
        except FileNotFoundError:
            pass
    return names


def _start_and_kill(warm_cli, spec, out, extra, delay, log_file):
    """Start a sweep; once it writes its first new file, wait `delay` s and SIGKILL it.

    Returns the exit code of a run that finished before the kill, or None when it was killed.
    """
    before = _entries(out)
    proc = warm_cli.start(_sweep_args(spec, out, *extra), log_file)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not (_entries(out) - before):
            assert time.monotonic() < deadline, "the sweep wrote nothing within 300 s"
            time.sleep(0.002)
        if proc.poll() is None:
            time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return None if proc.returncode == -signal.SIGKILL else proc.returncode
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _check_folder(out: Path, all_keys: set) -> dict:
    """What a killed run must leave: readable files, no half image, no duplicate row, temp files ignored."""
    for png in sorted((out / "images").glob("*.png")):
        with Image.open(png) as im:
            im.load()  # a truncated PNG fails here
        assert read_png_parameters(png)["key"] == png.stem
    for row_file in sorted((out / "rows").glob("*.json")):
        assert json.loads(row_file.read_text())["key"] == row_file.stem
    temps = sorted(p for p in out.rglob("*") if p.name.endswith(".tmp"))
    assert all(p.name.startswith(".") for p in temps), temps  # `.<name>.<random>.tmp`, never a result name
    if (out / "results.parquet").exists():
        table = pd.read_parquet(out / "results.parquet")
        assert table["key"].is_unique
    if (out / "meta.json").exists():
        json.loads((out / "meta.json").read_text())
    result = lab.load_sweep(out)
    df = result.df
    if not df.empty:
        assert df["key"].is_unique
        assert set(df["key"]) <= all_keys
        assert set(df["status"]) == {"ok"}
        for path in df["image_path"]:
            assert (out / path).is_file() and not Path(path).name.endswith(".tmp")
    return {"rows": len(df), "temps": len(temps)}


def _check_final(out: Path, reference, max_diff: int):
    ref_df, ref_pixels = reference
    df = pd.read_parquet(out / "results.parquet")
    assert list(df["key"]) == list(ref_df["key"])  # same cells, same order, each once
    pd.testing.assert_frame_equal(df[COMPARED], ref_df[COMPARED], check_dtype=False)
    loaded = lab.load_sweep(out).df
    assert list(loaded["key"]) == list(ref_df["key"])
    assert not list((out / "rows").glob("*.json"))  # everything folded into the table
    for key, path in zip(df["key"], df["image_path"]):
        diff = np.abs(_pixels(out / path) - ref_pixels[key]).max()
        assert diff <= max_diff, (key, diff)
    pngs = sorted(p.stem for p in (out / "images").glob("*.png"))
    assert pngs == sorted(ref_df["key"])


@pytest.mark.heavy
def test_sigkill_at_random_moments_resumes_to_the_uninterrupted_table(tmp_path, spec_file, warm_cli, reference):
    rng = random.Random(9)
    all_keys = set(reference[0]["key"])
    # The kill comes 0..window s after a run's first new file; the window is 40% of the time the
    # reference spent on its cells, so a kill lands while cells are being written on fast and slow
    # machines alike and each run gets a few cells further than the one before.
    window = min(1.5, max(0.05, 0.4 * float(reference[0]["seconds"].sum())))
    # (folder, CLI flags, kills wanted, largest pixel difference from the one-call-per-cell reference):
    # batch composition changes on resume, so batched float sums may round one level differently.
    plans = [("direct", ["--no-batched"], 6, 0), ("batched", ["--max-batch-size", "2"], 5, 1)]
    plans += [(f"extra{i}", ["--no-batched"], 4, 0) for i in range(4)]  # only if runs ended before a kill
    kills, history = 0, []
    for name, extra, wanted, max_diff in plans:
        if kills >= MIN_KILLS:
            break
        out = tmp_path / name
        finished = False
        for _ in range(wanted):
            delay = rng.uniform(0, window)
            rc = _start_and_kill(warm_cli, spec_file, out, extra, delay, tmp_path / "log.txt")
            state = _check_folder(out, all_keys)
            history.append((name, round(delay, 3), "finished" if rc is not None else "killed", state))
            if rc is not None:
                assert rc == 0, (tmp_path / "log.txt").read_text()[-4000:]
                finished = True
                break
            kills += 1
        if not finished:
            _run_warm(warm_cli, spec_file, out, *extra, log=tmp_path / "log.txt")  # the next run resumes and completes
        _check_folder(out, all_keys)
        _check_final(out, reference, max_diff)
    print(f"kill window {window:.2f} s", *history, sep="\n")
    assert kills >= MIN_KILLS, history
    # the kills landed while cells were being written, not all before or after
    partial = [h for h in history if h[2] == "killed" and 0 < h[3]["rows"] < len(all_keys)]
    assert len(partial) >= MIN_KILLS // 2, history


def test_temp_files_of_a_killed_writer_are_ignored_then_cleaned(tmp_path):
    spec = lab.SweepSpec.from_dict(dict(model="tiny/sd15", image="astronaut", prompt="a cat", strength=[0.5, 1.0],
                                        num_inference_steps=2, height=64, width=64))
    first = lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    key = first.df["key"][1]
    good = (tmp_path / "images" / f"{key}.png").read_bytes()
    good_pixels = _pixels(tmp_path / "images" / f"{key}.png")
    # what a writer killed mid-way leaves: a half PNG, a half row, a half table, an unfinished cell
    leftovers = [
        tmp_path / "images" / f".{key}.png.k1l2d.tmp",
        tmp_path / "rows" / f".{key}.json.k1l2d.tmp",
        tmp_path / ".results.parquet.k1l2d.tmp",
    ]
    leftovers[0].write_bytes(good[: len(good) // 2])
    leftovers[1].write_text('{"key": "' + key + '", "status": "o')
    leftovers[2].write_bytes(b"PAR1\x00\x00")
    fresh = tmp_path / "images" / ".another.png.live.tmp"  # a live writer's file in the same folder
    fresh.write_bytes(good[:10])
    table = pd.read_parquet(tmp_path / "results.parquet")
    table[table["key"] != key].to_parquet(tmp_path / "results.parquet")
    (tmp_path / "images" / f"{key}.png").unlink()

    partial = lab.load_sweep(tmp_path).df
    assert list(partial["key"]) == [first.df["key"][0]]
    old = time.time() - STALE_TEMP_SECONDS - 60
    for path in leftovers:
        os.utime(path, (old, old))
    again = lab.run_sweep(spec, tmp_path, progress=False, batched=False)
    assert list(again.df["key"]) == list(first.df["key"]) and set(again.df["status"]) == {"ok"}
    assert np.array_equal(_pixels(tmp_path / "images" / f"{key}.png"), good_pixels)
    assert not any(path.exists() for path in leftovers)  # stale: removed when the run opened the folder
    assert fresh.exists()  # recent: may belong to a process still writing, left alone
    assert SweepStore(tmp_path).remove_stale_temp_files(older_than=0) == [fresh]


def test_a_reader_never_misses_rows_another_process_folds_in(tmp_path, monkeypatch):
    store = SweepStore(tmp_path)
    for key in "ab":
        store.write_row({"key": key, "status": "ok"})
    store.consolidate()
    for key in "cd":
        store.write_row({"key": key, "status": "ok"})
    other = SweepStore(tmp_path)  # a second process finishing its run
    journal, raced = SweepStore._journal, []

    def folded_meanwhile(self):  # right between our table read and our journal read
        if not raced:
            raced.append(True)
            other.consolidate()
        return journal(self)

    monkeypatch.setattr(SweepStore, "_journal", folded_meanwhile)
    assert list(store.read_table()["key"]) == ["a", "b", "c", "d"] and raced


# -- two writers -----------------------------------------------------------------------------------


@pytest.mark.heavy
def test_concurrent_writers_into_one_folder_lose_no_rows(tmp_path, spec_file, warm_cli):
    other = tmp_path / "other.yaml"  # other strengths; 1.0 is shared with the first spec
    other.write_text(SPEC.replace("strength: [0.5, 0.75, 1.0]", "strength: [1.0, 0.6, 0.9]"))
    out = tmp_path / "shared"
    expected = list(dict.fromkeys(_expected_keys(spec_file) + _expected_keys(other)))
    assert len(expected) == 24 + 16
    commands = [_sweep_args(spec_file, out, "--no-batched"), _sweep_args(spec_file, out),  # same spec twice
                _sweep_args(other, out, "--no-batched")]  # and a different one, all at once
    logs = [tmp_path / f"writer{i}.log" for i in range(len(commands))]
    procs = [warm_cli.start(args, log) for args, log in zip(commands, logs)]
    codes = [proc.wait(timeout=600) for proc in procs]
    assert codes == [0, 0, 0], "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)

    table = pd.read_parquet(out / "results.parquet")
    assert table["key"].is_unique and sorted(table["key"]) == sorted(expected)
    loaded = lab.load_sweep(out).df
    assert loaded["key"].is_unique and sorted(loaded["key"]) == sorted(expected)
    assert set(loaded["status"]) == {"ok"}
    assert not list((out / "rows").glob("*.json"))
    for path in loaded["image_path"]:
        with Image.open(out / path) as im:
            im.load()
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == sorted(expected)
    runs = lab.load_sweep(out).meta["runs"]
    assert len(runs) == 3
    spans = sorted((r["started"], r["finished"]) for r in runs)
    print("runs (started, finished):", spans, "overlap:", spans[0][1] > spans[1][0])


def test_replacing_the_table_keeps_rows_another_process_added(tmp_path):
    """add_metrics reads the table, scores it, writes it back: a run finishing meanwhile keeps its rows."""
    store = SweepStore(tmp_path)
    for key in "ab":
        store.write_row({"key": key, "status": "ok"})
    df = store.consolidate()
    other = SweepStore(tmp_path)
    other.write_row({"key": "c", "status": "ok"})
    other.consolidate()
    store.write_table(df.assign(ssim=[0.5, 0.25]))
    table = pd.read_parquet(tmp_path / "results.parquet")
    assert list(table["key"]) == ["a", "b", "c"]
    assert table["ssim"].tolist()[:2] == [0.5, 0.25] and np.isnan(table["ssim"][2])


# -- NaN, black, out of memory --------------------------------------------------------------------

SMALL = dict(model="tiny/sd15", image="astronaut", prompt="a cat", strength=[0.5, 1.0], guidance_scale=[1.0, 3.0, 7.5],
             num_inference_steps=2, height=64, width=64)


@pytest.fixture(scope="module")
def pipe():
    return lab.load_pipeline("tiny/sd15")


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # batched postprocess of NaN
@pytest.mark.parametrize("fault, batched", [("black", False), ("black", True), ("nan", True)])
def test_black_and_nan_images_are_flagged(tmp_path, monkeypatch, pipe, fault, batched):
    """test_runner covers NaN one call per cell; here all-black (both paths) and NaN batched, through run_sweep."""
    decode = pipe.vae.decode

    def broken_decode(latents, *args, **kwargs):
        out = decode(latents, *args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        sample[:] = -1.0 if fault == "black" else float("nan")  # decodes to 0 everywhere / NaN
        return out

    monkeypatch.setattr(pipe.vae, "decode", broken_decode)
    spec = lab.SweepSpec.from_dict({**SMALL, "guidance_scale": 1.0})
    result = lab.run_sweep(spec, tmp_path, pipe=pipe, progress=False, batched=batched)
    assert list(result.df["status"]) == ["nan", "nan"]
    for i in range(2):  # the image is still written, for a look
        assert (tmp_path / result.df["image_path"][i]).is_file()
        if fault == "black":
            assert np.asarray(result.image(i)).max() == 0


@pytest.mark.parametrize("batched", [True, False])
def test_a_cell_that_always_runs_out_of_memory_is_recorded(tmp_path, monkeypatch, pipe, batched):
    spec = lab.SweepSpec.from_dict(SMALL)
    clean = lab.run_sweep(spec, tmp_path / "clean", pipe=pipe, progress=False, batched=batched)
    bad = (1.0, 7.5)  # (strength, guidance_scale) of the cell that never fits
    sizes = []
    if batched:
        run_batch = engine._run_batch

        def tight_memory(pipe, pieces, cells, *args, **kwargs):
            sizes.append(len(cells))
            if any((c.call["strength"], c.call["guidance_scale"]) == bad for c in cells):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return run_batch(pipe, pieces, cells, *args, **kwargs)

        monkeypatch.setattr(engine, "_run_batch", tight_memory)
    else:
        run_cell = runner.run_cell

        def tight_memory(pipe, call, seed):
            if (call["strength"], call["guidance_scale"]) == bad:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return run_cell(pipe, call, seed)

        monkeypatch.setattr(runner, "run_cell", tight_memory)

    result = lab.run_sweep(spec, tmp_path / "sweep", pipe=pipe, progress=False, batched=batched, max_batch_size=4)
    df = result.df
    assert list(df["key"]) == list(clean.df["key"])  # every cell has its row, in grid order
    failed = df[(df["strength"] == bad[0]) & (df["guidance_scale"] == bad[1])]
    assert len(failed) == 1
    row = failed.iloc[0]
    assert row["status"] == "error" and row["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert row["image_path"] == "" and not (tmp_path / "sweep" / "images" / f"{row['key']}.png").exists()
    others = df[df["key"] != row["key"]]
    assert len(others) == 5 and set(others["status"]) == {"ok"}
    for key in others["key"]:  # the cells that fit are the images of an unconstrained run
        got = np.asarray(result.image(key), dtype=np.int16)
        want = np.asarray(clean.image(key), dtype=np.int16)
        assert np.abs(got - want).max() <= (1 if batched else 0)
    if batched:
        assert sizes[0] == 4 and 2 in sizes and 1 in sizes  # halved down to one cell before giving up
        assert set(others["batch_size"]) <= {1, 2}
    # the next run retries only the failed cell
    monkeypatch.undo()
    again = lab.run_sweep(spec, tmp_path / "sweep", pipe=pipe, progress=False, batched=batched)
    assert set(again.df["status"]) == {"ok"} and list(again.df["key"]) == list(clean.df["key"])
    assert [r["computed"] for r in again.meta["runs"]] == [6, 1]
