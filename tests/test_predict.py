"""`python -m src.predict`: user images prepared like MNIST, then classified by checkpoints trained here."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from src.data.digit_images import (
    DigitImageError,
    centre_of_mass,
    light_ink_on_black,
    mnist_style,
    read_grayscale,
    stroke_width,
)
from src import PROJECT_ROOT
from src.errors import UserInputError
from src.predict import find_inputs, predict, prediction_table, save_preview
from src.train import train
from tests.conftest import REAL_DATA_DIR, compose_config, needs_real_mnist, run_module, tiny_run_overrides
from tests.digit_drawing import draw_six, save, transparent_sticker, user_photo


def prepared(image: Image.Image, folder: Path, name: str = "digit.png") -> np.ndarray:
    return mnist_style(read_grayscale(save(image, folder / name)))


def ink_box(field: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(field.any(axis=1))[0], np.nonzero(field.any(axis=0))[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


# --- Preprocessing: no model needed ---


@pytest.mark.parametrize("box", [(200, 20, 270, 180), (20, 70, 260, 150)], ids=["tall", "wide"])
def test_a_digit_anywhere_in_a_large_frame_gets_the_mnist_layout(tmp_path, box):
    drawn = draw_six(box=box)  # a tall 6 near the right edge of 300×200, or a wide one across it
    drawn_height, drawn_width = ink_box(np.asarray(drawn, dtype=np.float32) / 255)
    field = prepared(drawn, tmp_path)
    assert field.shape == (28, 28) and field.dtype == np.float32
    assert field.min() == 0.0 and 0.95 <= field.max() <= 1.0
    long_side, short_side = sorted(ink_box(field), reverse=True)
    assert long_side == 20  # the longer side fills the 20×20 box ...
    assert abs(short_side - 20 * min(drawn_height, drawn_width) / max(drawn_height, drawn_width)) <= 1.5  # ... kept in ratio
    row, col = centre_of_mass(field)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1


def test_both_polarities_and_dim_grey_paper_give_the_same_input(tmp_path):
    light_on_dark = prepared(draw_six(paper=0, ink=255), tmp_path, "a.png")
    dark_on_light = prepared(draw_six(paper=255, ink=0), tmp_path, "b.png")
    dim_photo = prepared(draw_six(paper=110, ink=30), tmp_path, "c.png")  # grey paper, under 0.5 brightness
    np.testing.assert_allclose(dark_on_light, light_on_dark, atol=1e-5)
    np.testing.assert_allclose(dim_photo, light_on_dark, atol=1e-4)


def test_a_glare_spot_does_not_decide_the_polarity(tmp_path):
    """A few bright pixels on grey paper are not the digit: the dark six is (it was a 20×20 white square)."""
    expected = prepared(draw_six(paper=150, ink=70), tmp_path, "plain.png")
    with_glare = draw_six(paper=150, ink=70)
    with_glare.paste(255, (20, 20, 23, 23))  # 9 pixels of 60,000
    np.testing.assert_allclose(prepared(with_glare, tmp_path, "glare.png"), expected, atol=1e-5)


def seven_in_a_big_photo(paper: np.ndarray, ink: int, width: int) -> np.ndarray:
    """A thin pen "7" drawn across a 1200×900 photo of `paper` (0-255): its ink is a small share of the pixels."""
    photo = Image.fromarray(paper.astype(np.uint8))
    ImageDraw.Draw(photo).line([(420, 270), (780, 270), (540, 675)], fill=ink, width=width)
    return np.asarray(photo, dtype=np.float32) / 255


def test_a_thin_stroke_in_a_big_photo_keeps_its_polarity_against_glare_vignette_and_specks():
    """The pen line is what stands out from the paper, not a glare spot larger than it, the brighter middle of
    unevenly lit paper, or dark specks on dark paper under light ink."""
    grey = np.full((900, 1200), 128.0)
    glare = seven_in_a_big_photo(grey, ink=26, width=3)
    yy, xx = np.mgrid[:900, :1200]
    glare[(yy - 145) ** 2 + (xx - 945) ** 2 <= 45 ** 2] = 217 / 255  # a glare spot 90 px across
    ink = light_ink_on_black(glare)
    assert ink[270, 600] == 1.0 and ink[145, 945] == 0.0

    distance = np.hypot((yy - 450) / 450, (xx - 600) / 600) / 2 ** 0.5
    vignette = seven_in_a_big_photo((0.70 + 0.18 * (1 - distance)) * 255, ink=38, width=5)  # brighter in the middle
    ink = light_ink_on_black(vignette)
    assert ink[270, 600] == 1.0 and (ink > 0).mean() < 0.01

    specks = seven_in_a_big_photo(np.full((900, 1200), 0.35 * 255), ink=191, width=4)  # light ink on dark paper
    for row, col in np.random.default_rng(0).integers(0, 880, size=(40, 2)):
        specks[row : row + 12, col : col + 12] = 0.0
    ink = light_ink_on_black(specks)
    assert ink[270, 600] == 1.0 and ink[specks == 0.0].max() == 0.0


@pytest.mark.parametrize("darker", [0.25, 0.35])
def test_paper_lit_more_on_one_side_is_still_paper(tmp_path, darker):
    """A phone photo's paper is often darker on one side: that side must not count as ink (it was cropped with the
    digit, which then shrank to half its size, and a 0 was read as a 9)."""
    evenly_lit = np.asarray(draw_six(paper=235, ink=25), dtype=np.float32)
    light = np.linspace(1.0 - darker, 1.0, evenly_lit.shape[1], dtype=np.float32)[None, :]  # darker away from the 6
    shaded = Image.fromarray((evenly_lit * light).round().astype(np.uint8))
    expected, field = prepared(Image.fromarray(evenly_lit.astype(np.uint8)), tmp_path, "even.png"), prepared(shaded, tmp_path)
    assert ink_box(field) == ink_box(expected)
    assert np.abs(field - expected).max() < 0.25 and np.abs(field - expected).mean() < 0.02


@pytest.mark.parametrize("pen", [2, 6])
def test_thin_pen_strokes_are_widened_like_mnist_strokes(tmp_path, pen):
    # A 2 px pen line on a 163 px tall digit would shrink to a faint 0.2 px trace in the 20×20 box.
    field = prepared(draw_six(stroke=pen), tmp_path)
    # About MNIST's median width (1.8 px), not merely past the thinnest (THIN_STROKE, 1 px).
    assert 1.5 <= stroke_width(field) <= 3 and field.max() == pytest.approx(1.0, abs=0.05)


def test_transparent_background_counts_as_paper(tmp_path):
    expected = prepared(draw_six(), tmp_path, "plain.png")
    alpha = draw_six()
    black = Image.new("L", alpha.size, 0)
    rgba = Image.merge("RGBA", (black, black, black, alpha))  # black everywhere: only alpha shows the six
    np.testing.assert_allclose(prepared(rgba, tmp_path, "rgba.png"), expected, atol=1e-5)
    np.testing.assert_allclose(prepared(Image.merge("LA", (black, alpha)), tmp_path, "la.png"), expected, atol=1e-5)
    palette = draw_six(paper=0, ink=1).convert("P")  # index 0: transparent white paper, index 1: black ink
    palette.putpalette([255, 255, 255, 0, 0, 0])
    palette.info["transparency"] = 0
    np.testing.assert_allclose(prepared(palette, tmp_path, "p.png"), expected, atol=1e-5)


def test_a_sheet_in_a_transparent_frame_counts_as_paper(tmp_path):
    """A photo rotated in an editor leaves transparent corners, a cut-out a transparent surround: the sheet is the
    paper there, not ink (the whole sheet was taken for a light digit, with the 6 a hole in it)."""
    on_paper = draw_six(paper=235, ink=25).convert("RGBA")
    for resample in (Image.Resampling.NEAREST, Image.Resampling.BICUBIC):
        rotated = on_paper.rotate(15, expand=True, resample=resample)  # transparent black corners
        flattened = Image.alpha_composite(Image.new("RGBA", rotated.size, (235, 235, 235, 255)), rotated).convert("L")
        expected = prepared(flattened, tmp_path, "flattened.png")
        np.testing.assert_allclose(prepared(rotated, tmp_path, "rotated.png"), expected, atol=0.02)
    cut_out = Image.new("RGBA", (400, 300), (0, 0, 0, 0))
    cut_out.paste(on_paper, (50, 50))
    np.testing.assert_allclose(prepared(cut_out, tmp_path, "cut_out.png"), prepared(on_paper.convert("L"), tmp_path),
                               atol=1e-5)
    # Bold strokes alone, covering more than that share of their canvas, are still ink on transparent paper: drawn in
    # one shade, and cut out of a scan with their anti-aliased rim of greys (which stand out from the ink's shade).
    bold = draw_six(size=(90, 170), box=(5, 5, 85, 165), stroke=30)
    black = Image.new("L", bold.size, 0)
    assert (np.asarray(bold) > 127).mean() > 0.4
    np.testing.assert_allclose(prepared(Image.merge("LA", (black, bold)), tmp_path, "bold.png"), prepared(bold, tmp_path),
                               atol=1e-5)
    scan = draw_six(size=(360, 680), box=(20, 20, 340, 660), paper=255, ink=0, stroke=120).resize(
        (90, 170), Image.Resampling.LANCZOS)
    cut_out = Image.merge("LA", (scan, scan.point(lambda shade: 0 if shade > 230 else 255)))  # the white removed
    np.testing.assert_allclose(prepared(cut_out, tmp_path, "bold_cut_out.png"), prepared(scan, tmp_path), atol=1e-5)


def test_sixteen_bit_and_sideways_stored_images_are_read_as_shown(tmp_path):
    upright = draw_six()
    expected = read_grayscale(save(upright, tmp_path / "upright.png"))
    sixteen_bit = Image.fromarray(np.asarray(upright, dtype=np.uint16) * 200)  # ink 51000 of 65535, not clipped
    read_back = read_grayscale(save(sixteen_bit, tmp_path / "16bit.png"))
    np.testing.assert_allclose(read_back, expected * 51000 / 65535, atol=1e-4)
    thirty_two_bit = Image.fromarray(np.asarray(upright, dtype=np.int32) * 200)  # a 32-bit TIFF: Pillow's mode I
    assert thirty_two_bit.mode == "I"
    np.testing.assert_allclose(read_grayscale(save(thirty_two_bit, tmp_path / "32bit.tif")), expected * 51000 / 65535,
                               atol=1e-4)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: "turn 90° clockwise to display", as phones store portrait photos
    sideways = save(upright.transpose(Image.Transpose.ROTATE_90), tmp_path / "phone.png", exif=exif)
    np.testing.assert_array_equal(read_grayscale(sideways), expected)
    # Float TIFFs hold 0..1 (convert("L") would clip them to the levels 0 and 1 of 255: a blank image).
    as_float = Image.fromarray(np.asarray(upright, dtype=np.float32) / 255)
    np.testing.assert_allclose(read_grayscale(save(as_float, tmp_path / "float.tif")), expected, atol=1e-6)


def test_an_image_mode_without_greyscale_is_a_clear_error(tmp_path):
    lab = save(draw_six().convert("RGB").convert("LAB"), tmp_path / "lab.tif")  # Pillow cannot convert LAB to L
    with pytest.raises(DigitImageError, match="unsupported image mode LAB"):
        read_grayscale(lab)


def noisy_white(size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(245, 256, size[::-1]).astype(np.uint8))


@pytest.mark.parametrize(
    "name, image",
    [
        ("white.png", Image.new("L", (50, 40), 255)),
        ("grey.jpg", Image.new("RGB", (50, 40), (128, 128, 128))),
        ("paper_grain.png", noisy_white()),
        ("transparent.png", Image.new("RGBA", (50, 40), (0, 0, 0, 0))),
    ],
)
def test_a_blank_image_is_a_clear_error(tmp_path, name, image):
    with pytest.raises(DigitImageError, match="no digit found"):
        prepared(image, tmp_path, name)


def grainy(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    """A camera's grain: Gaussian noise of `sigma` (a fraction of full scale) on every pixel."""
    noise = np.random.default_rng(seed).normal(0.0, sigma * 255, (image.height, image.width))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8))


@pytest.mark.parametrize("sigma", [0.02, 0.04])
def test_a_cameras_grain_is_neither_a_digit_nor_part_of_one(tmp_path, sigma):
    """Pixel by pixel, the brightest specks of grain on a 640×480 sheet stood out enough to be classified as a digit,
    and around a real digit they stretched the crop to the whole photo, shrinking the digit to a third."""
    with pytest.raises(DigitImageError, match="no digit found"):
        prepared(grainy(Image.new("L", (640, 480), 235), sigma), tmp_path, "blank.png")
    digit = draw_six(size=(640, 480), box=(380, 120, 450, 280), paper=235, ink=150)  # a pencil's grey strokes
    clean, photo = prepared(digit, tmp_path, "clean.png"), prepared(grainy(digit, sigma), tmp_path, "photo.png")
    assert ink_box(photo) == ink_box(clean) and np.abs(photo - clean).mean() < 0.05


@pytest.mark.parametrize("edge", ["top", "bottom", "left", "right"])
def test_a_digit_cropped_tight_to_its_ink_keeps_the_strokes_along_its_edges(tmp_path, edge):
    """Cropped without a margin, a bar along an edge (the top of a 7) made that edge's median the ink's shade, which
    was then taken for paper and the bar lost: a 7 was read as a 1."""
    drawn = np.full((160, 110), 255, dtype=np.uint8)
    drawn[40:150, 50:62] = 0  # a stem, clear of the edges
    bars = {"top": (slice(0, 12), slice(None)), "bottom": (slice(-12, None), slice(None)),
            "left": (slice(None), slice(0, 12)), "right": (slice(None), slice(-12, None))}
    drawn[bars[edge]] = 0
    rows, cols = np.nonzero(prepared(Image.fromarray(drawn), tmp_path) > 0.5)
    outermost = {"top": cols[rows == rows.min()], "bottom": cols[rows == rows.max()],
                 "left": rows[cols == cols.min()], "right": rows[cols == cols.max()]}[edge]
    assert outermost.max() - outermost.min() >= 9, outermost  # the bar, across the digit (lost: the stem's end)


@pytest.mark.parametrize("lit_from", ["left", "right", "top", "bottom"])
def test_a_seven_cropped_tight_on_unevenly_lit_paper_prepares_as_with_a_margin(tmp_path, lit_from):
    """The bar along the top edge and a lighting gradient together: the other three edges then differ too, by the
    light alone, and the top edge must still be the one taken for a stroke."""
    drawn = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(drawn).line([(40, 40), (160, 40), (90, 170)], fill=0, width=14, joint="curve")
    digit = np.asarray(drawn, dtype=np.float32) / 255
    rows, cols = np.nonzero(digit < 0.5)
    tight = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    ramp = {"left": np.linspace(1.0, 0.75, tight.shape[1])[None, :], "right": np.linspace(0.75, 1.0, tight.shape[1])[None, :],
            "top": np.linspace(1.0, 0.75, tight.shape[0])[:, None], "bottom": np.linspace(0.75, 1.0, tight.shape[0])[:, None]}
    lit = Image.fromarray((tight * ramp[lit_from] * 255).round().astype(np.uint8))
    with_margin = Image.fromarray((np.pad(tight, 20, constant_values=1.0) * 255).astype(np.uint8))
    field, expected = prepared(lit, tmp_path, "lit.png"), prepared(with_margin, tmp_path)
    assert np.abs(field - expected).mean() < 0.03


def test_a_digit_cropped_tight_with_bars_along_two_opposite_edges_prepares_as_with_a_margin(tmp_path):
    """A 5 or a Z cropped tight: the top and bottom edges are ink, the left and right ones paper."""
    tight = np.full((160, 110), 255, dtype=np.uint8)
    tight[:14], tight[-14:] = 0, 0
    for row in range(14, 146):  # the diagonal of a Z
        col = int(110 - 12 - (row - 14) * (110 - 24) / 132)
        tight[row, col : col + 12] = 0
    with_margin = np.pad(tight, 20, constant_values=255)
    field, expected = prepared(Image.fromarray(tight), tmp_path, "tight.png"), prepared(Image.fromarray(with_margin), tmp_path)
    assert ink_box(field) == ink_box(expected) and np.abs(field - expected).mean() < 0.02


def png_with_a_damaged_chunk(image: Image.Image) -> bytes:
    """The image as a PNG whose pixel data is split in two chunks, the second under a garbage chunk type."""
    stream = io.BytesIO()
    image.save(stream, "PNG", compress_level=1)
    data, chunks, position = stream.getvalue(), {}, 8
    while position < len(data):
        length = struct.unpack(">I", data[position : position + 4])[0]
        chunks[data[position + 4 : position + 8]] = data[position + 8 : position + 8 + length]
        position += length + 12
    half = len(chunks[b"IDAT"]) // 2

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (data[:8] + chunk(b"IHDR", chunks[b"IHDR"]) + chunk(b"IDAT", chunks[b"IDAT"][:half])
            + chunk(b"\x01\x02\x03\x04", chunks[b"IDAT"][half:]) + chunk(b"IEND", b""))


def test_non_images_are_a_clear_error(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    save(draw_six(), tmp_path / "whole.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    (tmp_path / "bad_chunk.png").write_bytes(png_with_a_damaged_chunk(draw_six()))  # Pillow raises SyntaxError
    for name in ("notes.png", "truncated.png", "bad_chunk.png", "missing.png"):
        with pytest.raises(DigitImageError, match="not a readable image"):
            read_grayscale(tmp_path / name)


def test_an_image_past_pillows_size_limit_is_told_to_be_scaled_down(tmp_path, monkeypatch):
    """A 200-megapixel phone photo is past it: it read as "not a readable image (... decompression bomb DOS attack)"."""
    save(draw_six(), tmp_path / "six.png")  # 300×200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # an error from 2 × 20,000 pixels on
    with pytest.raises(DigitImageError, match=r"^too large to read \(0.06 megapixels, more than Pillow's limit of 0.04\): "
                                              r"scale it down, e.g. to 2000 pixels on its longer side$"):
        read_grayscale(tmp_path / "six.png")


def test_inputs_can_be_a_file_a_folder_a_glob_or_a_list(tmp_path):
    for name in ("b.png", "a.JPG", "c.bmp", ".hidden.png", "notes.txt"):
        (tmp_path / name).touch()
    (tmp_path / "sub").mkdir()
    assert find_inputs(str(tmp_path)) == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "c.bmp"]
    assert find_inputs(f"{tmp_path}/*.png") == [tmp_path / "b.png"]
    digits = tmp_path / "digits"
    digits.mkdir()
    for n in reversed(range(10)):  # made out of order: the folder lists them in an order of its own
        (digits / f"{n}.png").touch()
    assert find_inputs(f"{digits}/*.png") == [digits / f"{n}.png" for n in range(10)]  # a glob's files: sorted too
    deep = tmp_path / "sub" / "a" / "b" / "deep.png"
    deep.parent.mkdir(parents=True)
    deep.touch()
    assert find_inputs(f"{tmp_path}/sub/**/*.png") == [deep]  # ** goes down any number of folders
    assert find_inputs(str(tmp_path / "notes.txt")) == [tmp_path / "notes.txt"]  # named explicitly: tried, reported
    assert find_inputs([str(tmp_path / "b.png"), f"{tmp_path}/b*"]) == [tmp_path / "b.png"]
    for inputs, message in [
        (str(tmp_path / "nope.png"), "no such file or folder"),
        (f"{tmp_path}/*.gif", "no file matches"),
        (str(tmp_path / "sub"), "holds no image files"),
    ]:
        with pytest.raises(UserInputError, match=message):
            find_inputs(inputs)


# --- Predicting with a model trained on the synthetic fixture data (seconds; any model will do) ---


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory, synthetic_data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("synthetic_run")
    # Not the default normalization: predict must prepare images with the checkpoint's.
    overrides = [*tiny_run_overrides(synthetic_data_dir, run_dir), "model=mlp", "model.hidden_sizes=[32]", "test=false",
                 "data.mean=0.5", "data.std=0.6"]
    return Path(train(compose_config(overrides))["best_model_path"])


def predict_config(ckpt_path: Path, inputs: Path | str, output_dir: Path, *overrides: str):
    return compose_config(
        [f"ckpt_path='{ckpt_path}'", f"inputs='{inputs}'", f"paths.output_dir='{output_dir}'", *overrides], "predict"
    )


def test_unreadable_and_blank_files_are_reported_and_skipped(tmp_path, synthetic_checkpoint, caplog):
    caplog.set_level("INFO", logger="src.predict")
    folder = tmp_path / "images"
    save(draw_six(), folder / "six.png")
    save(Image.new("L", (30, 30), 255), folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    json_path = tmp_path / "predictions.json"
    predictions = predict(predict_config(synthetic_checkpoint, folder, tmp_path / "run", f"output='{json_path}'"))
    # Every input, in the folder's order; a skipped one says why, instead of a digit.
    assert json.loads(json_path.read_text()) == predictions
    assert [(Path(p["path"]).name, p["digit"]) for p in predictions] == [("blank.png", None), ("broken.jpg", None),
                                                                         ("six.png", predictions[2]["digit"])]
    assert isinstance(predictions[2]["digit"], int) and predictions[2]["skipped"] is None
    assert predictions[0]["skipped"].startswith("no digit found: the image is blank")
    assert predictions[1]["skipped"].startswith("not a readable image")
    assert predictions[1]["confidence"] is None and predictions[1]["probs"] is None
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 2
    assert any("blank.png: no digit found" in line for line in skipped)
    assert any("broken.jpg: not a readable image" in line for line in skipped)
    assert "classified    : 1 of 3 file(s) with" in caplog.text  # the skipped ones are not counted as classified
    # A list of files (inputs=[a,b], as Hydra hands it over: a ListConfig), in its own order.
    listed = predict(compose_config([f"ckpt_path='{synthetic_checkpoint}'", f"paths.output_dir='{tmp_path / 'listed'}'",
                                     f"inputs=['{folder / 'six.png'}','{folder / 'blank.png'}']"], "predict"))
    assert [Path(p["path"]).name for p in listed] == ["six.png", "blank.png"]

    (folder / "six.png").unlink()
    with pytest.raises(UserInputError, match="none of the 2 input file"):
        predict(predict_config(synthetic_checkpoint, folder, tmp_path / "run"))


def test_json_output_and_preview_sheet(tmp_path, synthetic_checkpoint):
    save(draw_six(), tmp_path / "six.png")
    save(draw_six(paper=255, ink=0), tmp_path / "six_$x_$.jpg")  # `$..$` in a caption: not a formula
    json_path = tmp_path / "out" / "predictions.json"
    cfg = predict_config(synthetic_checkpoint, f"{tmp_path}/six*", tmp_path / "run",
                         f"output='{json_path}'", "save_preview=true")
    predictions = predict(cfg)

    written = json.loads(json_path.read_text())
    assert written == predictions and len(written) == 2
    for entry in written:
        assert set(entry) == {"path", "digit", "confidence", "probs", "skipped"} and entry["skipped"] is None
        assert len(entry["probs"]) == 10 and sum(entry["probs"]) == pytest.approx(1.0, abs=1e-4)
        assert entry["digit"] == int(np.argmax(entry["probs"])) and entry["confidence"] == max(entry["probs"])
    # The same drawing in either polarity (and through JPEG) is nearly the same input to the model.
    assert written[0]["probs"] == pytest.approx(written[1]["probs"], abs=0.02), [e["probs"] for e in written]
    from src.data.digit_images import digit_tensor
    from src.models.loading import load_classifier

    model, _ = load_classifier(synthetic_checkpoint)
    with torch.inference_mode():  # prepared with the checkpoint's normalization, the fixture's mean 0.5 and std 0.6
        expected = model(digit_tensor(Path(written[0]["path"]), 0.5, 0.6).unsqueeze(0)).softmax(dim=1)[0]
    assert written[0]["probs"] == pytest.approx(expected.tolist(), abs=1e-5)
    plain = digit_tensor(Path(written[0]["path"]), 0.0, 1.0)  # ink in [0, 1], as the training images before theirs
    assert torch.allclose(digit_tensor(Path(written[0]["path"]), 0.5, 0.6), (plain - 0.5) / 0.6)

    with Image.open(tmp_path / "run" / "predictions.png") as preview:
        assert preview.format == "PNG" and preview.width > 100


def test_low_confidence_is_marked_in_the_table_and_in_red_on_the_preview(tmp_path, monkeypatch):
    import src.plots.digit_sheet

    def guess(path, digit, confidence):
        probs = [(1 - confidence) / 9] * 10
        probs[digit] = confidence
        return {"path": path, "digit": digit, "confidence": confidence, "probs": probs}

    predictions = [guess("sure.png", 3, 0.9), guess("unsure.png", 5, 0.4)]
    sure_line, unsure_line = prediction_table(predictions, top_k=2).splitlines()[1:]
    assert sure_line.startswith("sure.png") and "low confidence" not in sure_line
    assert unsure_line.startswith("unsure.png") and unsure_line.endswith("  <- low confidence")
    ranked = {"path": "ranked.png", "digit": 7, "confidence": 0.6,
              "probs": [0.0, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.3, 0.05]}
    assert prediction_table([ranked], top_k=3).splitlines()[1].endswith("7 (0.60)  8 (0.30)  1 (0.05)")  # likeliest first

    sheets = []
    real_sheet = src.plots.digit_sheet.digit_sheet

    def recording_sheet(images, captions, flagged, **kwargs):
        sheets.append(list(flagged))
        return real_sheet(images, captions, flagged, **kwargs)

    monkeypatch.setattr(src.plots.digit_sheet, "digit_sheet", recording_sheet)
    assert save_preview(torch.zeros(2, 28, 28), predictions, tmp_path).is_file()
    assert sheets == [[False, True]]


def run_predict(*overrides: str) -> subprocess.CompletedProcess:
    return run_module("src.predict", *overrides, timeout=120)


def test_entry_point_prints_a_table_and_reports_skipped_files(tmp_path, synthetic_checkpoint):
    save(draw_six(), tmp_path / "six.png")
    (tmp_path / "notes.png").write_text("not an image")
    result = run_predict(f"ckpt_path={synthetic_checkpoint}", f"inputs={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
                         "save_preview=true")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "digit  confidence  top-3" in output and f"{tmp_path / 'six.png'}" in output
    assert f"skipped {tmp_path / 'notes.png'}: not a readable image" in output
    assert f"preview       : {tmp_path / 'run' / 'predictions.png'}" in output
    assert (tmp_path / "run" / "predict.log").exists()


@pytest.fixture(scope="session")
def synthetic_cnn_checkpoint(tmp_path_factory, synthetic_data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("synthetic_cnn_run")
    overrides = [*tiny_run_overrides(synthetic_data_dir, run_dir), "model.channels=[4,8]", "model.kernel_size=[5,3]",
                 "model.hidden_size=16", "model.channels_last=true", "test=false"]
    return Path(train(compose_config(overrides))["best_model_path"])


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_the_network_alone_computes_what_the_classifier_does(request, network, synthetic_data_dir):
    from src.models.loading import load_classifier, load_network

    ckpt_path = request.getfixturevalue("synthetic_checkpoint" if network == "mlp" else "synthetic_cnn_checkpoint")
    classifier, _ = load_classifier(ckpt_path)
    alone, _ = load_network(ckpt_path)
    assert isinstance(alone, torch.nn.Sequential) and not alone.training
    images = torch.randn(20, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(alone(images), classifier(images), atol=1e-5)


def test_a_checkpoint_lacking_a_network_size_or_with_an_unknown_one_gets_the_whole_classifier(tmp_path, synthetic_checkpoint):
    from src.models.classifier import DigitClassifier
    from src.models.loading import load_network

    checkpoint = torch.load(synthetic_checkpoint, weights_only=True)
    del checkpoint["hyper_parameters"]["dropout"]  # as from a version before the setting: the class has a default
    torch.save(checkpoint, tmp_path / "older.ckpt")
    model, _ = load_network(tmp_path / "older.ckpt")
    assert isinstance(model, DigitClassifier) and not model.training

    checkpoint["hyper_parameters"]["activation"] = "gelu"  # as from a newer version: refused, not ignored
    torch.save(checkpoint, tmp_path / "newer.ckpt")
    with pytest.raises(UserInputError, match="settings do not fit this version of it"):
        load_network(tmp_path / "newer.ckpt")


def test_the_classifier_settings_known_to_load_network_are_the_classifiers():
    import inspect

    from src.models.classifier import DigitClassifier
    from src.models.loading import CLASSIFIER_SETTINGS

    assert set(inspect.signature(DigitClassifier.__init__).parameters) - {"self"} == CLASSIFIER_SETTINGS


def test_predict_imports_torch_only_for_real_inputs_and_lightning_never(tmp_path, synthetic_checkpoint):
    save(draw_six(), tmp_path / "six.png")
    script = f"""
import sys
from hydra import compose, initialize_config_dir
from src import CONFIG_DIR
from src.errors import UserInputError
from src.predict import predict

def config(inputs, ckpt_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("predict", ["ckpt_path=" + ckpt_path, "inputs=" + inputs, r"paths.output_dir={tmp_path}"])

for inputs, ckpt_path in ((r"{tmp_path / 'nothing_here'}", r"{synthetic_checkpoint}"),
                         (r"{tmp_path / 'six.png'}", r"{tmp_path / 'no.ckpt'}")):
    try:
        predict(config(inputs, ckpt_path))
    except UserInputError:
        print("refused, torch imported:", "torch" in sys.modules)
print("digit:", predict(config(r"{tmp_path / 'six.png'}", r"{synthetic_checkpoint}"))[0]["digit"])
print("lightning imported:", "pytorch_lightning" in sys.modules or "lightning" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # A mistyped input or checkpoint fails before the slow imports.
    assert result.stdout.count("refused, torch imported: False") == 2, result.stdout
    assert "digit:" in result.stdout and "lightning imported: False" in result.stdout


def test_a_bad_checkpoint_is_one_clear_error(tmp_path):
    save(draw_six(), tmp_path / "six.png")
    result = run_predict(f"ckpt_path={tmp_path / 'model.ckpt'}", f"inputs={tmp_path / 'six.png'}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert f"ckpt_path={tmp_path / 'model.ckpt'}: no such file" in output and "Traceback" not in output

    (tmp_path / "model.ckpt").write_text("garbage")
    with pytest.raises(UserInputError, match="cannot be read as a checkpoint"):
        predict(predict_config(tmp_path / "model.ckpt", tmp_path / "six.png", tmp_path / "run"))


def test_required_values_and_top_k_are_checked(tmp_path, synthetic_checkpoint):
    with pytest.raises(UserInputError, match="ckpt_path is required"):
        predict(compose_config([f"paths.output_dir={tmp_path}", "inputs=x.png"], "predict"))
    for bad in ("0", "true", "11"):
        with pytest.raises(UserInputError, match=f"top_k={bad} is invalid"):
            predict(predict_config(synthetic_checkpoint, tmp_path, tmp_path, f"top_k={bad}"))
    save(draw_six(), tmp_path / "six.png")
    (ranked,) = predict(predict_config(synthetic_checkpoint, tmp_path / "six.png", tmp_path / "run", "top_k=10"))
    assert ranked["digit"] is not None  # 10, the most there are, is allowed
    with pytest.raises(UserInputError, match="save_preview=maybe is invalid: it must be true or false"):
        predict(predict_config(synthetic_checkpoint, tmp_path, tmp_path, "save_preview=maybe"))
    with pytest.raises(UserInputError, match="output=true is invalid: it must be a file name, e.g. output=predictions.json"):
        predict(predict_config(synthetic_checkpoint, tmp_path, tmp_path, "output=true"))


def test_an_unwritable_output_is_one_clear_error_and_keeps_the_earlier_file(tmp_path, synthetic_checkpoint, monkeypatch):
    save(draw_six(), tmp_path / "six.png")
    with pytest.raises(UserInputError, match="is a folder: give a file name"):
        predict(predict_config(synthetic_checkpoint, tmp_path / "six.png", tmp_path / "run", f"output='{tmp_path}'"))

    json_path = tmp_path / "predictions.json"
    json_path.write_text("[]\n")
    real_write_text = Path.write_text

    def disk_full(self, *args, **kwargs):
        real_write_text(self, "[{\"path\": ")  # half a file, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(UserInputError, match=r"output=.*predictions\.json: cannot be written \(No space left on device\)"):
        predict(predict_config(synthetic_checkpoint, tmp_path / "six.png", tmp_path / "run", f"output='{json_path}'"))
    monkeypatch.undo()
    assert json_path.read_text() == "[]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.json", "six.png"]  # no partial file left


def test_a_file_that_cannot_be_written_leaves_the_predictions_in_the_log(tmp_path, synthetic_checkpoint, monkeypatch,
                                                                        caplog):
    """The table is logged before the JSON and the preview are written: a full disk fails the run in one line, with
    the answers already on the console; and that line speaks of the preview, not of checkpoints and sweeps."""
    from matplotlib.figure import Figure

    save(draw_six(), tmp_path / "six.png")
    caplog.set_level("INFO", logger="src.predict")

    def disk_full(figure, target, **options):
        Path(target).write_bytes(b"\x89PNG")  # the first bytes, then the failure (Pillow's error names no file)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    json_path = tmp_path / "predictions.json"
    with pytest.raises(UserInputError) as raised:
        predict(predict_config(synthetic_checkpoint, tmp_path / "six.png", tmp_path / "run", f"output='{json_path}'",
                               "save_preview=true"))
    preview = tmp_path / "run" / "predictions.png"
    assert str(raised.value) == (f"{preview}: cannot be written (No space left on device). The predictions are in the "
                                 "table above; to have the preview, free some space or put the run elsewhere "
                                 "(hydra.run.dir=<folder>).")
    assert f"{tmp_path / 'six.png'}  " in caplog.text and "classified    : 1 of 1 file(s)" in caplog.text
    assert not preview.exists() and not list((tmp_path / "run").glob(".*.partial"))
    (written,) = json.loads(json_path.read_text())  # written before the preview, and kept
    assert f"{tmp_path / 'six.png'}  {written['digit']:>5}" in caplog.text


def test_the_preview_of_many_images_shows_the_first_ones(tmp_path, synthetic_checkpoint, monkeypatch):
    """A preview of every image could pass the PNG size limit (thousands of images); the JSON keeps them all."""
    import src.predict

    for index in range(10):  # two rows of eight
        save(draw_six(), tmp_path / "images" / f"six{index}.png")
    heights = []
    for cap in (256, 8):  # 8: one row
        monkeypatch.setattr(src.predict, "MAX_PREVIEW_IMAGES", cap)
        predictions = predict(predict_config(synthetic_checkpoint, tmp_path / "images", tmp_path / f"run{cap}",
                                             "save_preview=true"))
        assert len(predictions) == 10
        with Image.open(tmp_path / f"run{cap}" / "predictions.png") as preview:
            heights.append(preview.height)
    assert heights[1] < 0.75 * heights[0]


# --- Real MNIST: a model trained here must recognise real digits dressed up as user photos ---


@pytest.fixture(scope="session")
def mnist_checkpoint(tmp_path_factory) -> Path:
    """A small MLP, one epoch on real MNIST (about 95% accurate), trained once per session."""
    overrides = [
        "model=mlp", "model.hidden_sizes=[256]", "trainer=cpu", "trainer.max_epochs=1", "data.download=false",
        "test=false", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path_factory.mktemp('mnist_run')}",
    ]
    return Path(train(compose_config(overrides))["best_model_path"])


def confident_test_digits(ckpt_path: Path) -> dict[int, np.ndarray]:
    """Per digit, the official test image (of the first 2000) that the model reads right most confidently."""
    from src.data.mnist_files import load_split
    from src.models.checkpoint_file import normalization
    from src.models.loading import load_classifier

    model, checkpoint = load_classifier(ckpt_path)
    mean, std = normalization(checkpoint)
    images, labels = load_split(REAL_DATA_DIR, "test")
    images, labels = images[:2000], labels[:2000]
    with torch.inference_mode():
        probs = model(((images.float() / 255 - mean) / std).unsqueeze(1)).softmax(dim=1)
    # Prototypical digits: the test is about preprocessing, not about this small model's borderline cases.
    score = torch.where(probs.argmax(dim=1) == labels, probs.max(dim=1).values, torch.zeros(()))
    return {digit: images[torch.where(labels == digit, score, -1.0).argmax()].numpy() for digit in range(10)}


@pytest.mark.real_data
@needs_real_mnist
def test_real_digits_as_user_photos_are_recognised(tmp_path, mnist_checkpoint):
    folder = tmp_path / "photos"
    for digit, image in confident_test_digits(mnist_checkpoint).items():
        save(user_photo(image), folder / f"{digit}_ink_on_paper.png")
        save(user_photo(image, dark_on_light=False, at=(80, 30)), folder / f"{digit}_chalk_on_board.png")
        save(user_photo(image, at=(5, 30)), folder / f"{digit}_photo.jpg", quality=80)
        dim = user_photo(image, paper=110, ink=30, scale=6, canvas=(400, 300), at=(200, 100))
        save(dim, folder / f"{digit}_dim.png")
        save(user_photo(image, scale=1, canvas=(40, 50), at=(6, 10)), folder / f"{digit}_tiny.bmp")
        save(transparent_sticker(image), folder / f"{digit}_sticker.png")
    predictions = predict(predict_config(mnist_checkpoint, folder, tmp_path / "run"))
    assert len(predictions) == 60
    wrong = [(Path(p["path"]).name, p["digit"]) for p in predictions if p["digit"] != int(Path(p["path"]).name[0])]
    assert not wrong, f"misread: {wrong}"


@pytest.mark.real_data
@needs_real_mnist
def test_mnist_digits_come_out_of_preprocessing_almost_unchanged():
    from src.data.mnist_files import load_split

    images, _ = load_split(REAL_DATA_DIR, "test")
    originals = images[:200].numpy().astype(np.float32) / 255
    # MNIST was made this way, so redoing it changes little (a pixel shift at most, some resampling blur).
    differences = [np.abs(mnist_style(image) - image).mean() for image in originals]
    assert np.mean(differences) < 0.02
