"""PNG/JPEG loading: every Pillow mode becomes correct 8-bit RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError, ImageTooLargeError, NotAnImageError
from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_bytes


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_png_is_exact():
    rgb = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    loaded = load_image_bytes(encode(Image.fromarray(rgb)), "x.png")
    assert loaded.kind == "png"
    assert np.array_equal(loaded.pixels, rgb)


def test_exif_orientation_is_applied():
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, :10] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image_bytes(encode(image, "JPEG", exif=exif, quality=100), "rot.jpg")
    assert loaded.pixels.shape == (20, 10, 3)
    assert loaded.pixels[2, 5, 0] > 200 and loaded.pixels[-3, 5, 0] < 50  # white half now on top


def test_16bit_grey_is_windowed_not_clipped():
    values = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data in 16 bits
    loaded = load_image_bytes(encode(Image.fromarray(values)), "xray16.png")
    grey = loaded.pixels[:, :, 0]
    assert grey.min() == 0 and grey.max() == 255
    assert 100 < grey[32, 32] < 155


def test_palette_goes_through_its_palette():
    image = Image.new("P", (4, 4))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    pixels = load_image_bytes(encode(image), "pal.png").pixels
    assert tuple(pixels[1, 1]) == (255, 0, 0) and tuple(pixels[0, 0]) == (0, 0, 0)


def test_rgba_composited_over_black():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)
    rgba[1, 1] = (200, 100, 50, 0)  # fully transparent
    pixels = load_image_bytes(encode(Image.fromarray(rgba, "RGBA")), "a.png").pixels
    assert tuple(pixels[0, 0]) == (200, 100, 50) and tuple(pixels[1, 1]) == (0, 0, 0)


def test_cmyk_jpeg_to_rgb():
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    pixels = load_image_bytes(encode(image, "JPEG", quality=100), "cmyk.jpg").pixels
    r, g, b = (int(v) for v in pixels[4, 4])
    assert r > 200 and g < 60 and b < 60


def test_grey_l_replicated():
    pixels = load_image_bytes(encode(Image.new("L", (3, 3), 77)), "l.png").pixels
    assert pixels.shape == (3, 3, 3) and (pixels == 77).all()


def test_not_an_image():
    with pytest.raises(NotAnImageError, match="notes.txt"):
        load_image_bytes(b"just some text that is long enough" * 10, "notes.txt")


def test_empty_and_corrupt():
    with pytest.raises(ImageError, match="empty"):
        load_image_bytes(b"", "zero.png")
    data = encode(Image.new("RGB", (64, 64), (10, 20, 30)))
    with pytest.raises(ImageError, match="cut.png"):
        load_image_bytes(data[: len(data) // 2], "cut.png")


def test_pixel_limit():
    with pytest.raises(ImageTooLargeError, match="big.png"):
        load_image_bytes(encode(Image.new("L", (100, 100))), "big.png", RenderOptions(max_pixels=5000))
