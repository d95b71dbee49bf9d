"""Draw digit images the way users make them: photos and scans of dark ink on paper, anywhere in a large frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw_six(size: tuple[int, int] = (300, 200), box: tuple[int, int, int, int] = (200, 20, 270, 180),
             paper: int = 0, ink: int = 255, stroke: int = 10) -> Image.Image:
    """A "6" (a loop and a slanted stem) in `box` (left, top, right, bottom) on a canvas of `size` (width, height).

    The default is tall and thin, off-centre in a wide frame: cropping, aspect ratio and centring all show.
    It is lopsided on purpose: a symmetric shape puts its centre of mass on a rounding tie (x.5 pixels)."""
    image = Image.new("L", size, paper)
    left, top, right, bottom = box
    loop_top = top + (bottom - top) * 2 // 5
    draw = ImageDraw.Draw(image)
    draw.ellipse((left, loop_top, right, bottom), outline=ink, width=stroke)
    draw.line((left + stroke // 2, (loop_top + bottom) // 2, right - stroke, top), fill=ink, width=stroke)
    return image


def user_photo(digit: np.ndarray, dark_on_light: bool = True, canvas: tuple[int, int] = (200, 150),
               scale: int = 4, at: tuple[int, int] = (20, 10), paper: int = 235, ink: int = 25) -> Image.Image:
    """A 28×28 uint8 MNIST digit (light on black) enlarged `scale` times and put at `at` (left, top)
    on a `canvas` (width, height) of paper, as an RGB image with a bluish tint."""
    big = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    strength = np.asarray(big, dtype=np.float32) / 255.0
    background, foreground = (paper, ink) if dark_on_light else (255 - paper, 255 - ink)
    sheet = np.full((canvas[1], canvas[0]), background, dtype=np.float32)
    left, top = at
    region = sheet[top : top + strength.shape[0], left : left + strength.shape[1]]
    region[:] = background + (foreground - background) * strength[: region.shape[0], : region.shape[1]]
    gray = np.clip(sheet, 0, 255).astype(np.uint8)
    # Ink is never perfectly grey: tint it so RGB -> L conversion is exercised.
    return Image.merge("RGB", (Image.fromarray(gray), Image.fromarray(gray), Image.fromarray(np.maximum(gray, 60))))


def transparent_sticker(digit: np.ndarray, canvas: tuple[int, int] = (160, 160), scale: int = 3,
                        at: tuple[int, int] = (70, 50)) -> Image.Image:
    """Black ink whose alpha is the digit: what drawing apps export as a PNG with a transparent background."""
    big = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    alpha = Image.new("L", canvas, 0)
    alpha.paste(big, at)
    # Every pixel is black in RGB, as many apps store it: ignoring alpha would leave a blank image.
    black = Image.new("L", canvas, 0)
    return Image.merge("RGBA", (black, black, black, alpha))


def save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path
