"""SweepResult in a notebook: its short repr, its compact HTML table, and `table()`."""

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from _fake_sweep import make_fake_sweep
from PIL import Image

from img2img_lab.errors import ValidationError
from img2img_lab.metrics import add_metrics
from img2img_lab.result import SweepResult

XSS = "<script>alert('x')</script> & \"q\""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    # strength (3) x guidance_scale (2) x negative_prompt (None, XSS); the (0.9, 7.5, None) cell failed
    result = make_fake_sweep(tmp_path_factory.mktemp("sweep"), negative_prompt=(None, XSS),
                             error_cell={"strength": 0.9, "guidance_scale": 7.5, "negative_prompt": None})
    df = result.df.copy()
    df.loc[df.status == "error", "error"] = "RuntimeError: <bad> & worse"
    return SweepResult(df=df, out_dir=result.out_dir, spec=None, meta=result.meta)


def thumbnails(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data)))
            for data in re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_repr_is_short(sweep):
    text = repr(sweep)
    assert text == (f"SweepResult(12 cells: 11 ok, 1 failed; swept: negative_prompt, strength, guidance_scale; "
                    f"folder: {sweep.out_dir})")
    assert "\n" not in text and len(text) < 120 + len(str(sweep.out_dir))
    many = sweep.df.assign(**{f"knob_{i}": range(len(sweep.df)) for i in range(10)})
    assert "+7 more" in repr(SweepResult(df=many, out_dir=sweep.out_dir))


def test_html_table_has_thumbnails_swept_columns_and_status(sweep):
    page = sweep._repr_html_()
    thumbs = thumbnails(page)
    assert len(thumbs) == 11  # one per image; the failed row is a grey tile naming its status
    assert all(max(t.size) == 64 for t in thumbs)
    first = sweep.image(0)
    first.thumbnail((64, 64))
    np.testing.assert_array_equal(np.asarray(thumbs[0]), np.asarray(first))
    assert "background:#c8c8c8" in page and ">error</div>" in page
    # header: the swept columns first, then the image, then the status
    header = re.findall(r"<th>([^<]*)</th>", page.split("<tbody>")[0])
    assert header == ["", "negative_prompt", "strength", "guidance_scale", "image", "status"]
    assert page.startswith("<p><b>SweepResult</b>: 12 cells, 11 done, 1 failed; folder <code>")
    assert str(sweep.out_dir) in page


def test_html_folds_constant_columns(sweep):
    page = sweep._repr_html_()
    (folded,) = re.findall(r"<details><summary>(\d+) constant columns</summary>(.*?)</details>", page)
    count, items = folded
    names = re.findall(r"<li><code>([^<]+)</code> = ", items)
    assert int(count) == len(names) and {"model", "prompt", "num_inference_steps", "seed", "dtype"} <= set(names)
    assert "<li><code>model</code> = tiny/sd15</li>" in items
    assert not {"strength", "guidance_scale", "negative_prompt", "key"} & set(names)
    # the long prompt is shortened, all of it on hover
    assert "title='Astronaut in a jungle, cold color palette, muted colors, detailed, 8k'" in items


def test_html_escapes_everything_and_shows_missing_as_none(sweep):
    page = sweep._repr_html_()
    assert "<script>" not in page and "<bad>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;" in page
    assert "error: RuntimeError: &lt;bad&gt; &amp; worse" in page
    assert "<td>(none)</td>" in page
    text = re.sub(r"base64,[A-Za-z0-9+/=]+", "", page)  # the images' data may hold any letters
    assert "None" not in text and "NaN" not in text and "nan<" not in text


def test_html_caps_rows(tmp_path):
    result = make_fake_sweep(tmp_path / "s", strength=[round(0.01 * i, 2) for i in range(1, 31)],
                             negative_prompt=[""], error_cell=None, size=16)
    page = result._repr_html_()
    assert len(re.findall(r"<tr>", page.split("<tbody>")[1])) == 50
    assert "... 10 more rows; all of them: <code>.df</code>" in page
    assert len(thumbnails(page)) == 50


def test_html_metrics_columns(tmp_path):
    result = add_metrics(make_fake_sweep(tmp_path / "s", negative_prompt=[""]), ["ssim"], progress=False)
    page = result._repr_html_()
    header = re.findall(r"<th>([^<]*)</th>", page.split("<tbody>")[0])
    assert header == ["", "strength", "guidance_scale", "image", "ssim", "status"]
    assert "NaN" not in re.sub(r"base64,[A-Za-z0-9+/=]+", "", page)  # the failed row's ssim reads (none)


def test_table_columns_and_none(sweep, tmp_path):
    table = sweep.table()
    assert list(table.columns) == ["negative_prompt", "strength", "guidance_scale", "effective_steps", "seconds",
                                   "status"]
    assert table["negative_prompt"].tolist()[:2] == ["(none)", XSS]
    assert table.index.equals(sweep.df.index)
    assert sweep.df["negative_prompt"].isna().sum() == 6  # the result itself is untouched
    assert list(sweep.table(["error", "strength"]).columns) == ["negative_prompt", "strength", "guidance_scale",
                                                                "error"]
    measured = add_metrics(make_fake_sweep(tmp_path / "m", negative_prompt=[""]), ["ssim", "psnr"], progress=False)
    table = measured.table()
    assert list(table.columns) == ["strength", "guidance_scale", "effective_steps", "ssim", "psnr", "seconds", "status"]
    assert table["ssim"].dtype == np.float64 and table["ssim"].isna().sum() == 1  # numbers stay numbers


@pytest.mark.parametrize(
    "columns, message",
    [
        (["ssim"], r"`columns` names 'ssim', which the sweep does not have; columns: \['key'"),
        (["status", 3], r"`columns` names 3"),
        ("status", r"`columns` must be a list of column names or None, got str: 'status'"),
    ],
)
def test_table_bad_columns(sweep, columns, message):
    with pytest.raises(ValidationError, match=message):
        sweep.table(columns)


def test_table_of_string_dtype_columns(sweep):
    df = sweep.df.assign(negative_prompt=sweep.df.negative_prompt.astype(pd.StringDtype()))
    table = SweepResult(df=df, out_dir=sweep.out_dir).table()
    assert table["negative_prompt"].tolist()[:2] == ["(none)", XSS]
