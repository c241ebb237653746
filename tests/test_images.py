"""load_image: every kind of source, odd files, and the content hash."""

import numpy as np
import pytest
from PIL import Image

import img2img_lab as lab
from img2img_lab.errors import ValidationError


def test_offline_samples():
    assert lab.load_image("astronaut").size == (512, 512)
    cat = lab.load_image("cat")
    assert cat.mode == "RGB" and cat.size == (451, 300)


def test_sizes():
    assert lab.load_image("cat", size=256).size == (256, 170)
    assert lab.load_image("cat", size=(958, 960)).size == (958, 960)
    with pytest.raises(ValidationError, match=r"`size` must be"):
        lab.load_image("cat", size="big")


def test_pil_array_and_tensor_sources():
    import torch

    base = lab.load_image("astronaut", size=32)
    arr = np.asarray(base)
    assert lab.image_hash(lab.load_image(arr)) == lab.image_hash(base)
    assert lab.image_hash(lab.load_image(arr.astype(np.float32) / 255)) == lab.image_hash(base)
    chw = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    assert lab.image_hash(lab.load_image(chw)) == lab.image_hash(base)
    assert lab.load_image(Image.fromarray(arr[..., 0])).mode == "RGB"  # grayscale


def test_rgba_warns_and_drops_alpha(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 128))
    path = tmp_path / "a.png"
    rgba.save(path)
    with pytest.warns(UserWarning, match="alpha"):
        im = lab.load_image(str(path))
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (10, 20, 30)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert lab.load_image(str(path)).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: None, r"`image` file does not exist"),
        (lambda p: p.write_bytes(b""), r"`image` file is empty"),
        (lambda p: p.write_text("hello, not an image"), r"is not an image file"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), r"not an image file|could not be read"),
    ],
)
def test_bad_files(tmp_path, make, match):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ValidationError, match=match):
        lab.load_image(str(path))


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    import img2img_lab.images as images

    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 50_000)
    with pytest.raises(ValidationError, match=r"decompression-bomb guard"):
        lab.load_image(str(path))


def test_unknown_sample_and_type():
    with pytest.raises(ValidationError, match=r"`image` file does not exist: 'astronot'"):
        lab.load_image("astronot")
    with pytest.raises(ValidationError, match=r"`image` must be a URL, path, PIL image"):
        lab.load_image(3.5)


def test_hash_depends_on_pixels_only():
    a = lab.load_image("cat", size=64)
    b = a.copy()
    assert lab.image_hash(a) == lab.image_hash(b)
    b.putpixel((0, 0), (0, 0, 0))
    assert lab.image_hash(a) != lab.image_hash(b)


def test_urls_load_through_diffusers_load_image(tmp_path):
    """A real HTTP fetch, served from this machine (no outside network)."""
    import functools
    import http.server
    import threading

    lab.load_image("cat", size=40).save(tmp_path / "cat.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        image = lab.load_image(f"{base}/cat.png")
        assert lab.image_hash(image) == lab.image_hash(lab.load_image(str(tmp_path / "cat.png")))
        with pytest.raises(ValidationError, match=r"`image` URL could not be fetched"):
            lab.load_image(f"{base}/missing.png")
    finally:
        server.shutdown()
