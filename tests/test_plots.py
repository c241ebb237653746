"""plot_tradeoff: one curve per hue value, legend, spread, and helpful errors."""

import numpy as np
import pytest
from _fake_sweep import make_fake_sweep
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from img2img_lab.errors import ValidationError
from img2img_lab.metrics import add_metrics
from img2img_lab.plots import plot_tradeoff


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    result = make_fake_sweep(tmp_path_factory.mktemp("sweep"), seed=[0, 1])
    return add_metrics(result, ["ssim", "psnr"], progress=False)


def test_one_line_per_hue_with_legend(measured):
    fig = plot_tradeoff(measured, x="strength", y="ssim", hue="guidance_scale")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "guidance_scale"
    assert [t.get_text() for t in legend.get_texts()] == ["1", "7.5"]
    assert len(ax.lines) == 2
    assert ax.get_xlabel() == "strength" and ax.get_ylabel().startswith("ssim")
    # mean over negative_prompt and seed; fidelity falls as strength rises
    line = ax.lines[0]
    assert list(line.get_xdata()) == [0.3, 0.6, 0.9]
    expected = measured.df[measured.df.guidance_scale == 1.0].groupby("strength")["ssim"].mean().to_numpy()
    np.testing.assert_allclose(line.get_ydata(), expected)
    assert np.all(np.diff(line.get_ydata()) < 0)
    assert len(ax.collections) == 2  # min-max bands
    FigureCanvasAgg(fig).draw()


def test_points_style_and_where(measured):
    fig = plot_tradeoff(measured, hue="guidance_scale", style="negative_prompt", spread="points",
                        where={"seed": 0})
    (ax,) = fig.axes
    assert len(ax.lines) == 4  # 2 guidance_scale x 2 negative_prompt
    assert {line.get_linestyle() for line in ax.lines} == {"-", "--"}
    assert ax.get_legend().get_title().get_text() == "guidance_scale, negative_prompt"
    n_points = sum(len(c.get_offsets()) for c in ax.collections)
    assert n_points == int((measured.df.status == "ok").sum() / 2)  # seed 0 only, failed cell left out


def test_no_hue_and_categorical_x(measured):
    fig = plot_tradeoff(measured, x="negative_prompt", y="psnr", hue=None)
    (ax,) = fig.axes
    assert len(ax.lines) == 1 and ax.get_legend() is None
    assert [t.get_text() for t in ax.get_xticklabels()][0] == '""'


def test_missing_metric_suggests_add_metrics(tmp_path):
    result = make_fake_sweep(tmp_path / "s")
    with pytest.raises(ValidationError, match=r"no 'clip_score' column.*add_metrics\(result, metrics=\['clip_score'\]\)"):
        plot_tradeoff(result, y="clip_score")
    with pytest.raises(ValidationError, match=r"`y` must be a column.*'sharpness'"):
        plot_tradeoff(result, y="sharpness")


def test_bad_arguments(measured):
    with pytest.raises(ValidationError, match=r"`hue` must be a column.*'cfg'"):
        plot_tradeoff(measured, hue="cfg")
    with pytest.raises(ValidationError, match=r"`spread`"):
        plot_tradeoff(measured, spread="violin")
    with pytest.raises(ValidationError, match=r"no finite values"):
        plot_tradeoff(measured, where={"status": "error"})


def test_figure_shows_itself_as_png_and_hub_ids_read_short(measured):
    import io

    from PIL import Image

    from img2img_lab.figures import LabFigure

    df = measured.df.assign(model=measured.df.seed.map({0: "stable-diffusion-v1-5/stable-diffusion-v1-5",
                                                        1: "stabilityai/sdxl-turbo"}))
    result = type(measured)(df=df, out_dir=measured.out_dir)
    fig = plot_tradeoff(result, x="strength", y="ssim", hue="model")
    assert isinstance(fig, LabFigure)
    assert Image.open(io.BytesIO(fig._repr_png_())).format == "PNG"
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["stable-diffusion-v1-5", "sdxl-turbo"]
    fig = plot_tradeoff(result, x="model", y="ssim", hue=None)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["stable-diffusion-v1-5", "sdxl-turbo"]


def test_a_long_legend_goes_beside_the_plot_a_short_one_inside(tmp_path):
    from img2img_lab import add_metrics

    many = add_metrics(make_fake_sweep(tmp_path / "many", strength=(0.3, 0.6, 0.9), negative_prompt=("",),
                                       guidance_scale=tuple(float(g) for g in range(1, 13)), error_cell=None),
                       ["ssim"], progress=False)
    fig = plot_tradeoff(many, x="strength", y="ssim", hue="guidance_scale")
    fig._repr_png_()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes: no line hidden under it
    few = add_metrics(make_fake_sweep(tmp_path / "few", negative_prompt=("",), error_cell=None), ["ssim"], progress=False)
    fig = plot_tradeoff(few, x="strength", y="ssim", hue="guidance_scale")
    fig._repr_png_()
    (ax,) = fig.axes
    assert ax.get_legend().get_window_extent().x1 <= ax.get_window_extent().x1 + 1
