"""The explorer widget without a browser: axes, sliders, selection, escaping, sort/filter, snippet."""

import io
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from _fake_sweep import make_fake_sweep
from img2img_lab.errors import ValidationError
from img2img_lab.vocab import BATCHED_TOLERANCE
from img2img_lab.widgets import CSS, code_snippet, explore

XSS = "<script>window.__xss=1</script><img src=x onerror='window.__xss=2'>"


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def row_of(result, **params):
    df = result.df
    for column, value in params.items():
        df = df[df[column] == value]
    assert len(df) == 1, params
    return df.iloc[0]


def param_pairs(html_text: str) -> list:
    """(name, value) of each line of a parameter table, tags removed."""
    rows = re.findall(r"<th[^>]*>(.*?)</th><td[^>]*>(.*?)</td>", html_text)
    return [(re.sub("<[^>]+>", "", k), re.sub("<[^>]+>", "", v)) for k, v in rows]


@pytest.fixture
def fake(tmp_path):
    return make_fake_sweep(tmp_path / "sweep")  # strength x guidance_scale x negative_prompt, one failed cell


def cell_pixels(explorer, yi, xi):
    nx = len(explorer._layout.x_values)
    return pixels(explorer.cells[yi * nx + xi].children[0].value)


def test_defaults_and_axis_dropdowns_update_labels(fake):
    ex = explore(fake)
    assert (ex.x, ex.y) == ("strength", "guidance_scale")
    assert CSS["root"] in ex._dom_classes
    headers = [h.value for h in ex._headers[:6]]
    assert [re.sub("<[^>]+>", "", h) for h in headers[1:4]] == ["0.3", "0.6", "0.9"]
    assert [c.description for c in ex.fixed_box.children] == ["negative_prompt"]
    cells_before = ex.cells[:]

    ex.x_axis.value = "negative_prompt"
    headers = [re.sub("<[^>]+>", "", h.value) for h in ex._headers[:3]]
    assert headers[1:] == ["&quot;&quot;", "ugly, deformed, disfigured,…"]
    assert [c.description for c in ex.fixed_box.children] == ["strength"]
    assert ex.cells[:4] == cells_before[:4]  # updated in place, not rebuilt
    # choosing the other axis' column swaps instead of refusing
    ex.y_axis.value = "negative_prompt"
    assert ex.y == "negative_prompt" and ex.x != "negative_prompt"


def test_slider_changes_images_to_the_right_cell(fake):
    ex = explore(fake, x="negative_prompt", y="guidance_scale")
    slider = ex.fixed["strength"]
    assert type(slider).__name__ == "SelectionSlider"
    ugly = fake.df["negative_prompt"].iloc[1]
    np.testing.assert_array_equal(cell_pixels(ex, 1, 1), np.asarray(fake.image(row_of(fake, strength=0.3, guidance_scale=7.5, negative_prompt=ugly))))
    before = ex.cells[3].children[0].value
    slider.value = 1  # strength 0.6
    assert ex.cells[3].children[0].value != before
    for (yi, g), (xi, neg) in [((y, g), (x, n)) for y, g in enumerate([1.0, 7.5]) for x, n in enumerate(["", ugly])]:
        expected = fake.image(row_of(fake, strength=0.6, guidance_scale=g, negative_prompt=neg))
        np.testing.assert_array_equal(cell_pixels(ex, yi, xi), np.asarray(expected))
    slider.value = 2  # strength 0.9: the failed cell (guidance 7.5, no negative prompt) is a placeholder
    assert ex.visible_keys()[2] == row_of(fake, strength=0.9, guidance_scale=7.5, negative_prompt="")["key"]
    assert ex.cells[2].children[1].tooltip == "error"
    # a text column is a dropdown
    ex2 = explore(fake)
    assert type(ex2.fixed["negative_prompt"]).__name__ == "Dropdown"
    ex2.fixed["negative_prompt"].value = 1
    expected = fake.image(row_of(fake, strength=0.3, guidance_scale=1.0, negative_prompt=ugly))
    np.testing.assert_array_equal(cell_pixels(ex2, 0, 0), np.asarray(expected))


def test_selecting_a_cell_shows_image_parameters_and_code(fake):
    ex = explore(fake)
    target = ex.cells[4]  # guidance 7.5, strength 0.6
    target.children[1].click()
    row = row_of(fake, strength=0.6, guidance_scale=7.5, negative_prompt="")
    assert ex.selected == row["key"] and target.children[1].description == "selected"
    np.testing.assert_array_equal(pixels(ex.detail_image.value), np.asarray(fake.image(row)))
    np.testing.assert_array_equal(pixels(ex.init_image.value), np.asarray(fake.init_image(row)))
    visible = param_pairs(ex.params.value.split("<details>")[0])
    assert ("strength", "0.6") in visible and ("guidance_scale", "7.5") in visible
    assert "strength=0.6," in ex.code.value and "manual_seed(0)" in ex.code.value
    assert ex.ranked.value == row["key"]
    # the failed cell shows its error
    ex.select(row_of(fake, strength=0.9, guidance_scale=7.5, negative_prompt="")["key"])
    assert "fake failure for tests" in ex.params.value


def test_prompt_text_is_always_escaped(tmp_path):
    result = make_fake_sweep(tmp_path / "s", prompt=XSS, negative_prompt=["", "<b>bold</b> & 'q'"], error_cell=None)
    ex = explore(result, x="negative_prompt")
    html_texts = [h.value for h in ex._headers] + [ex.params.value, ex.message.value, ex.metrics.value]
    joined = "\n".join(html_texts)
    assert "<script" not in joined and "<img" not in joined and "<b>bold" not in joined
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in ex.params.value
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#x27;q&#x27;" in joined  # the header's tooltip attribute too
    # text widgets hold the text itself (they never parse HTML)
    assert repr(XSS) in ex.code.value
    ex.query.value = "prompt == '<nope>' and"
    assert "&lt;nope&gt;" in ex.message.value and "<nope>" not in ex.message.value


def test_sort_and_filter_by_any_column_a_metric_too(fake):
    df = fake.df.assign(ssim=np.linspace(0.9, 0.1, len(fake.df)))
    result = replace(fake, df=df)
    ex = explore(result)
    assert ex.sort_by.value == "ssim" and "ssim" in ex.metrics.value
    keys = [k for _, k in ex.ranked.options]
    assert keys == list(df.sort_values("ssim")["key"])
    ex.ascending.value = False
    assert [k for _, k in ex.ranked.options] == list(df.sort_values("ssim", ascending=False)["key"])
    ex.sort_by.value = "strength"
    assert df.set_index("key").loc[ex.ranked.options[0][1], "strength"] == 0.9

    ex.query.value = "strength < 0.5 and status == 'ok'"
    assert len(ex.ranked.options) == 4 and "4 of 12" in ex.message.value
    filtered = ex._placeholder("filtered")
    assert ex.cells[0].children[0].value != filtered  # strength 0.3 shown
    assert ex.cells[1].children[0].value == filtered  # strength 0.6 greyed
    ex.ranked.value = ex.ranked.options[-1][1]  # choosing in the ranking selects the cell
    assert ex.selected == ex.ranked.options[-1][1]

    ex.query.value = "strength <<< 1"  # an error is a message, and the last good state stays
    assert "failed: SyntaxError" in ex.message.value and len(ex.ranked.options) == 4


def test_validation(fake):
    with pytest.raises(ValidationError, match="`x` must be a swept column"):
        explore(fake, x="seed")
    with pytest.raises(ValidationError, match="`thumb`"):
        explore(fake, thumb=0)
    one = make_fake_sweep(fake.out_dir.parent / "one", strength=[0.3, 0.6], guidance_scale=[7.5],
                          negative_prompt=[""], error_cell=None)
    ex = explore(one)
    assert (ex.x, ex.y, len(ex.visible_keys())) == ("strength", None, 2)


@pytest.mark.equality
def test_snippet_reproduces_a_tiny_sd15_image_exactly(tmp_path):
    import img2img_lab as lab

    spec = lab.SweepSpec(model="tiny/sd15", prompt="a cat", image="astronaut", strength=[0.5, 0.8],
                         guidance_scale=5.0, num_inference_steps=3, scheduler="euler",
                         params={"height": 64, "width": 64})
    # one call per cell: the snippet gives the very same pixels (same process, same threads)
    result = lab.run_sweep(spec, tmp_path / "sweep", progress=False, batched=False)
    code = code_snippet(result, 1)
    assert "lab.load_image('astronaut', size=(64, 64))" in code  # sd15 has no height/width: resized
    assert "scheduler='euler'" in code and "strength=0.8," in code
    assert "compel" not in code  # a spec setting, not an argument of the pipeline call
    namespace = {}
    exec(code, namespace)
    snippet = np.asarray(namespace["image"])
    np.testing.assert_array_equal(snippet, np.asarray(result.image(1)))
    ex = explore(result)
    assert ex.code.value == code_snippet(result, ex.selected)
    assert code.startswith("# This cell ran as one call with ")
    # batched cells: within the stated float rounding (BATCHED_TOLERANCE), whatever the CPU's kernels,
    # and their snippet says so; the code itself is the same
    batched = lab.run_sweep(spec, tmp_path / "batched", progress=False)
    batched_code = code_snippet(batched, 1)
    assert batched_code.startswith("# This cell ran in a batch of 2")
    assert _code_lines(batched_code) == _code_lines(code)
    assert np.abs(np.asarray(batched.image(1)).astype(int) - snippet).max() <= BATCHED_TOLERANCE


@pytest.mark.equality
def test_snippets_of_a_mixed_sweep_pass_each_model_its_own_arguments(tmp_path):
    """A twin's own options (Kontext's max_area) are in its snippet; an argument a model does not
    take (not_applied) and the row's bookkeeping are not; each snippet gives its image bit for bit."""
    import img2img_lab as lab

    spec = lab.SweepSpec(model=["tiny/sd15", "tiny/flux-kontext"], prompt="a cat", image="astronaut",
                         strength=0.6, num_inference_steps=2)
    result = lab.run_sweep(spec, tmp_path / "mixed", progress=False, batched=False)
    for i in range(len(result)):
        row, code = result.row(i), code_snippet(result, i)
        assert "pipeline_defaults" not in code and "not_applied" not in code
        if row["model"] == "tiny/flux-kontext":
            assert row["not_applied"] == "strength" and "strength=" not in code
            assert "max_area=4096," in code and "_auto_resize=False," in code
        else:
            assert "strength=0.6," in code and "max_area" not in code
        namespace = {}
        exec(code, namespace)
        np.testing.assert_array_equal(np.asarray(namespace["image"]), np.asarray(result.image(i)))


def _code_lines(code: str) -> list[str]:
    return [line for line in code.splitlines() if not line.startswith("#")]


def test_snippet_control_image_and_compel(fake):
    import img2img_lab as lab

    result = replace(fake, df=fake.df.assign(control_image="depth.png"),
                     spec=lab.SweepSpec(model="tiny/sd15", prompt="a (cat)1.5", image="astronaut", compel=True))
    code = code_snippet(result, 0)
    assert "control_image=lab.prepare_control_image('depth.png', init.size)," in code
    assert f"**lab.encode_weighted(pipe, {fake.df['prompt'][0]!r}, '')," in code
    assert "    prompt=" not in code and "negative_prompt=" not in code
    compile(code, "<snippet>", "exec")


def test_axis_swaps_and_one_row(fake):
    ex = explore(fake)
    ex.y_axis.value = "(none)"
    assert ex.y is None and len(ex.visible_keys()) == 3 and len(ex.fixed_box.children) == 2
    ex.y_axis.value = "strength"  # was x, while y had no column: x takes another one
    assert ex.y == "strength" and ex.x not in (None, "strength")
    ex.x_axis.value = "strength"  # back: y takes x's old column
    assert ex.x == "strength" and ex.y not in (None, "strength")


@pytest.mark.equality
def test_snippet_loads_the_offline_stand_in_not_the_unreachable_url(tmp_path, capsys, recwarn):
    import socket

    import img2img_lab as lab

    with socket.socket() as s:  # a port nobody listens on: the URL is unreachable (HF_HUB_OFFLINE too)
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.png"
    spec = lab.SweepSpec(model="tiny/sd15", prompt="a cat", image=url, strength=[0.5, 0.8],
                         guidance_scale=5.0, num_inference_steps=3, params={"height": 64, "width": 64})
    result = lab.run_sweep(spec, tmp_path / "sweep", progress=False, batched=False)
    printed = capsys.readouterr().out
    assert printed.count("could not be fetched") == 1  # one line per sweep and source, not per cell
    assert f"`image` {url!r} could not be fetched (offline?): the random-weight tiny/sd15 runs on" in printed
    assert not [w for w in recwarn if "could not be fetched" in str(w.message)]  # a notice, not a warning
    # the row names what was loaded; the URL asked for is kept beside it (bookkeeping, not a parameter)
    assert list(result.df["image"]) == ["astronaut", "astronaut"]
    assert list(result.df["image_requested"]) == [url, url]
    assert "image_requested" not in result.swept and "image_requested" not in result.parameters
    code = code_snippet(result, 0)
    assert url not in code and "lab.load_image('astronaut', size=(64, 64))" in code
    namespace = {}
    exec(code, namespace)
    np.testing.assert_array_equal(np.asarray(namespace["image"]), np.asarray(result.image(0)))
    # a reachable source is recorded as given, with no `image_requested` column
    plain = lab.run_sweep(spec.replace(image="astronaut"), tmp_path / "plain", progress=False, batched=False)
    assert "image_requested" not in plain.df.columns and list(plain.df["key"]) == list(result.df["key"])


def test_selection_follows_its_image_through_sort_filter_and_axes(fake):
    ex = explore(fake)
    key = row_of(fake, strength=0.6, guidance_scale=7.5, negative_prompt="")["key"]
    ex.cells[4].children[1].click()  # guidance 7.5, strength 0.6
    expected = np.asarray(fake.image(key))

    def still_on_key(in_list=True):
        assert ex.selected == key
        np.testing.assert_array_equal(pixels(ex.detail_image.value), expected)
        assert ex.code.value == code_snippet(fake, key)
        if in_list:
            assert ex.ranked.value == key and ex.ranked.options[ex.ranked.index][1] == key

    # 1. re-sorting replaces the options (which resets the Select's index to 0): the key stays
    for control, value in ((ex.sort_by, "guidance_scale"), (ex.ascending, False), (ex.sort_by, "strength"),
                           (ex.ascending, True)):
        control.value = value
        still_on_key()
    # the frontend sends index changes as comm state: an echo or a cleared list moves nothing
    ex.ranked.set_state({"index": ex.ranked.index})
    still_on_key()
    ex.ranked.set_state({"index": None})
    still_on_key()

    # 2. a filter that hides it says so, and it comes back when the filter is cleared
    ex.query.value = "strength != 0.6"
    still_on_key(in_list=False)
    assert ex.ranked.value is None and key not in [k for _, k in ex.ranked.options]
    assert re.search(r"the selected image \([^)]*strength=0\.6[^)]*guidance_scale=7\.5[^)]*\) is hidden by the filter",
                     ex.message.value)
    ex.query.value = ""
    still_on_key()
    assert "hidden" not in ex.message.value

    # 3. axis changes: a column leaving the axes is fixed at the selected image's value
    ex.x_axis.value = "negative_prompt"
    still_on_key()
    assert ex.fixed["strength"].value == 1 and key in ex.visible_keys()
    assert ex.cells[ex.visible_keys().index(key)].children[1].description == "selected"
    ex.fixed["strength"].value = 0  # the user moves the slider away: the selection stays, and says where it is
    still_on_key()
    assert key not in ex.visible_keys() and "is not in this grid; it has strength=0.6" in ex.message.value
    ex.fixed["strength"].value = 1
    assert key in ex.visible_keys() and "not in this grid" not in ex.message.value
    ex.y_axis.value = "strength"
    still_on_key()
    assert ex.fixed["guidance_scale"].value == 1 and key in ex.visible_keys()

    # 4. choosing another image in the list (as the frontend does, by index) selects it
    other = ex.ranked.options[0][1]
    ex.ranked.set_state({"index": 0})
    assert ex.selected == other != key
    ex.ranked.value = key
    still_on_key()


def test_layout_sizes_are_set_whatever_the_image_size(tmp_path):
    from img2img_lab import widgets as w

    for size in (64, 512):
        result = make_fake_sweep(tmp_path / f"s{size}", strength=[0.4, 0.6, 0.8], guidance_scale=[1.0, 5.0, 9.0],
                                 negative_prompt=[""], size=size, error_cell=None)
        ex = explore(result)
        assert ex.layout.max_width == w.MAX_WIDTH == "1100px"
        assert ex.details.layout.min_width == w.DETAIL_MIN_WIDTH and ex.details.layout.flex == "1 1 0%"
        # thumbnails: at most `thumb` px on screen, scaled into their box, never their natural size
        assert len(ex.visible_keys()) == 9
        for cell in ex.cells[:9]:
            image, button = cell.children
            assert (image.layout.width, image.layout.max_width, image.layout.max_height) == ("100%", "128px", "128px")
            assert image.layout.object_fit == "contain" and image.width == "" and image.height == ""
            assert max(Image.open(io.BytesIO(image.value)).size) <= 128
            assert button.layout.height == "24px"
        assert ex.grid.layout.grid_template_columns == "10em repeat(3, minmax(0, 128px))"
        for image in (ex.detail_image, ex.init_image):
            assert (image.layout.width, image.layout.max_height, image.layout.object_fit) == ("240px", "240px", "contain")
            assert max(Image.open(io.BytesIO(image.value)).size) <= 512
        # grid, ranked list and code share one Tab, so none of them adds height
        assert ex.tabs.titles == ("grid", "ranked list", "code")
        assert ex.tabs.children[0] is ex.grid and ex.ranked in ex.tabs.children[1].children
        assert ex.code in ex.tabs.children[2].children and ex.code.layout.height == "26em"
        assert ex.tabs.layout.width == f"max(24em, calc(10em + {3 * 132 + 34}px))"


def test_grid_corner_names_the_axes(fake):
    import html

    def corner(ex):
        return html.unescape(re.sub("<[^>]+>", "", ex._headers[0].value))

    ex = explore(fake)
    assert corner(ex) == "strength\xa0→guidance_scale\xa0↓"  # two lines: across, then down
    assert "_<wbr>" in ex._headers[0].value  # long names wrap after an underscore, not mid-word
    ex.y_axis.value = "(none)"
    assert corner(ex) == "strength\xa0→"
    ex.x_axis.value = "negative_prompt"
    assert corner(ex) == "negative_prompt\xa0→" and "\\" not in ex._headers[0].value


def test_parameters_one_a_line_constants_folded_long_values_unbroken(tmp_path):
    url = "https://example.com/" + "/".join(["segment"] * 10) + "/image.png"
    word = "x" * 60
    result = make_fake_sweep(tmp_path / "s", prompt=f"{url} a cat", negative_prompt=["", word], error_cell=None)
    ex = explore(result)
    ex.select(row_of(result, strength=0.3, guidance_scale=1.0, negative_prompt=word)["key"])
    visible, *folded = ex.params.value.split("<details>")
    names = [k for k, _ in param_pairs(visible)]
    assert names == ["model", "prompt", "negative_prompt", "strength", "guidance_scale", "effective_steps"]
    # constant parameters behind a count; bookkeeping under "run details"
    assert folded[0].startswith("<summary style='cursor:pointer'>4 constant parameters</summary>")
    assert [k for k, _ in param_pairs(folded[0])] == ["image", "num_inference_steps", "seed", "scheduler"]
    assert "run details" in folded[1] and ("key", ex.selected) in param_pairs(folded[1])
    # no mid-word breaking: a URL may wrap after "/", a long word is shortened with the full text in a title
    assert "break-all" not in ex.params.value and "break-word" not in ex.params.value
    assert "example.com/<wbr>segment/<wbr>segment" in visible
    assert f"<span title='{word}'>{word[:39]}…</span>" in visible


def test_columns_that_go_with_an_axis_get_no_control_and_no_empty_row(tmp_path):
    """A model comparison: each model runs at its own strength. The default explorer is one row
    of three cells (not a mostly empty 3x3 diagonal), and nothing fixes the co-varying columns."""
    from dataclasses import replace

    base = make_fake_sweep(tmp_path / "cmp", strength=(0.3, 0.5, 0.8), guidance_scale=(7.5,), negative_prompt=(None,),
                           error_cell=None)
    df = base.df.copy()
    df["model"] = df["strength"].map({0.3: "kandinsky", 0.5: "refiner", 0.8: "sd15"})
    df["prior_num_inference_steps"] = df["strength"].map({0.3: 25.0, 0.5: float("nan"), 0.8: float("nan")})
    result = replace(base, df=df)
    explorer = explore(result)
    assert explorer.y is None and explorer.fixed_values() == {}
    assert "<td>(none)</td>" in explorer.params.value.replace(" ", "") or "(none)" in explorer.params.value
    assert ">None<" not in explorer.params.value  # a missing negative prompt reads (none), as in the grid
    assert len(explorer.fixed_box.children) == 0
    assert None not in explorer.visible_keys() and len(explorer.visible_keys()) == 3
    explorer.x_axis.value = "model"
    assert explorer.fixed_values() == {} and sorted(explorer.visible_keys()) == sorted(df["key"])
    # a column that does vary within a cell still gets its control
    plain = make_fake_sweep(tmp_path / "grid", error_cell=None)
    grid = explore(plain)
    assert (grid.x, grid.y) == ("strength", "guidance_scale") and list(grid.fixed_values()) == ["negative_prompt"]


def test_sort_offers_the_swept_columns_metrics_and_run_facts_only(fake):
    options = list(explore(fake).sort_by.options)
    assert options[: len(fake.swept)] == list(fake.swept)
    assert {"seconds", "status"} <= set(options)
    assert not {"key", "image_path", "init_image_path", "image_hash", "created", "error"} & set(options)
