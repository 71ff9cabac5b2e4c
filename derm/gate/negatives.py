"""Images the models were not made for, made here: the domain gate's counter-examples.

Nothing is downloaded. Blank frames and screen-like pages (text, tables, buttons, charts, image
grids) are drawn with numpy, OpenCV and Pillow from a seed; everyday photos are the few that ship
inside installed packages (Matplotlib's and scikit-learn's sample images), cut into crops.
scikit-image's sample images are deliberately *not* used here: they are one of the sets the gate
is measured on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

Rng = np.random.Generator
WORDS = ("model", "lesion", "accuracy", "results", "settings", "upload", "training", "the", "of", "data",
         "Home", "Search", "Sign in", "Download", "Share", "Profile", "report", "page", "2026", "value",
         "figure", "table", "Submit", "Cancel", "menu", "news", "price", "cart", "help", "about")


def _size(rng: Rng) -> tuple[int, int]:
    """(height, width) of a screen or photo: landscape, square or portrait, 200 to 1200 pixels wide."""
    width = int(rng.integers(200, 1200))
    aspect = float(rng.choice([0.5625, 0.75, 1.0, 1.33, 1.6, 1.78]))  # width / height
    return max(120, int(width / aspect)), width


def _colour(rng: Rng, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, 3))


# ----------------------------------------------------------------------------- blank and synthetic


def blank_image(rng: Rng) -> np.ndarray:
    """A flat colour, black, white, a gradient, noise, stripes, a checkerboard or shapes on a flat field."""
    height, width = _size(rng)
    kind = int(rng.integers(8))
    if kind == 0:
        return np.full((height, width, 3), _colour(rng), np.uint8)
    if kind == 1:
        return np.full((height, width, 3), int(rng.choice([0, 255, int(rng.integers(0, 30)), int(rng.integers(225, 256))])), np.uint8)
    if kind == 2:
        t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
        a, b = np.array(_colour(rng)), np.array(_colour(rng))
        return np.broadcast_to(a * (1 - t) + b * t, (height, width, 3)).astype(np.uint8).copy()
    if kind == 3:
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == 4:
        noise = rng.normal(128, float(rng.uniform(10, 80)), (height, width, 1 if rng.random() < 0.5 else 3))
        return np.broadcast_to(np.clip(noise, 0, 255), (height, width, 3)).astype(np.uint8).copy()
    if kind == 5:
        cell = int(rng.integers(4, 60))
        yy, xx = np.mgrid[:height, :width]
        pattern = ((yy // cell + xx // cell) % 2) if rng.random() < 0.5 else ((xx // cell) % 2)
        a, b = np.array(_colour(rng)), np.array(_colour(rng))
        return np.where(pattern[..., None] == 1, a, b).astype(np.uint8)
    if kind == 6:
        small = rng.integers(0, 256, (int(rng.integers(2, 12)), int(rng.integers(2, 12)), 3)).astype(np.uint8)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    image = np.full((height, width, 3), _colour(rng), np.uint8)
    for _ in range(int(rng.integers(1, 8))):
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(5, max(6, min(height, width) // 2))), _colour(rng), -1)
        else:
            cv2.rectangle(image, centre, (int(rng.integers(width)), int(rng.integers(height))), _colour(rng), -1)
    return image


# ----------------------------------------------------------------------------- screens and drawings


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_block(draw: ImageDraw.ImageDraw, rng: Rng, box: tuple[int, int, int, int], ink: tuple) -> None:
    x0, y0, x1, y1 = box
    size = int(rng.integers(10, 28))
    font = _font(size)
    y = y0
    while y + size < y1:
        line = " ".join(rng.choice(WORDS, int(rng.integers(2, 12))))
        draw.text((x0, y), line, fill=ink, font=font)
        y += int(size * rng.uniform(1.2, 1.8))


def _chart(rng: Rng, height: int, width: int) -> np.ndarray:
    """A line, bar or scatter chart drawn with OpenCV: what a report or dashboard shows."""
    chart = np.full((height, width, 3), 255, np.uint8)
    cv2.line(chart, (20, height - 20), (width - 10, height - 20), (60, 60, 60), 1)
    cv2.line(chart, (20, 10), (20, height - 20), (60, 60, 60), 1)
    n = int(rng.integers(5, 30))
    xs = np.linspace(25, width - 15, n).astype(int)
    ys = (height - 25 - rng.random(n).cumsum() / n * (height - 40) * rng.uniform(0.3, 1)).astype(int)
    colour = _colour(rng, 0, 200)
    kind = int(rng.integers(3))
    for i in range(n):
        if kind == 0 and i:
            cv2.line(chart, (xs[i - 1], ys[i - 1]), (xs[i], ys[i]), colour, 2, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(chart, (xs[i] - 3, ys[i]), (xs[i] + 3, height - 21), colour, -1)
        else:
            cv2.circle(chart, (xs[i], int(rng.integers(15, height - 25))), 3, colour, -1, cv2.LINE_AA)
    return chart


def screen_image(rng: Rng, thumbnails: list[np.ndarray] | None = None) -> np.ndarray:
    """A screenshot-like page: a bar, a sidebar, text, buttons, a table, a chart, maybe an image grid
    (thumbnails, e.g. dermatoscopic ones, as the app's own explorer page shows them)."""
    height, width = _size(rng)
    dark = rng.random() < 0.25
    background = _colour(rng, 10, 50) if dark else _colour(rng, 225, 256)
    ink = _colour(rng, 200, 256) if dark else _colour(rng, 0, 70)
    page = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(page)
    y = 0
    if rng.random() < 0.7:  # a top bar
        bar = int(rng.integers(24, 70))
        draw.rectangle((0, 0, width, bar), fill=_colour(rng))
        y = bar + 8
    x = 8
    if rng.random() < 0.5:  # a sidebar
        side = int(width * rng.uniform(0.15, 0.3))
        draw.rectangle((0, y, side, height), fill=_colour(rng, 200, 250) if not dark else _colour(rng, 30, 70))
        _text_block(draw, rng, (8, y + 8, side - 8, height), ink)
        x = side + 12
    regions = int(rng.integers(1, 5))
    for _ in range(regions):
        if y >= height - 30:
            break
        block = int(rng.integers(40, max(41, height // 2)))
        choice = rng.random()
        if choice < 0.35:
            _text_block(draw, rng, (x, y, width - 8, min(height, y + block)), ink)
        elif choice < 0.55:  # buttons
            bx = x
            for _ in range(int(rng.integers(1, 5))):
                bw = int(rng.integers(60, 160))
                draw.rounded_rectangle((bx, y, bx + bw, y + 32), radius=6, fill=_colour(rng))
                draw.text((bx + 10, y + 8), str(rng.choice(WORDS)), fill=(255, 255, 255), font=_font(14))
                bx += bw + 10
            block = 40
        elif choice < 0.75:  # a table
            rows, cols = int(rng.integers(3, 12)), int(rng.integers(2, 7))
            cell_h, cell_w = 24, max(30, (width - x - 8) // cols)
            for r in range(rows):
                for c in range(cols):
                    box = (x + c * cell_w, y + r * cell_h, x + (c + 1) * cell_w, y + (r + 1) * cell_h)
                    draw.rectangle(box, outline=ink, fill=background if r else _colour(rng, 180, 240))
                    draw.text((box[0] + 4, box[1] + 5), f"{rng.random():.2f}", fill=ink, font=_font(12))
            block = rows * cell_h
        elif choice < 0.9 or not thumbnails:  # a chart
            cw, ch = max(60, min(width - x - 8, int(rng.integers(150, 600)))), max(60, block)
            page.paste(Image.fromarray(_chart(rng, ch, cw)), (x, y))
            block = ch
        else:  # an image grid
            tw = int(rng.integers(60, 180))
            th = int(tw * 0.75)
            for i in range(int(rng.integers(2, 9))):
                thumb = thumbnails[int(rng.integers(len(thumbnails)))]
                px, py = x + (i % 4) * (tw + 8), y + (i // 4) * (th + 8)
                page.paste(Image.fromarray(cv2.resize(thumb, (tw, th), interpolation=cv2.INTER_AREA)), (px, py))
            block = 2 * (th + 8)
        y += block + int(rng.integers(8, 30))
    return np.asarray(page)


# ----------------------------------------------------------------------------- everyday photos


def packaged_photos() -> list[np.ndarray]:
    """The photos that ship inside installed packages (none are downloaded): Matplotlib's sample
    data and scikit-learn's two sample images. Empty when those packages are absent."""
    photos: list[np.ndarray] = []
    try:
        from sklearn.datasets import load_sample_images

        photos += [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]
    except Exception:  # noqa: BLE001 - an optional source
        pass
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
            bgr = cv2.imread(str(sample / name), cv2.IMREAD_COLOR)
            if bgr is not None:
                photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    except Exception:  # noqa: BLE001
        pass
    return photos


def photo_crop(rng: Rng, photos: list[np.ndarray]) -> np.ndarray:
    """A random crop (20-100% of a side), flip and brightness change of one packaged photo."""
    photo = photos[int(rng.integers(len(photos)))]
    height, width = photo.shape[:2]
    scale = rng.uniform(0.2, 1.0)
    ch, cw = max(32, int(height * scale)), max(32, int(width * scale * rng.uniform(0.8, 1.25)))
    ch, cw = min(ch, height), min(cw, width)
    y0, x0 = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.7, 1.3, 3)
    return np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def generate(kind: str, count: int, seed: int, thumbnails: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """`count` images of one kind ('blank', 'screen' or 'photo') from one seed, the same each time."""
    rng = np.random.default_rng(seed)
    makers: dict[str, Callable[[], np.ndarray]] = {
        "blank": lambda: blank_image(rng),
        "screen": lambda: screen_image(rng, thumbnails),
    }
    if kind == "photo":
        photos = packaged_photos()
        if not photos:
            return []
        return [photo_crop(rng, photos) for _ in range(count)]
    return [makers[kind]() for _ in range(count)]
