import io

import numpy as np
import pytest
from PIL import Image

from derm.imageio import ImageError, load_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo(original_image):
    return Image.open(original_image).convert("RGB")


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_modes_become_rgb(photo, mode):
    converted = photo.convert("L").convert(mode) if mode == "I;16" else photo.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    rgb = load_image(encode(converted, fmt))
    assert rgb.dtype == np.uint8 and rgb.shape == (450, 600, 3)


def test_sixteen_bit_keeps_its_range(photo):
    wide = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    rgb = load_image(encode(wide, "PNG"))
    assert abs(int(rgb.mean()) - int(np.asarray(photo.convert("L")).mean())) <= 2


def test_exif_rotation_is_applied(photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb = load_image(encode(photo, "JPEG", exif=exif))
    assert rgb.shape == (600, 450, 3)


def test_large_photo_is_downscaled(photo):
    big = photo.resize((6000, 4000))
    rgb = load_image(encode(big, "JPEG", quality=70))
    assert max(rgb.shape[:2]) <= 1600


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"), (b"%PDF-1.4 not an image", "not an image"),
])
def test_bad_bytes_get_a_message(payload, message):
    with pytest.raises(ImageError, match=message):
        load_image(payload, name="upload")


def test_truncated_jpeg(photo):
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(encode(photo, "JPEG")[:3000])


def test_decompression_bomb_is_refused():
    header = Image.new("1", (20000, 20000))
    with pytest.raises(ImageError, match="too large|too many pixels"):
        load_image(encode(header, "PNG"))


def test_tiny_image_still_decodes_but_too_tiny_is_refused():
    assert load_image(encode(Image.new("RGB", (16, 16), (120, 80, 60)), "PNG")).shape == (16, 16, 3)
    with pytest.raises(ImageError, match="too small"):
        load_image(encode(Image.new("RGB", (4, 4)), "PNG"))
