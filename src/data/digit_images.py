"""Turn a user's digit image (any size, mode or polarity) into a 28×28 input prepared the way MNIST was.

MNIST digits are light ink on a black background, cropped to the ink, scaled to fit a 20×20 box
(keeping the aspect ratio, anti-aliased) and placed in a 28×28 field so that their centre of mass
sits at the centre. A model trained on MNIST expects exactly that, so user images get the same steps,
after what MNIST's clean scans did not need: transparency and polarity resolved, the paper shade removed,
and pen strokes too thin to survive the shrink to 20×20 widened.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from src.errors import UserInputError

FIELD_SIZE = 28
BOX_SIZE = 20
# Measured on MNIST: in pixel-index coordinates the mean centre of mass is (14.0, 14.0).
FIELD_CENTRE = 14.0
# Ink fainter than this (fraction of the full contrast) is noise: paper texture, JPEG ringing.
NOISE_LEVEL = 0.15
# An image whose brightest ink differs from the paper by less than this has no digit on it.
MIN_CONTRAST = 0.1
# Images at least this many pixels high and wide are photos or scans, whose grain is averaged out (see
# light_ink_on_black); smaller ones are digits drawn at about MNIST's size, whose 1-pixel strokes it would fade.
SMOOTHED_SIZE = 96
# In a photo, the share of the ink at each side of the digit that is taken for stray grain and cropped away.
STRAY_INK = 0.001
# Edge medians of evenly or gradually lit paper have top + bottom = left + right to within this (see paper_shade).
UNEVEN_EDGES = 0.15
# Opaque pixels in an image with a transparent border: from this share of the image on, with more than SHEET_INK of
# them standing out from the rest at more than SHEET_RIM pixels from the transparency, they are a sheet of paper with
# ink on it (see paper_behind_transparency).
SHEET_SHARE = 0.35
SHEET_INK = 0.001
SHEET_RIM = 2
# Stroke widths in the 20×20 box as `stroke_width` measures them on MNIST: 1st percentile and median.
THIN_STROKE = 1.0
MNIST_STROKE = 1.8
BLANK = "no digit found: the image is blank (nothing stands out from the background)"


class DigitImageError(UserInputError):
    """One input file that is not a readable image, or has no digit on it."""


def _megapixels(err: Exception) -> str:
    """The image's size in Pillow's message ("Image size (196000000 pixels) exceeds ..."), in megapixels."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return f"{int(found.group(1)) / 1e6:.3g}" if found else "too many"


def read_grayscale(path: str | Path) -> np.ndarray:
    """The image as H×W float32 in [0, 1], transparent parts replaced by the paper colour."""
    try:
        with Image.open(path) as opened:
            # Phone photos are often stored sideways, with a tag that says how to turn them upright.
            image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError as err:  # Pillow's guard against files that unpack to gigabytes
        raise DigitImageError(f"too large to read ({_megapixels(err)} megapixels, more than Pillow's limit of "
                              f"{Image.MAX_IMAGE_PIXELS * 2 / 1e6:.3g}): scale it down, e.g. to 2000 pixels on its "
                              "longer side") from err
    # SyntaxError: Pillow's for a damaged PNG chunk; EOFError and struct.error: other formats cut short.
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DigitImageError(f"not a readable image ({reason})") from err
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette may hold a transparent entry
    alpha = None
    if "A" in image.getbands():
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
    try:
        gray = luminance(image)
    except (ValueError, OSError) as err:  # a mode Pillow cannot turn into greyscale (CIELab TIFFs open as LAB)
        raise DigitImageError(f"unsupported image mode {image.mode} ({err}): save it as PNG or JPEG") from err
    if alpha is None or alpha.min() == 1.0:
        return gray
    paper = paper_behind_transparency(gray, alpha)
    return alpha * gray + (1.0 - alpha) * paper


def luminance(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit or float greyscale: convert("L") would clip
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        peak = float(values.max(initial=0.0))
        if image.mode.startswith("I;16") or peak > 255:
            full_scale = 65535.0
        else:  # a float image holds either 0..1 (the usual for float TIFFs) or 0..255
            full_scale = 1.0 if image.mode == "F" and peak <= 1.0 else 255.0
        return np.clip(values / full_scale, 0.0, 1.0)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def border(array: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels: in a photo of one digit, that is paper."""
    if min(array.shape) <= 2:
        return array.ravel()
    return np.concatenate([array[0], array[-1], array[1:-1, 0], array[1:-1, -1]])


def paper_behind_transparency(gray: np.ndarray, alpha: np.ndarray) -> float:
    edge_gray, edge_alpha = border(gray), border(alpha)
    opaque_edge = edge_alpha > 0.5
    if opaque_edge.mean() > 0.5:  # the image has its own opaque paper: transparent holes show that
        return float(np.median(edge_gray[opaque_edge]))
    if alpha.sum() == 0:
        return 0.0  # fully transparent: blank, reported later
    opaque = alpha > 0.5
    if opaque.mean() >= SHEET_SHARE:
        # A sheet of paper in a transparent frame (a photo rotated in an editor, a cut-out): most of it is paper, and
        # the ink that stands out from that shade lies inside it. What stands out from bold strokes (their
        # anti-aliased rim) lies at their edge.
        sheet = float(np.median(gray[opaque]))
        standing_out = opaque & (np.abs(gray - sheet) > MIN_CONTRAST)
        inside = standing_out & _inside(opaque, SHEET_RIM)
        if inside.sum() > max(SHEET_INK * opaque.sum(), standing_out.sum() / 2):
            return sheet
    # Ink on a transparent sheet: the paper is whatever contrasts with the ink.
    ink = float((gray * alpha).sum() / alpha.sum())
    return 1.0 if ink < 0.5 else 0.0


def _inside(mask: np.ndarray, rim: int) -> np.ndarray:
    """The pixels of `mask` more than `rim` pixels (along rows, columns or diagonals) from any pixel outside it,
    the image's edge included."""
    outside = torch.from_numpy(~mask).float()[None, None]
    outside = torch.nn.functional.pad(outside, (rim, rim, rim, rim), value=1.0)
    near_outside = torch.nn.functional.max_pool2d(outside, 2 * rim + 1, stride=1)[0, 0].numpy() > 0
    return mask & ~near_outside


def paper_shade(gray: np.ndarray) -> np.ndarray:
    """The paper's shade at each pixel: a plane through the medians of the four edges. A phone photo's paper is often
    lit more on one side; with one shade for all of it, the darker side would count as ink (and the digit be cropped
    with it). Medians: a stroke that crosses an edge does not move them. A stroke that runs along an edge (a digit
    cropped tight to its ink: the top bar of a 7) does. Light gives planes with top + bottom = left + right; when the
    medians break that, either each opposite pair is alike and the pairs are apart (bars along the top and the bottom
    of a Z), and the pair further from the picture's median shade (mostly paper) takes the other's mean shade, or the
    edge furthest from the others takes the value the other three imply."""
    if min(gray.shape) <= 2:
        return np.full(gray.shape, float(np.median(border(gray))), dtype=np.float32)
    edges = [float(np.median(edge)) for edge in (gray[0], gray[-1], gray[:, 0], gray[:, -1])]
    if abs(edges[0] + edges[1] - edges[2] - edges[3]) > UNEVEN_EDGES:
        paper = float(np.median(gray))  # mostly paper, in a picture of a digit
        # Top and bottom, left and right: the pair whose mean is nearer the paper first.
        near, far = sorted([(0, 1), (2, 3)], key=lambda pair: abs((edges[pair[0]] + edges[pair[1]]) / 2 - paper))
        within = max(abs(edges[i] - edges[j]) for i, j in (near, far))
        between = abs(edges[0] + edges[1] - edges[2] - edges[3]) / 2
        if within < between / 2:  # each pair alike, the pairs apart: bars along two opposite edges (a Z)
            edges[far[0]] = edges[far[1]] = (edges[near[0]] + edges[near[1]]) / 2
        else:  # one edge apart (the top bar of a 7): the plane the other three give
            typical = float(np.median(edges))
            stroke = max(range(4), key=lambda i: abs(edges[i] - typical))
            across = sum(edges[i] for i in range(4) if i // 2 != stroke // 2)
            edges[stroke] = across - edges[stroke ^ 1]  # stroke ^ 1: the opposite edge
    top, bottom, left, right = edges
    rows = np.linspace(-0.5, 0.5, gray.shape[0], dtype=np.float32)[:, None]
    cols = np.linspace(-0.5, 0.5, gray.shape[1], dtype=np.float32)[None, :]
    return (top + bottom + left + right) / 4 + (bottom - top) * rows + (right - left) * cols


def light_ink_on_black(gray: np.ndarray) -> np.ndarray:
    """Ink as 0 (paper) .. 1 (full ink), whatever the polarity and paper shade of the input."""
    paper = paper_shade(gray)
    # The ink is on the side of the paper shade where a stroke's worth of pixels stands out further: darker means dark
    # ink on light paper, inverted, as MNIST digits are light on black. Not where the single extreme pixel is (a glare
    # spot of a few pixels), nor where the most area is off the paper shade (uneven light around a thin pen line).
    stroke_pixels = max(1, sum(gray.shape) // 20)
    if kth_largest(paper - gray, stroke_pixels) > kth_largest(gray - paper, stroke_pixels):
        gray, paper = 1.0 - gray, 1.0 - paper
    # Ink is judged on the image averaged over 3×3 pixels: a photo's grain (a camera's noise, a sheet's texture) then
    # averages out, while strokes, several pixels wide in such a photo, keep their strength. Judged pixel by pixel,
    # the brightest specks of grain would count as a blank sheet's digit, or stretch the crop around a real one.
    difference = gray - paper
    smoothed = box_mean(difference, 3) if min(gray.shape) >= SMOOTHED_SIZE else difference
    contrast = float(smoothed.max())
    if contrast < MIN_CONTRAST:
        raise DigitImageError(BLANK)
    ink = np.clip(difference / contrast, 0.0, 1.0)  # paper -> 0, the strongest stroke -> 1, like MNIST
    ink[(ink < NOISE_LEVEL) | (smoothed < NOISE_LEVEL * contrast)] = 0.0
    if not ink.any():  # the strongest spot of the averaged picture was no stroke of its own (a lone speck's ring)
        raise DigitImageError(BLANK)
    return ink


def box_mean(values: np.ndarray, size: int) -> np.ndarray:
    """The mean over the size×size square around each pixel (the edge pixels repeated beyond the edge)."""
    half = size // 2
    padded = np.pad(values, half, mode="edge").astype(np.float64)
    sums = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    height, width = values.shape
    total = (sums[size:size + height, size:size + width] - sums[:height, size:size + width]
             - sums[size:size + height, :width] + sums[:height, :width])
    return (total / size**2).astype(np.float32)


def kth_largest(values: np.ndarray, k: int) -> float:
    flat = values.ravel()
    k = min(k, flat.size)
    return float(np.partition(flat, flat.size - k)[flat.size - k])


def crop_to_ink(ink: np.ndarray, stray: float = 0.0) -> np.ndarray:
    """The ink's bounding box, leaving out at each side rows and columns that together hold no more than `stray` of
    the ink (specks of grain that outlasted the averaging, far from the digit)."""
    def span(mass: np.ndarray) -> tuple[int, int]:
        cumulative = np.cumsum(mass)
        total = cumulative[-1]
        first = int(np.searchsorted(cumulative, stray * total, side="right"))
        last = int(np.searchsorted(cumulative, (1.0 - stray) * total, side="left"))
        return first, max(first, last)

    (top, bottom), (left, right) = span(ink.sum(axis=1)), span(ink.sum(axis=0))
    return ink[top : bottom + 1, left : right + 1]


def stroke_width(ink: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the ink area over the ink's outline length."""
    mask = np.pad(ink > 0.5, 1)
    outline = np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
    return 2 * np.count_nonzero(mask) / outline if outline else 0.0


def widen(ink: np.ndarray, pixels: int) -> np.ndarray:
    """Grey dilation by a square: every stroke (and the array) gets `pixels` wider and taller."""
    for axis in (0, 1):
        grown = np.moveaxis(np.pad(ink, [(pixels, pixels) if a == axis else (0, 0) for a in (0, 1)]), axis, 0)
        covered = 1  # each row of `grown` is the max over `covered` neighbours; doubling takes log(pixels) steps
        while covered < pixels + 1:
            step = min(covered, pixels + 1 - covered)
            grown = np.maximum(grown[:-step], grown[step:])
            covered += step
        ink = np.moveaxis(grown, 0, axis)
    return ink


def widen_thin_strokes(ink: np.ndarray) -> np.ndarray:
    """Widen strokes that scaling to the box would make thinner than (almost) any MNIST digit's.

    A pen line in a large photo would otherwise shrink to a faint half-pixel trace the model never saw."""
    scale = BOX_SIZE / max(ink.shape)
    width = stroke_width(ink)
    if width * scale >= THIN_STROKE:
        return ink
    return widen(ink, round(MNIST_STROKE / scale - width))


def fit_in_box(ink: np.ndarray) -> np.ndarray:
    """Scale so the longer side is BOX_SIZE pixels, keeping the aspect ratio; anti-aliased."""
    height, width = ink.shape
    scale = BOX_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Pillow's resampling widens its filter when shrinking, so thin strokes average instead of vanishing.
    resized = Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def centre_of_mass(ink: np.ndarray) -> tuple[float, float]:
    total = float(ink.sum())
    rows, cols = np.arange(ink.shape[0]), np.arange(ink.shape[1])
    return float(ink.sum(axis=1) @ rows) / total, float(ink.sum(axis=0) @ cols) / total


def place_by_centre_of_mass(patch: np.ndarray) -> np.ndarray:
    """Paste `patch` into a black MNIST field so its centre of mass lands on the field's centre."""
    com_row, com_col = centre_of_mass(patch)
    # Whole-pixel shifts, clamped so the patch always fits (only lopsided shapes ever need the clamp).
    top = int(np.clip(round(FIELD_CENTRE - com_row), 0, FIELD_SIZE - patch.shape[0]))
    left = int(np.clip(round(FIELD_CENTRE - com_col), 0, FIELD_SIZE - patch.shape[1]))
    field = np.zeros((FIELD_SIZE, FIELD_SIZE), dtype=np.float32)
    field[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    return field


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """A grayscale image of one digit -> 28×28 float32 in [0, 1], light digit on black, MNIST layout."""
    ink = light_ink_on_black(gray)
    photo = min(gray.shape) >= SMOOTHED_SIZE
    patch = fit_in_box(widen_thin_strokes(crop_to_ink(ink, STRAY_INK if photo else 0.0)))
    if patch.max() <= 0:
        raise DigitImageError("no digit found: the ink is too small to survive scaling to 20×20")
    return place_by_centre_of_mass(patch)


def digit_tensor(path: str | Path, mean: float, std: float) -> torch.Tensor:
    """One image file -> a 1×28×28 tensor normalized like the training data."""
    field = torch.from_numpy(mnist_style(read_grayscale(path)))
    return ((field - mean) / std).unsqueeze(0)
