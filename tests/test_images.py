import io

import numpy as np
import pytest
from PIL import Image

from udp_datasets.images import ImageError, decode_png_pixels, encode_png, load_image


def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_grey_and_alpha_policies(photos32):
    rgb = photos32[0]
    d = load_image(_bytes(Image.fromarray(rgb)))
    assert d.mode == "RGB" and np.array_equal(d.pixels, rgb) and d.source_sha256 is not None

    grey = load_image(Image.fromarray(rgb).convert("L"))
    assert grey.mode == "L" and grey.pixels.shape[2] == 1

    rgba = np.dstack([rgb, np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)])
    d = load_image(_bytes(Image.fromarray(rgba, "RGBA")))
    assert d.mode == "RGBA" and np.array_equal(d.alpha, rgba[:, :, 3])
    out = decode_png_pixels(encode_png(d.pixels, d.alpha))
    assert np.array_equal(out, rgba)  # alpha survives byte-identical

    la = load_image(Image.fromarray(rgb).convert("LA"))
    assert la.mode == "LA"


def test_palette_cmyk_and_bilevel_are_converted(photos32):
    img = Image.fromarray(photos32[1])
    assert load_image(img.convert("P")).mode == "RGB"
    assert load_image(_bytes(img.convert("CMYK"), "JPEG")).mode == "RGB"
    assert load_image(img.convert("1")).mode == "L"
    p = img.convert("P")
    p.info["transparency"] = 0
    assert load_image(p).mode == "RGBA"


def test_16_bit_and_animated_are_refused():
    img16 = Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16))
    with pytest.raises(ImageError, match="16-bit"):
        load_image(_bytes(img16))
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="animated"):
        load_image(buf.getvalue())


@pytest.mark.parametrize("payload,match", [
    (b"", "0-byte"),
    (b"this is not an image", "not a readable image"),
    (None, "missing"),
    ({"bytes": None, "path": None}, "neither bytes nor a path"),
    ({"bytes": None, "path": "/nonexistent/x.png"}, "cannot read"),
    (12345, "unsupported image value"),
])
def test_bad_inputs_have_precise_reasons(payload, match):
    with pytest.raises(ImageError, match=match) as info:
        load_image(payload, key="sample-7")
    assert "sample-7" in str(info.value)


def test_truncated_image_is_reported(photos32):
    data = _bytes(Image.fromarray(photos32[2]))
    with pytest.raises(ImageError, match="corrupt|truncated"):
        load_image(data[: len(data) // 2])


def test_pixel_bomb_limit():
    with pytest.raises(ImageError, match="above the limit"):
        load_image(_bytes(Image.new("RGB", (100, 100))), max_pixels=5000)


def test_exif_orientation_is_applied():
    arr = np.zeros((4, 8, 3), dtype=np.uint8)
    arr[:, :4] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 cw on display
    d = load_image(_bytes(img, "PNG", exif=exif.tobytes()))
    assert d.pixels.shape[:2] == (8, 4)


def test_png_encoding_is_deterministic(photos32):
    a = encode_png(photos32[0])
    assert a == encode_png(photos32[0])
    assert Image.open(io.BytesIO(a)).format == "PNG"
