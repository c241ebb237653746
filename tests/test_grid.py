"""plot_grid / grid_image: labels, panels, placeholders, filtering, size limits and errors."""

import numpy as np
import pytest
from _fake_sweep import make_fake_sweep
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from img2img_lab.errors import ValidationError
from img2img_lab.grid import filter_rows, format_value, grid_image, grid_layout, plot_grid


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
    assert sorted(placeholders(fig)) == ["missing", "missing"]
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
    assert format_value(None) == "None"
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
    with pytest.raises(ValidationError, match=r"would be \d+ x \d+ px \(12 cells at `cell_size`=4096\).*smaller `cell_size`.*where="):
        grid_image(sweep, z="negative_prompt", cell_size=4096)
    assert allocated == []
    with pytest.raises(ValidationError, match="max|limit"):
        grid_image(sweep, z="negative_prompt", cell_size=256, max_pixels=100_000)
    with pytest.raises(ValidationError, match="`cell_size`"):
        grid_image(sweep, z="negative_prompt", cell_size=4)


def test_ambiguous_cell_hint_can_be_pasted(tmp_path):
    result = make_fake_sweep(tmp_path / "s", negative_prompt=(None, "ugly"), error_cell=None)
    with pytest.raises(ValidationError) as info:
        plot_grid(result, x="strength", y="guidance_scale")
    assert "where={'negative_prompt': None}" in str(info.value) and "z='negative_prompt'" in str(info.value)
