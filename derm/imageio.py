"""Decode any user image into RGB uint8, or fail with one clear sentence (never a stack trace)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # ~8000x6000; a larger pixel count is treated as a decompression bomb
WORKING_MAX_SIDE = 1600  # bigger photos are downscaled on decode: the models see 200 px anyway
MIN_SIDE = 8
SUPPORTED = "JPEG, PNG, BMP, TIFF or WebP"


class ImageError(ValueError):
    """The input is not a usable image; str(error) is the message to show the user."""


def load_image(source: str | Path | bytes | BinaryIO, name: str | None = None) -> np.ndarray:
    """RGB uint8 H x W x 3 from a path, bytes or file object.

    Applies the EXIF orientation, converts greyscale, palette, RGBA (onto white), 16-bit and CMYK
    to 8-bit RGB, and downscales very large photos so the longer side is at most 1600 px.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "the upload")
    raw = _read_bytes(source, label)
    if not raw:
        raise ImageError(f"{label}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"{label}: {image.width}x{image.height} pixels is too large "
                                 f"(at most {MAX_PIXELS // 1_000_000} megapixels)")
            if image.format == "JPEG":
                image.draft("RGB", (WORKING_MAX_SIDE, WORKING_MAX_SIDE))  # decode at reduced scale: fast
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError(f"{label}: not an image this app can read (use {SUPPORTED})") from None
        raise ImageError(f"{label}: the image has too many pixels to be decoded safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: the image is truncated or corrupt ({exc})") from None
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ImageError(f"{label}: {rgb.shape[1]}x{rgb.shape[0]} pixels is too small to analyse")
    return _limit_size(rgb)


def _read_bytes(source: str | Path | bytes | BinaryIO, label: str) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: no such file")
        return path.read_bytes()
    data = source.read()
    return data if isinstance(data, bytes) else bytes(data)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        scaled = (array / (65535.0 if top > 255 else 255.0) * 255).clip(0, 255).astype(np.uint8)
        return np.repeat(scaled[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("RGB"))
    if array.dtype != np.uint8:  # e.g. 48-bit TIFF read as 16-bit per channel
        array = (array / 257).astype(np.uint8)
    return np.ascontiguousarray(array)


def _limit_size(rgb: np.ndarray) -> np.ndarray:
    import cv2

    height, width = rgb.shape[:2]
    scale = WORKING_MAX_SIDE / max(height, width)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
