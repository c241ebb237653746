"""plot_grid / grid_image: labels, panels, placeholders, filtering, sizes, limits, errors, and
how the figures display in a real Jupyter kernel."""

import base64
import io
import os
import re
import warnings
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pandas as pd
import pytest
from _fake_sweep import make_fake_sweep
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

import img2img_lab
from img2img_lab import figures
from img2img_lab.errors import StoreError, ValidationError
from img2img_lab.figures import LabFigure
from img2img_lab.grid import (MAX_CELLS, MAX_MEGAPIXELS, SplitGrids, cell_message, filter_rows, format_value,
                              grid_image, grid_layout, open_grid, plot_grid, save_grid, value_labels)
from img2img_lab.metrics import add_metrics


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    # strength (3) x guidance_scale (2) x negative_prompt (2), the (0.9, 7.5, "") cell failed
    return make_fake_sweep(tmp_path_factory.mktemp("sweep"))


def all_texts(fig: Figure) -> list[str]:
    texts = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        texts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        texts += [t.get_text() for t in ax.texts]
    return [t for t in texts if t]


def image_artists(fig: Figure, prefix: str) -> list:
    return [im for ax in fig.axes for im in ax.images if (im.get_gid() or "").startswith(prefix)]


def placeholders(fig: Figure) -> list[str]:
    return [t.get_gid().split(":", 1)[1] for ax in fig.axes for t in ax.texts if (t.get_gid() or "").startswith("placeholder:")]


def placeholder_texts(fig: Figure) -> list[str]:
    """What the placeholder cells say, line breaks undone."""
    return [" ".join(t.get_text().split()) for ax in fig.axes for t in ax.texts
            if (t.get_gid() or "").startswith("placeholder:")]


@pytest.fixture
def drawn_texts(monkeypatch):
    """Every string `grid_image` draws with PIL (lines of multi-line text included)."""
    texts = []
    real_text, real_multiline = ImageDraw.ImageDraw.text, ImageDraw.ImageDraw.multiline_text

    def text(self, xy, value, *args, **kwargs):
        texts.append(value)
        return real_text(self, xy, value, *args, **kwargs)

    def multiline_text(self, xy, value, *args, **kwargs):
        texts.append(value)
        return real_multiline(self, xy, value, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    monkeypatch.setattr(ImageDraw.ImageDraw, "multiline_text", multiline_text)
    return texts


def test_plot_grid_labels_panels_and_placeholder(sweep):
    fig = plot_grid(sweep, x="strength", y="guidance_scale", z="negative_prompt")
    assert isinstance(fig, Figure)
    texts = all_texts(fig)
    for expected in ("strength", "guidance_scale", "0.3", "0.6", "0.9", "1", "7.5", "init image"):
        assert expected in texts
    assert 'negative_prompt=""' in texts
    assert any(t.startswith("negative_prompt=ugly, deformed") and t.endswith("…") for t in texts)
    # one image per z panel plus the one init reference
    assert len(image_artists(fig, "panel:")) == 2
    assert len(image_artists(fig, "init")) == 1
    assert placeholders(fig) == ["error"]
    # the failed cell says why: its stored error
    assert placeholder_texts(fig) == ["error: RuntimeError: fake failure for tests"]
    FigureCanvasAgg(fig).draw()  # renders headless


def test_plot_grid_cells_in_the_right_place(sweep):
    fig = plot_grid(sweep, x="strength", y="guidance_scale", where={"negative_prompt": ""}, show_init=False)
    (panel,) = image_artists(fig, "panel:")
    assert image_artists(fig, "init") == []
    mosaic = np.asarray(panel.get_array())
    layout = grid_layout(sweep, "strength", "guidance_scale", where={"negative_prompt": ""})
    _, ny, nx = layout.shape
    ch, cw = mosaic.shape[0] // ny, mosaic.shape[1] // nx
    # The failed cell (strength 0.9 = column 2, guidance_scale 7.5 = row 1) is a flat grey tile.
    failed = mosaic[ch * 1 + ch // 4 : ch * 1 + ch // 3, cw * 2 + cw // 2 - 5 : cw * 2 + cw // 2 - 1]
    assert np.all(failed == 200)
    ok = mosaic[: ch - 4, : cw - 4]
    assert ok.std() > 10
    assert placeholders(fig) == ["error"]


def test_plot_grid_missing_cells(tmp_path):
    result = make_fake_sweep(tmp_path / "s", negative_prompt=[""], error_cell=None)
    # drop one row entirely, and delete the file of another
    df = result.df[~((result.df.strength == 0.3) & (result.df.guidance_scale == 1.0))]
    (tmp_path / "s" / df.iloc[0]["image_path"]).unlink()
    result = type(result)(df=df, out_dir=result.out_dir)
    fig = plot_grid(result)
    # the dropped cell was never run; the other one lost its file
    assert sorted(placeholders(fig)) == ["missing", "not run"]
    texts = placeholder_texts(fig)
    assert "not run" in texts and any(t.startswith("missing") for t in texts)
    image = grid_image(result, cell_size=64)
    assert image.size[0] > 3 * 64


def test_plot_grid_without_z_has_single_panel_and_default_title(sweep):
    fig = plot_grid(sweep, where={"negative_prompt": ""})
    assert len(image_artists(fig, "panel:")) == 1
    assert any("x: strength" in t and "y: guidance_scale" in t for t in all_texts(fig))
    fig = plot_grid(sweep, where={"negative_prompt": ""}, title="my grid")
    assert fig._suptitle.get_text() == "my grid"


def test_plot_grid_one_reference_per_init_image(tmp_path):
    result = make_fake_sweep(tmp_path / "s", image=["astronaut", "cat"], negative_prompt=[""], error_cell=None)
    fig = plot_grid(result, x="strength", y="guidance_scale", z="image")
    assert len(image_artists(fig, "init")) == 2
    assert len(image_artists(fig, "panel:")) == 2
    texts = all_texts(fig)
    assert "image=astronaut" in texts and "image=cat" in texts


def test_plot_grid_large_grid_has_bounded_size(tmp_path):
    values = [round(0.05 * i, 2) for i in range(20)]
    result = make_fake_sweep(tmp_path / "big", strength=values, guidance_scale=values, negative_prompt=[""],
                             size=16, error_cell=None)
    fig = plot_grid(result, max_figsize=(10, 8))
    width, height = fig.get_size_inches()
    assert width <= 10 and height <= 8
    (panel,) = image_artists(fig, "panel:")
    assert max(panel.get_array().shape[:2]) <= 20 * (2048 // 20 + 2)
    assert len([t for t in fig.axes[-1].get_xticklabels() if t.get_text()]) == 20


@pytest.mark.parametrize(
    "where",
    [
        {"negative_prompt": "", "strength": [0.3, 0.6]},
        "negative_prompt == '' and strength < 0.8",
        lambda df: (df.negative_prompt == "") & (df.strength < 0.8),
    ],
    ids=["dict", "query", "callable"],
)
def test_where_filters_rows(sweep, where):
    layout = grid_layout(sweep, "strength", "guidance_scale", where=where)
    assert layout.x_values == [0.3, 0.6]
    assert layout.shape == (1, 2, 2)
    assert len(filter_rows(sweep.df, where)) == 4
    fig = plot_grid(sweep, where=where)
    assert "0.9" not in all_texts(fig)


def test_ambiguous_cells_are_refused(sweep):
    with pytest.raises(ValidationError, match=r"negative_prompt.*where=.*z='negative_prompt'"):
        plot_grid(sweep, x="strength", y="guidance_scale")
    with pytest.raises(ValidationError, match="negative_prompt"):
        grid_image(sweep, x="strength", y="guidance_scale")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x": "strenght"}, r"`x` must be a column.*'strenght'.*swept columns: \['negative_prompt', 'strength', 'guidance_scale'\]"),
        ({"y": "cfg"}, r"`y` must be a column.*'cfg'"),
        ({"z": "sampler"}, r"`z` must be a column.*'sampler'"),
        ({"x": "strength", "y": "strength"}, r"`y` must differ from `x`"),
        ({"where": {"nope": 1}}, r"`where` names column 'nope'"),
        ({"where": {"strength": 0.123}}, r"selects no rows"),
        ({"where": "strength >>> 1"}, r"`where` query"),
        ({"where": 3}, r"`where` must be"),
    ],
)
def test_bad_arguments(sweep, kwargs, message):
    kwargs = {"z": "negative_prompt", **kwargs}
    with pytest.raises(ValidationError, match=message):
        plot_grid(sweep, **kwargs)


def test_format_value():
    assert format_value(0.75) == "0.75"
    assert format_value("") == '""'
    assert format_value(None) == "(none)" and format_value(float("nan")) == "(none)"
    assert format_value("a " * 40).endswith("…") and len(format_value("a " * 40)) == 28
    assert format_value("line\nbreak") == "line break"


def test_grid_image_size_and_labels(sweep):
    image = grid_image(sweep, z="negative_prompt", cell_size=64)
    width, height = image.size
    # 2 panels of 3 x 2 cells of 64 px (plus gutters), an init column, labels
    assert 2 * 3 * 64 + 64 < width < 2 * 3 * 64 + 64 + 400
    assert 2 * 64 < height < 2 * 64 + 250
    assert image.mode == "RGB"
    # bigger cells, bigger image, same layout
    bigger = grid_image(sweep, z="negative_prompt", cell_size=128)
    assert bigger.size[0] > 1.7 * width
    plain = grid_image(sweep, z="negative_prompt", cell_size=64, show_init=False, title="")
    assert plain.size[0] < width and plain.size[1] < height


def test_grid_image_has_placeholder(sweep):
    image = np.asarray(grid_image(sweep, where={"negative_prompt": ""}, cell_size=64, show_init=False, title=""))
    grey = np.all(image == (200, 200, 200), axis=-1)
    assert grey.sum() > 0.3 * 64 * 64  # one grey tile (cross and text aside)


def test_grid_image_refuses_huge_grids_before_allocating(sweep, monkeypatch):
    import PIL.Image

    allocated = []
    real_new = PIL.Image.new
    monkeypatch.setattr(PIL.Image, "new", lambda *a, **k: allocated.append(a) or real_new(*a, **k))
    with pytest.raises(ValidationError, match=r"would be \d+ x \d+ px = [\d.,]+ MP \(12 cells at `cell_size`=4096\)"
                                              r".*16384 px a side.*smaller `cell_size`.*where="):
        grid_image(sweep, z="negative_prompt", cell_size=4096)
    assert allocated == []
    with pytest.raises(ValidationError, match=r"past the limit of 0.1 MP in all \(`max_megapixels`\)"):
        grid_image(sweep, z="negative_prompt", cell_size=256, max_megapixels=0.1)
    assert allocated == []
    with pytest.raises(ValidationError, match="`cell_size`"):
        grid_image(sweep, z="negative_prompt", cell_size=4)


# ----------------------------------------------------------------------------------------------
# limits: 200 MP a grid_image, max_cells, one grid per value (split_by), PIL's limit left alone


class Allocated(Exception):
    """What `PIL.Image.new` raises under `no_allocation`: the size a grid would have been drawn at."""


@pytest.fixture
def no_allocation(monkeypatch):
    """`PIL.Image.new` raises `Allocated(size)`, so a grid that passes its checks is measured,
    never drawn."""
    def new(mode, size, *args, **kwargs):
        raise Allocated(size)

    monkeypatch.setattr(Image, "new", new)


@pytest.fixture(scope="module")
def seeds_sweep(tmp_path_factory):
    # strength (3) x guidance_scale (3) x seed (4): a 2 x 2 arrangement of seed panels, near square
    return make_fake_sweep(tmp_path_factory.mktemp("seeds") / "s", guidance_scale=(1.0, 4.0, 7.5),
                           seed=(0, 1, 2, 3), negative_prompt=[""], error_cell=None)


def _measured(result, cell_size: int, **kwargs) -> tuple[tuple[int, int], str | None]:
    """The size `grid_image` makes at ``cell_size`` and its refusal (None when it would draw)."""
    try:
        grid_image(result, cell_size=cell_size, **kwargs)
    except Allocated as allocated:
        return tuple(allocated.args[0]), None
    except ValidationError as exc:
        width, height = re.search(r"would be (\d+) x (\d+) px", str(exc)).groups()
        return (int(width), int(height)), str(exc)
    raise AssertionError("grid_image drew an image under no_allocation")


def test_grid_image_limit_is_200_megapixels(seeds_sweep, no_allocation):
    assert MAX_MEGAPIXELS == 200
    kwargs = {"z": "seed", "show_init": False}
    low, high = 256, 4096  # the largest cell_size that fits: measured, not drawn
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if _measured(seeds_sweep, mid, **kwargs)[1] is None else (low, mid - 1)
    (width, height), refusal = _measured(seeds_sweep, low, **kwargs)
    assert refusal is None and width * height <= 200_000_000 and max(width, height) <= 16384
    assert width * height > 199_000_000  # just under the limit: allowed (PIL's own limit is ~89 MP)
    (width, height), refusal = _measured(seeds_sweep, low + 1, **kwargs)
    assert width * height > 200_000_000 and max(width, height) <= 16384
    assert f"would be {width} x {height} px = {width * height / 1e6:.1f} MP (36 cells at `cell_size`={low + 1})" in refusal
    assert "past the limit of 200 MP in all (`max_megapixels`);" in refusal and "a side" not in refusal
    # each way out it names fits: the largest smaller cell, and one grid per value of the z axis
    assert f"smaller `cell_size` ({low} fits)" in refusal and "`where=`" in refusal
    assert re.search(r"`split_by='seed'` \(4 grids of \d+ x \d+ px = [\d.]+ MP\)", refusal)
    assert _measured(seeds_sweep, low + 1, split_by="seed", **kwargs)[1] is None
    # a limit of one's own, half a pixel either side of a grid's size
    (width, height), _ = _measured(seeds_sweep, 256, **kwargs)
    assert _measured(seeds_sweep, 256, max_megapixels=(width * height + 0.5) / 1e6, **kwargs)[1] is None
    assert _measured(seeds_sweep, 256, max_megapixels=(width * height - 0.5) / 1e6, **kwargs)[1] is not None
    assert "past the limit of 1000 px a side (`max_side`)" in _measured(seeds_sweep, 256, max_side=1000, **kwargs)[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_megapixels": 0}, r"`max_megapixels` must be a positive number of megapixels, got 0"),
        ({"max_megapixels": "200"}, r"`max_megapixels` must be a positive number.*got '200'"),
        ({"max_megapixels": True}, r"`max_megapixels` must be a positive number.*got True"),
        ({"max_side": 8}, r"`max_side` must be an int of at least 16, got 8"),
        ({"max_cells": 0}, r"`max_cells` must be None or an int of at least 1, got 0"),
        ({"max_cells": 2.5}, r"`max_cells` must be None or an int of at least 1, got 2.5"),
        ({"cell_size": True}, r"`cell_size` must be an int of at least 16 pixels, got True"),
    ],
)
def test_bad_limits(sweep, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        grid_image(sweep, z="negative_prompt", **kwargs)


def test_split_by_gives_one_grid_per_seed(tmp_path, drawn_texts):
    result = make_fake_sweep(tmp_path / "s", seed=(1, 0), negative_prompt=("", "ugly"))
    grids = grid_image(result, z="negative_prompt", split_by="seed", cell_size=64)
    assert isinstance(grids, SplitGrids) and isinstance(grids, dict) and grids.axis == "seed"
    assert list(grids) == [0, 1]  # the axis's order: numbers sorted
    assert all(isinstance(im, Image.Image) for im in grids.values())
    whole = grid_image(result, z="negative_prompt", where={"seed": 0}, cell_size=64)
    assert grids[0].size[0] == whole.size[0] and grids[0].size[1] > whole.size[1]  # one more title line: seed=0
    assert "seed=0" in drawn_texts and "seed=1" in drawn_texts
    assert np.asarray(grids[0]).tobytes() != np.asarray(grids[1]).tobytes()
    assert grids._repr_html_().count("<img") == 2  # in Jupyter: one picture after the other

    figs = plot_grid(result, z="negative_prompt", split_by="seed", title="my sweep")
    assert list(figs) == [0, 1] and all(isinstance(f, LabFigure) for f in figs.values())
    assert [f._suptitle.get_text() for f in figs.values()] == ["my sweep\nseed=0", "my sweep\nseed=1"]
    assert all(len(image_artists(f, "panel:")) == 2 for f in figs.values())
    assert placeholders(figs[0]) == ["error"] and placeholders(figs[1]) == ["error"]
    # strings keep their order of appearance; flat labels name the split's values too
    figs = plot_grid(result, split_by="negative_prompt", where={"seed": 0}, labels={"ugly": "ugly one"})
    assert list(figs) == ["", "ugly"]
    assert figs["ugly"]._suptitle.get_text().endswith("\nnegative_prompt=ugly one")
    # a split by one of the axes: one panel each
    panels = plot_grid(result, z="negative_prompt", split_by="negative_prompt", where={"seed": 1})
    assert [len(image_artists(f, "panel:")) for f in panels.values()] == [1, 1]


@pytest.mark.parametrize("split_by, message", [
    ("sampler", r"`split_by` must be a swept column of the sweep, got 'sampler'; swept columns: "
                r"\['negative_prompt', 'strength', 'guidance_scale', 'seed'\]"),
    ("prompt", r"`split_by` must be a swept column.*got 'prompt', which takes one value in it; "
               r"swept columns: \['negative_prompt'"),
    (3, r"`split_by` must be a swept column.*got 3"),
])
def test_bad_split_by(tmp_path, split_by, message):
    result = make_fake_sweep(tmp_path / "s", seed=(0, 1))
    with pytest.raises(ValidationError, match=message):
        plot_grid(result, z="negative_prompt", split_by=split_by)
    with pytest.raises(ValidationError, match=message):
        grid_image(result, z="negative_prompt", split_by=split_by)


def test_save_grid_writes_one_file_per_value_and_open_grid_reads_it(tmp_path):
    result = make_fake_sweep(tmp_path / "s", seed=(0, 1), negative_prompt=("", "ugly, deformed / bad", None))
    one = grid_image(result, z="negative_prompt", where={"seed": 0}, cell_size=32)
    assert save_grid(one, tmp_path / "out" / "grid.png") == tmp_path / "out" / "grid.png"
    assert np.array_equal(np.asarray(open_grid(tmp_path / "out" / "grid.png")), np.asarray(one))
    paths = save_grid(grid_image(result, z="seed", split_by="negative_prompt", cell_size=32), tmp_path / "out" / "grid.png")
    assert [p.name for p in paths.values()] == [
        "grid_negative_prompt=empty.png", "grid_negative_prompt=ugly-deformed-bad.png", "grid_negative_prompt=none.png"]
    by_seed = save_grid(grid_image(result, z="negative_prompt", split_by="seed", cell_size=32), tmp_path / "out" / "grid.png")
    assert {k: p.name for k, p in by_seed.items()} == {0: "grid_seed=0.png", 1: "grid_seed=1.png"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["grid.png", *(p.name for p in paths.values()), *(p.name for p in by_seed.values())])  # no temp files left
    with pytest.raises(ValidationError, match=r"`path` must name a .png file, got '.*grid.jpg'"):
        save_grid(one, tmp_path / "grid.jpg")
    with pytest.raises(ValidationError, match=r"`grids` must be what `grid_image` returns.*got dict"):
        save_grid({0: one}, tmp_path / "grid.png")
    (tmp_path / "not.png").write_text("text")
    with pytest.raises(StoreError, match=r"`path` must be a PNG file, got '.*not.png'"):
        open_grid(tmp_path / "not.png")


def test_own_grids_read_past_pil_limit_which_stays_as_it_is(sweep, tmp_path, monkeypatch):
    # PIL's guard scaled down (a 150 MP grid against ~89 MP), so the test stays small
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    grid = grid_image(sweep, z="negative_prompt", cell_size=64)
    assert grid.size[0] * grid.size[1] > 2 * 10_000
    path = save_grid(grid, tmp_path / "grid.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        back = open_grid(path)
    assert np.array_equal(np.asarray(back), np.asarray(grid))
    assert Image.MAX_IMAGE_PIXELS == 10_000
    megapixels = grid.size[0] * grid.size[1] / 1e6
    with pytest.raises(StoreError, match=rf"is {grid.size[0]} x {grid.size[1]} px = .* MP, past the limit of 0.01 MP"):
        open_grid(path, max_megapixels=0.01)
    assert open_grid(path, max_megapixels=megapixels).size == grid.size


def test_pil_limit_is_never_changed(sweep, tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    plot_grid(sweep, z="negative_prompt", split_by="negative_prompt")
    open_grid(save_grid(grid_image(sweep, z="negative_prompt", cell_size=32), tmp_path / "g.png"))
    assert Image.MAX_IMAGE_PIXELS == before
    package = Path(img2img_lab.__file__).parent
    assigned = [str(f.relative_to(package)) for f in package.rglob("*.py")
                if re.search(r"MAX_IMAGE_PIXELS\s*=(?!=)", f.read_text(encoding="utf-8"))]
    assert assigned == []  # nowhere in the package, for a moment or for good


def _many_cells(sweep, n_strengths: int, n_guidance: int):
    """The sweep's first row repeated on an ``n_strengths`` x ``n_guidance`` grid (one image file)."""
    row = sweep.df[sweep.df.status == "ok"].iloc[[0]]
    df = pd.concat([row.assign(strength=0.01 * (i + 1), guidance_scale=float(j))
                    for i in range(n_strengths) for j in range(n_guidance)], ignore_index=True)
    return type(sweep)(df=df, out_dir=sweep.out_dir)


def test_max_cells_refused_before_drawing(sweep, monkeypatch):
    assert MAX_CELLS == 1000
    drawn = []
    monkeypatch.setattr(figures, "LabFigure", lambda *a, **k: drawn.append(a))
    with pytest.raises(ValidationError, match=r"`plot_grid` would draw 1,001 cells \(7 x 143\), more than "
                                              r"`max_cells`=1,000; select fewer with `where=`, or make one grid per value with "
                                              r"`split_by='guidance_scale'` \(7 grids of 143 cells\), or raise `max_cells`"):
        plot_grid(_many_cells(sweep, 143, 7))
    with pytest.raises(ValidationError, match=r"`plot_grid` would draw 12 cells \(2 panels of 2 x 3\), more than "
                                              r"`max_cells`=10; .*`split_by='negative_prompt'` \(2 grids of 6 cells\)"):
        plot_grid(sweep, z="negative_prompt", max_cells=10)
    with pytest.raises(ValidationError, match=r"`plot_grid` for negative_prompt=\S+ would draw 6 cells"):
        plot_grid(sweep, split_by="negative_prompt", max_cells=5)
    assert drawn == []
    with pytest.raises(ValidationError, match=r"`grid_image` would draw 12 cells.*`max_cells`=11"):
        grid_image(sweep, z="negative_prompt", max_cells=11)
    with pytest.raises(ValidationError, match=r"`max_cells` must be None or an int of at least 1, got -1"):
        plot_grid(sweep, z="negative_prompt", max_cells=-1)


def test_ambiguous_cell_hint_can_be_pasted(tmp_path):
    result = make_fake_sweep(tmp_path / "s", negative_prompt=(None, "ugly"), error_cell=None)
    with pytest.raises(ValidationError) as info:
        plot_grid(result, x="strength", y="guidance_scale")
    assert "where={'negative_prompt': None}" in str(info.value) and "z='negative_prompt'" in str(info.value)
    assert "split_by='negative_prompt'" in str(info.value)
    assert len(plot_grid(result, x="strength", y="guidance_scale", split_by="negative_prompt")) == 2


# ----------------------------------------------------------------------------------------------
# labels: short names for URLs, paths and hub ids; labels the caller gives; why a cell is empty

INIT_URL = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/img2img-init.png"
CAT_URL = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/cat.png"


def test_value_labels_short_names_stay_distinct():
    assert value_labels("image", [INIT_URL, CAT_URL, "/data/in/cat.jpg", "astronaut"]) == [
        "img2img-init.png", "cat.png", "cat.jpg", "astronaut"]
    assert value_labels("model", ["stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/sdxl-turbo"]) == [
        "stable-diffusion-v1-5", "sdxl-turbo"]
    # two values with the same last part show as much of their paths as tells them apart
    assert value_labels("image", ["https://a.org/x/init.png", "https://a.org/y/init.png", "init.png"]) == [
        "x/init.png", "y/init.png", "init.png"]
    assert value_labels("model", ["tiny/sd15", "sd15"]) == ["tiny/sd15", "sd15"]
    # a chain's models are words, not a path; a local path may hold spaces
    assert value_labels("model", ["tiny/sd15 -> tiny/kandinsky22"]) == [format_value("tiny/sd15 -> tiny/kandinsky22")]
    assert value_labels("image", ["/home/me/My Pictures/cat.png", "~/in/a b.png"]) == ["cat.png", "a b.png"]
    # prompts are text, shortened as before, even with a slash in them
    prompt = "a cat / a dog, detailed, 8k, cold color palette, muted colors"
    (label,) = value_labels("negative_prompt", [prompt])
    assert label == format_value(prompt) and label.endswith("…") and len(label) == 28
    assert value_labels("negative_prompt", [None, ""]) == ["(none)", '""']
    # a given label wins
    assert value_labels("image", [INIT_URL, CAT_URL], {CAT_URL: "the cat"}) == ["img2img-init.png", "the cat"]


@pytest.fixture(scope="module")
def url_sweep(sweep):
    """The module's sweep with its init image given as a URL and one more model on the x axis."""
    df = sweep.df.assign(image=INIT_URL)
    df = df[df.negative_prompt == ""]
    other = df.assign(model="stable-diffusion-v1-5/stable-diffusion-v1-5", strength=0.3)
    df = pd.concat([df[df.strength == 0.3], other[other.guidance_scale == 1.0]], ignore_index=True)
    return type(sweep)(df=df, out_dir=sweep.out_dir)


def test_urls_and_hub_ids_read_as_short_names(url_sweep, drawn_texts):
    fig = plot_grid(url_sweep, x="model", y="guidance_scale")
    texts = all_texts(fig)
    assert "sd15" in texts and "stable-diffusion-v1-5" in texts
    assert "init image" in texts  # one init image: no name needed
    fig = plot_grid(url_sweep, x="model", y="guidance_scale", labels={"model": {"tiny/sd15": "tiny"}})
    assert "tiny" in all_texts(fig) and "sd15" not in all_texts(fig)
    grid_image(url_sweep, x="model", y="guidance_scale", cell_size=128)
    assert "sd15" in drawn_texts and "stable-diffusion-v1-5" in drawn_texts


def test_init_images_named_by_short_names(tmp_path, drawn_texts):
    result = make_fake_sweep(tmp_path / "s", image=["astronaut", "cat"], negative_prompt=[""], error_cell=None)
    result = type(result)(df=result.df.assign(image=result.df.image.map({"astronaut": INIT_URL, "cat": CAT_URL})),
                          out_dir=result.out_dir)
    fig = plot_grid(result, z="image")
    texts = all_texts(fig)
    assert "image=img2img-init.png" in texts and "image=cat.png" in texts
    assert "init image\nimg2img-init.png" in texts and "init image\ncat.png" in texts
    # a flat {value: label} names the values of every axis and of the init images
    fig = plot_grid(result, z="image", labels={CAT_URL: "cat", 0.3: "low"})
    texts = all_texts(fig)
    assert "image=cat" in texts and "init image\ncat" in texts and "low" in texts and "0.3" not in texts
    grid_image(result, z="image", cell_size=128, labels={CAT_URL: "cat"})
    assert "image=cat" in drawn_texts and "image=img2img-init.png" in drawn_texts
    assert "init: cat" in drawn_texts


def test_missing_negative_prompt_reads_none(tmp_path, drawn_texts):
    result = make_fake_sweep(tmp_path / "s", negative_prompt=(None, "ugly"), error_cell=None)
    fig = plot_grid(result, z="negative_prompt")
    assert "negative_prompt=(none)" in all_texts(fig)
    grid_image(result, z="negative_prompt", cell_size=64)
    assert "negative_prompt=(none)" in drawn_texts
    fig = plot_grid(result, z="negative_prompt", labels={"negative_prompt": {None: "no negative"}})
    assert "negative_prompt=no negative" in all_texts(fig)


@pytest.mark.parametrize(
    "labels, message",
    [
        ("short", r"`labels` must be a dict.*str: 'short'"),
        ({"sampler": {"a": "b"}}, r"`labels` names column 'sampler'"),
        ({"strength": {0.123: "x"}}, r"`labels`: column 'strength' has no value 0.123; its values: \['0.3'"),
        ({"strength": {0.3: 3}}, r"`labels`: the label of strength=0.3 must be a str, got int: 3"),
        ({"strength": {0.3: "low"}, 0.6: "mid"}, r"not a mix"),
        ({0.123: "x"}, r"`labels`: no value of the axes \['strength', 'guidance_scale', 'negative_prompt', 'image'\] is 0.123"),
    ],
)
def test_bad_labels(sweep, labels, message):
    with pytest.raises(ValidationError, match=message):
        plot_grid(sweep, z="negative_prompt", labels=labels)
    with pytest.raises(ValidationError, match=message):
        grid_image(sweep, z="negative_prompt", labels=labels)


def test_failed_cells_say_why(sweep, drawn_texts):
    df = sweep.df.copy()
    nan_row = (df.strength == 0.3) & (df.guidance_scale == 1.0) & (df.negative_prompt == "")
    df.loc[nan_row, "status"] = "nan"
    df = df[~((df.strength == 0.6) & (df.guidance_scale == 1.0) & (df.negative_prompt == ""))]  # not run
    result = type(sweep)(df=df, out_dir=sweep.out_dir)
    fig = plot_grid(result, where={"negative_prompt": ""})
    assert sorted(placeholders(fig)) == ["error", "nan", "not run"]
    assert sorted(placeholder_texts(fig)) == ["error: RuntimeError: fake failure for tests",
                                             "nan: the output decoded to NaN (a black image)", "not run"]
    grid_image(result, where={"negative_prompt": ""}, cell_size=256)
    drawn = " ".join(" ".join(drawn_texts).split())
    assert "error: RuntimeError: fake failure for tests" in drawn
    assert "nan: the output decoded to NaN (a black image)" in drawn and "not run" in drawn


def test_long_error_is_wrapped_to_fit_its_cell(sweep):
    df = sweep.df.copy()
    long_error = "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. " * 6
    df.loc[df.status == "error", "error"] = long_error
    result = type(sweep)(df=df, out_dir=sweep.out_dir)
    assert cell_message(df[df.status == "error"].iloc[0], "error") == "error: " + " ".join(long_error.split())
    fig = plot_grid(result, where={"negative_prompt": ""}, show_init=False)
    (text,) = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "placeholder:error"]
    lines = text.get_text().split("\n")
    assert len(lines) > 1 and lines[-1].endswith("…")  # wrapped, and cut where the cell ends
    FigureCanvasAgg(fig).draw()
    (panel,) = [ax for ax in fig.axes if ax.images]
    cell = panel.get_window_extent()
    box = text.get_window_extent()
    assert box.width <= cell.width / 3 and box.height <= cell.height / 2  # inside one of 3 x 2 cells


# ----------------------------------------------------------------------------------------------
# sizes: small grids at full size, large ones within max_figsize


def _square_sweep(path, n: int, size: int):
    return make_fake_sweep(path, strength=[round(0.05 * (i + 1), 2) for i in range(n)],
                           guidance_scale=[float(i + 1) for i in range(n)], negative_prompt=[""], size=size,
                           error_cell=None)


def _panel_px(fig) -> tuple[float, float, Image.Image]:
    """The panel's size in pixels of the PNG the notebook shows, and that PNG."""
    png = Image.open(io.BytesIO(fig._repr_png_()))
    (panel,) = [ax for ax in fig.axes if image_artists(fig, "panel:")[0] in ax.images]
    box = panel.get_window_extent()  # display pixels at the figure's dpi, as drawn for the PNG
    return box.width, box.height, png


@pytest.mark.parametrize("n, size, cell", [(1, 64, 256), (1, 512, 512), (2, 64, 256), (3, 64, 256), (2, 300, 300)],
                         ids=["1x1-64px", "1x1-512px", "2x2-64px", "3x3-64px", "2x2-300px"])
def test_small_grids_show_cells_at_full_size(tmp_path, n, size, cell):
    fig = plot_grid(_square_sweep(tmp_path / "s", n, size))
    width, height, png = _panel_px(fig)
    assert abs(width - n * cell) <= 0.02 * n * cell and abs(height - n * cell) <= 0.02 * n * cell
    assert png.width > width and png.height > height  # the PNG holds the panel and its labels
    assert png.width < width + 3 * cell + 200  # init column, labels: no slack around


def test_thumb_sets_the_cell_size(tmp_path):
    fig = plot_grid(_square_sweep(tmp_path / "s", 2, 64), thumb=100)
    width, height, _ = _panel_px(fig)
    assert abs(width - 200) <= 4 and abs(height - 200) <= 4
    for bad in (4, 2.5, True):
        with pytest.raises(ValidationError, match=rf"`thumb` must be None or an int.*got {bad!r}"):
            plot_grid(_square_sweep(tmp_path / "s", 2, 64), thumb=bad)
    with pytest.raises(ValidationError, match=r"`max_figsize` must be \(width, height\).*\(10, -1\)"):
        plot_grid(_square_sweep(tmp_path / "s", 2, 64), max_figsize=(10, -1))


def test_large_grid_shrinks_to_max_figsize(tmp_path):
    fig = plot_grid(_square_sweep(tmp_path / "s", 12, 64), max_figsize=(16, 12))
    width, height, png = _panel_px(fig)
    fig_w, fig_h = fig.get_size_inches()
    assert fig_w <= 16 and fig_h <= 12
    assert png.width <= 16 * fig.dpi + 40 and png.height <= 12 * fig.dpi + 40  # tight bbox pads a little
    assert 64 <= width / 12 < 256 and 64 <= height / 12 < 256  # smaller cells, still readable
    assert abs(height - 12 * fig.dpi * 0.8) < 12 * fig.dpi * 0.2  # and the figure's height is used


# ----------------------------------------------------------------------------------------------
# display in Jupyter: one picture per figure, whatever the kernel's matplotlib set-up


@pytest.fixture(scope="module")
def measured_folder(tmp_path_factory):
    result = make_fake_sweep(tmp_path_factory.mktemp("shown") / "s")
    add_metrics(result, ["ssim"], progress=False)
    return result.out_dir


def test_figures_render_as_png_like_the_inline_backend(sweep):
    fig = plot_grid(sweep, z="negative_prompt")
    assert isinstance(fig, LabFigure)
    png = Image.open(io.BytesIO(fig._repr_png_()))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    assert png.size == Image.open(buffer).size
    assert LabFigure()._repr_png_() is None  # like IPython's printer: nothing for an empty figure


SETUPS = {
    "fresh kernel": "import img2img_lab as lab",
    "%matplotlib inline": "%matplotlib inline\nimport img2img_lab as lab",
    "pyplot imported": "import img2img_lab as lab\nimport matplotlib.pyplot as plt",
}
FIGURE_CELLS = [
    "lab.plot_grid(res, z='negative_prompt')",
    "lab.plot_tradeoff(res, x='strength', y='ssim', hue='guidance_scale')",
    "display(lab.plot_grid(res, where={'negative_prompt': ''}))",
]


@pytest.mark.heavy
@pytest.mark.parametrize("setup", list(SETUPS))
def test_figures_show_once_in_a_kernel(measured_folder, tmp_path, setup):
    cells = [f"{SETUPS[setup]}\nres = lab.load_sweep({str(measured_folder)!r})", *FIGURE_CELLS]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    # The kernel picks its matplotlib backend as in JupyterLab (the tests' MPLBACKEND=Agg left out).
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    for cell in nb.cells[1:]:
        pngs = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        text_only = [o for o in cell.outputs if set(o.get("data", {})) == {"text/plain"}]
        assert len(pngs) == 1, (setup, cell.source, cell.outputs)
        assert text_only == [], (setup, cell.source, text_only)
        assert Image.open(io.BytesIO(base64.b64decode(pngs[0]["data"]["image/png"]))).width > 200


def test_three_panels_of_4x4_wrap_instead_of_shrinking_to_stamps(tmp_path):
    """The guide's combined sweep (4 strengths x 4 guidance scales x 3 negative prompts)."""
    result = make_fake_sweep(tmp_path / "s", strength=(0.4, 0.6, 0.8, 1.0), guidance_scale=(0.1, 5.0, 8.0, 10.0),
                             negative_prompt=(None, "ugly", "jungle"), error_cell=None)
    fig = plot_grid(result, z="negative_prompt")
    fig._repr_png_()  # drawn as the notebook shows it
    panels = [ax for ax in fig.axes if any(str(im.get_gid()).startswith("panel:") for im in ax.images)]
    assert len(panels) == 3
    rows = sorted({round(ax.get_position().y0, 2) for ax in panels})
    assert len(rows) == 2  # two panels on the first row, the third below
    cells = [ax.get_window_extent().width / 4 for ax in panels]
    assert min(cells) >= 120, cells  # each picture still reads (side by side they were ~55 px on screen)
    assert fig.get_size_inches()[0] <= 16
