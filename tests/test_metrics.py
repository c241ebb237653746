"""add_metrics: values on known image pairs, persistence, incremental computation, model metrics."""

import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from _fake_sweep import make_fake_sweep, make_tiny_clip, noisy, sample_array
from PIL import Image

from img2img_lab import metrics
from img2img_lab.errors import ValidationError
from img2img_lab.metrics import add_metrics, lpips_distance, mean_abs_change, psnr, ssim


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return str(make_tiny_clip(tmp_path_factory.mktemp("tiny_clip")))


@pytest.fixture
def sweep(tmp_path):
    return make_fake_sweep(tmp_path / "sweep")  # 12 rows, one failed


# ---------------------------------------------------------------------------------------------
# pixel metrics on known pairs


def test_identical_images():
    image = sample_array("astronaut", 64)
    assert ssim(image, image) == pytest.approx(1.0)
    assert psnr(image, image) == math.inf
    assert mean_abs_change(image, image) == 0.0


def test_known_noise_pair():
    image = sample_array("astronaut", 64)
    other = noisy(image, 20.0, seed=3)
    mse = np.mean((image.astype(np.float64) - other.astype(np.float64)) ** 2)
    assert psnr(image, other) == pytest.approx(10 * math.log10(255**2 / mse))
    assert mean_abs_change(image, other) == pytest.approx(np.mean(np.abs(image.astype(float) - other)))
    assert 0 < ssim(image, other) < 1
    # a uniform shift of 10 levels: |change| = 10, PSNR = 10 log10(255^2 / 100)
    flat = np.full((32, 32, 3), 100, np.uint8)
    assert mean_abs_change(flat, flat + 10) == 10.0
    assert psnr(flat, flat + 10) == pytest.approx(10 * math.log10(255**2 / 100))


def test_lpips_formula():
    a = torch.randn(2, 8, 4, 4)
    assert torch.allclose(lpips_distance([a, a], [a, a]), torch.zeros(2))
    # orthogonal unit vectors at every position: squared distance 2 per layer, summed over layers
    e0, e1 = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    e0[:, 0], e1[:, 1] = 5.0, 0.5  # scale does not matter: features are unit-normalised
    assert lpips_distance([e0, e0], [e1, e1]).item() == pytest.approx(4.0)
    # learned per-channel weights multiply the squared differences
    assert lpips_distance([e0], [e1], [torch.tensor([0.25, 0.5])]).item() == pytest.approx(0.75)
    # tokens (B, N, C) with channel_axis=-1
    tokens = torch.randn(3, 5, 8)
    d = lpips_distance([tokens], [tokens.flip(0)], channel_axis=-1)
    assert d.shape == (3,) and d[1] == 0


# ---------------------------------------------------------------------------------------------
# add_metrics on a sweep


def test_add_metrics_values_and_failed_rows(sweep):
    out = add_metrics(sweep, progress=False)
    df = out.df
    assert {"ssim", "psnr", "mean_abs_change"} <= set(df.columns)
    failed = df["status"] != "ok"
    assert failed.sum() == 1 and df.loc[failed, ["ssim", "psnr", "mean_abs_change"]].isna().all().all()
    row = df[~failed].iloc[0]
    init = np.asarray(out.init_image(row))
    image = np.asarray(out.image(row))
    assert row["ssim"] == pytest.approx(ssim(init, image))
    assert row["psnr"] == pytest.approx(psnr(init, image))
    assert row["mean_abs_change"] == pytest.approx(mean_abs_change(init, image))
    # more strength, less fidelity
    by_strength = df[~failed].groupby("strength")["ssim"].mean()
    assert by_strength.is_monotonic_decreasing
    assert sweep.df is not df and "ssim" not in sweep.df.columns  # the input is left as it was


def test_metrics_are_stored_with_the_sweep(sweep):
    out = add_metrics(sweep, ["ssim", "psnr"], progress=False)
    stored = pd.read_parquet(sweep.out_dir / "results.parquet")
    assert {"ssim", "psnr"} <= set(stored.columns)
    pd.testing.assert_series_equal(stored["ssim"], out.df["ssim"].reset_index(drop=True))
    assert list(stored["key"]) == list(sweep.df["key"])
    leftovers = [p.name for p in sweep.out_dir.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []  # no temp files left (.lock is the store's file lock)


def test_identical_output_round_trips_inf(tmp_path):
    # strength 0 and guidance_scale 0: zero noise, the output is the init image itself
    result = make_fake_sweep(tmp_path / "s", strength=[0.0], guidance_scale=[0.0], negative_prompt=[""], error_cell=None)
    add_metrics(result, progress=False)
    stored = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert stored["ssim"].iloc[0] == pytest.approx(1.0)
    assert stored["psnr"].iloc[0] == math.inf
    assert stored["mean_abs_change"].iloc[0] == 0.0


def test_init_is_resized_to_the_output_size(sweep):
    row = sweep.df[sweep.df.status == "ok"].iloc[0]
    path = sweep.image_file(row)
    Image.open(path).resize((96, 96), Image.LANCZOS).save(path)
    out = add_metrics(sweep, ["mean_abs_change"], progress=False)
    init = sweep.init_image(row).resize((96, 96), Image.LANCZOS)
    expected = mean_abs_change(np.asarray(init), np.asarray(Image.open(path).convert("RGB")))
    assert out.df.loc[row.name, "mean_abs_change"] == pytest.approx(expected)


def test_only_missing_values_are_computed(sweep, monkeypatch):
    calls = []
    monkeypatch.setitem(metrics._PIXEL_FUNCTIONS, "ssim", lambda a, b: calls.append(1) or 0.5)
    out = add_metrics(sweep, ["ssim"], progress=False)
    assert len(calls) == 11  # the ok rows
    out = add_metrics(out, ["ssim"], progress=False)
    assert len(calls) == 11
    df = out.df.copy()
    df.loc[df.index[0], "ssim"] = np.nan
    out = add_metrics(type(out)(df=df, out_dir=out.out_dir), ["ssim"], progress=False)
    assert len(calls) == 12
    add_metrics(out, ["ssim"], overwrite=True, progress=False)
    assert len(calls) == 23


# ---------------------------------------------------------------------------------------------
# model metrics with a tiny random CLIP


def test_clip_score(sweep, clip_dir):
    out = add_metrics(sweep, ["clip_score"], clip_model=clip_dir, batch_size=5, progress=False)
    scores = out.df["clip_score"]
    ok = out.df["status"] == "ok"
    assert scores[~ok].isna().all()
    assert scores[ok].between(0, 100).all() and scores[ok].notna().all()
    again = add_metrics(out, ["clip_score"], clip_model=clip_dir, overwrite=True, batch_size=3, progress=False)
    np.testing.assert_allclose(again.df["clip_score"][ok], scores[ok], rtol=1e-5)
    assert out.meta["metrics"]["clip_score"] == {"model": clip_dir}


def test_clip_score_matches_the_formula(sweep, clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    out = add_metrics(sweep, ["clip_score"], clip_model=clip_dir, progress=False)
    row = out.df.iloc[0]
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    inputs = processor(text=[row["prompt"]], images=[out.image(row)], return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
    expected = 100 * max(torch.nn.functional.cosine_similarity(img, txt).item(), 0)
    assert row["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_clip_model_from_environment(sweep, clip_dir, monkeypatch):
    monkeypatch.setenv(metrics.CLIP_MODEL_ENV, clip_dir)
    out = add_metrics(sweep, ["clip_score"], progress=False)
    assert out.df["clip_score"].notna().sum() == 11


def test_lpips_with_a_clip_tower_is_named_lpips_clip(sweep, clip_dir, monkeypatch):
    monkeypatch.setattr(metrics, "_lpips_available", lambda: False)
    out = add_metrics(sweep, ["lpips"], lpips_model=clip_dir, progress=False)
    assert "lpips_clip" in out.df.columns and "lpips" not in out.df.columns
    ok = out.df["status"] == "ok"
    assert (out.df.loc[ok, "lpips_clip"] > 0).all() and out.df.loc[~ok, "lpips_clip"].isna().all()
    assert out.df[ok].groupby("strength")["lpips_clip"].mean().is_monotonic_increasing
    # without `lpips`, the CLIP model of clip_score serves too
    out2 = add_metrics(sweep, ["lpips_clip"], clip_model=clip_dir, overwrite=True, progress=False)
    np.testing.assert_allclose(out2.df["lpips_clip"], out.df["lpips_clip"], rtol=1e-5)


def test_real_lpips_package_is_used_when_importable(sweep, monkeypatch):
    created = []

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net, verbose=True):
            super().__init__()
            created.append(net)

        def forward(self, a, b):
            assert a.min() >= -1 and a.max() <= 1 and a.shape[:2] == (1, 3)
            return (a - b).abs().mean().reshape(1, 1, 1, 1)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    out = add_metrics(sweep, ["lpips"], progress=False)
    assert created == ["alex"]
    assert out.df["lpips"].notna().sum() == 11 and "lpips_clip" not in out.df.columns
    assert out.meta["metrics"]["lpips"] == {"model": "alex"}


# ---------------------------------------------------------------------------------------------
# errors, all raised before anything is computed or written


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metrics": ["fid"]}, r"`metrics` must name metrics among \['ssim', 'psnr', 'mean_abs_change', 'clip_score', 'lpips', 'lpips_clip'\], got \['ssim', 'fid'\]"),
        ({"metrics": []}, r"`metrics`"),
        ({"metrics": ["clip_score"]}, r"'clip_score' needs `clip_model`.*IMG2IMG_LAB_CLIP_MODEL"),
        ({"metrics": ["clip_score"], "clip_model": "/no/such/clip"}, r"`clip_model`='/no/such/clip'"),
        ({"metrics": ["clip_score"], "clip_model": "nobody/no-such-clip"}, r"`clip_model`='nobody/no-such-clip' cannot be loaded"),
        ({"metrics": ["lpips"], "lpips_model": "./missing_dir"}, r"`lpips_model`='./missing_dir'"),
        ({"metrics": ["lpips"]}, r"'lpips' needs a model"),
        ({"metrics": ["lpips"], "lpips_model": "vgg"}, r"`lpips_model`='vgg' needs the `lpips` package"),
        ({"batch_size": 0}, r"`batch_size` must be a positive int, got 0"),
    ],
)
def test_bad_arguments(sweep, monkeypatch, kwargs, message):
    monkeypatch.delenv(metrics.CLIP_MODEL_ENV, raising=False)
    monkeypatch.setattr(metrics, "_lpips_available", lambda: False)
    computed = []
    monkeypatch.setitem(metrics._PIXEL_FUNCTIONS, "ssim", lambda a, b: computed.append(1) or 0.5)
    metric_list = kwargs.pop("metrics", ["ssim"])  # ssim goes first: it must not have been computed
    before = (sweep.out_dir / "results.parquet").read_bytes()
    with pytest.raises(ValidationError, match=message):
        add_metrics(sweep, ["ssim", *metric_list] if metric_list else [], progress=False, **kwargs)
    assert computed == []
    assert (sweep.out_dir / "results.parquet").read_bytes() == before


def test_metrics_persist_across_load_sweep(sweep):
    import img2img_lab as lab

    out = add_metrics(sweep, ["ssim", "mean_abs_change"], progress=False)
    again = lab.load_sweep(sweep.out_dir)
    assert {"ssim", "mean_abs_change"} <= set(again.metrics)
    pd.testing.assert_series_equal(again.df["ssim"], out.df["ssim"].reset_index(drop=True), check_names=False)
    assert again.meta["metrics"] == out.meta["metrics"]
