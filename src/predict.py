"""Classify your own digit images with a checkpoint written by `python -m src.train`.

    python -m src.predict ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt inputs=my_digits/
    python -m src.predict ckpt_path=... 'inputs=photos/*.jpg' output=predictions.json save_preview=true

Each image is prepared the way MNIST was made (src/data/digit_images.py), so photos of dark ink on
paper, digits anywhere in a large frame, or transparent PNGs all reach the model as MNIST-like 28×28.
Heavy imports (torch, Lightning) happen inside `predict`, so `--help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from src import CONFIG_DIR
from src.errors import UserInputError
from src.utils.command_line import run_command_line
from src.utils.command_words import override_value
from src.utils.setting_checks import is_whole, require_true_or_false

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # what a folder is searched for
LOW_CONFIDENCE = 0.5  # below this the table and the preview flag a prediction as doubtful
BATCH_SIZE = 256
MAX_PREVIEW_IMAGES = 256  # 32 rows of 8: about 5,800 pixels tall


def find_inputs(inputs) -> list[Path]:
    """The files that `inputs` names: a file, a folder (its image files), a glob, or a list of these."""
    entries = list(inputs) if isinstance(inputs, (list, tuple, ListConfig)) else [inputs]
    found: list[Path] = []
    for entry in entries:
        text = str(entry)
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise UserInputError(f"inputs={text}: this folder holds no image files ({' '.join(IMAGE_SUFFIXES)}).")
        elif path.is_file():
            files = [path]
        elif any(char in text for char in "*?["):
            files = sorted(Path(name) for name in glob.glob(str(path), recursive=True) if Path(name).is_file())
            if not files:
                raise UserInputError(f"inputs={text}: no file matches this pattern.")
        else:
            raise UserInputError(f"inputs={text}: no such file or folder (give an image, a folder or a glob).")
        found.extend(files)
    if not found:
        raise UserInputError("inputs is empty: give an image, a folder or a glob.")
    return list(dict.fromkeys(found))  # a file named twice is classified once


def prediction_table(predictions: list[dict], top_k: int) -> str:
    width = max(len("file"), *(len(p["path"]) for p in predictions))
    lines = [f"{'file':<{width}}  digit  confidence  top-{top_k}"]
    for p in predictions:
        ranked = sorted(range(len(p["probs"])), key=lambda digit: -p["probs"][digit])[:top_k]
        top = "  ".join(f"{digit} ({p['probs'][digit]:.2f})" for digit in ranked)
        doubt = "  <- low confidence" if p["confidence"] < LOW_CONFIDENCE else ""
        lines.append(f"{p['path']:<{width}}  {p['digit']:>5}  {p['confidence']:>10.2f}  {top}{doubt}")
    return "\n".join(lines)


def check_config(cfg: DictConfig) -> None:
    for key, example in (("ckpt_path", "outputs/<date>/<time>/checkpoints/last.ckpt"), ("inputs", "my_digits/")):
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            raise UserInputError(f"{key} is required, e.g. `python -m src.predict {key}={example} ...`.")
    if not is_whole(cfg.top_k) or not 1 <= cfg.top_k <= 10:
        raise UserInputError(f"top_k={override_value(cfg.top_k)} is invalid: it must be a whole number from 1 to 10.")
    require_true_or_false("save_preview", cfg.save_preview)
    if cfg.output is not None and not isinstance(cfg.output, str):
        raise UserInputError(f"output={override_value(cfg.output)} is invalid: "
                             "it must be a file name, e.g. output=predictions.json, or null for none.")
    if cfg.output and Path(cfg.output).expanduser().is_dir():
        raise UserInputError(f"output={cfg.output} is a folder: give a file name, e.g. output={Path(cfg.output) / 'predictions.json'}.")


def predict(cfg: DictConfig) -> list[dict]:
    """Classify every input image; returns one dict per input file, in order: its path, digit, confidence and probs,
    and `skipped`: null, or why it could not be classified (its other values null then)."""
    from src.models.checkpoint_file import existing_checkpoint

    check_config(cfg)  # before the heavy imports: a mistyped setting or path is reported at once
    paths = find_inputs(cfg.inputs)
    existing_checkpoint(cfg.ckpt_path)
    import torch

    from src.data.digit_images import DigitImageError, digit_tensor
    from src.models.checkpoint_file import normalization
    from src.models.loading import load_network

    model, checkpoint = load_network(str(cfg.ckpt_path))
    mean, std = normalization(checkpoint)  # exactly the training preprocessing

    images, classified, skipped = [], [], {}
    for path in paths:
        try:
            images.append(digit_tensor(path, mean, std))
            classified.append(path)
        except DigitImageError as err:
            log.warning("skipped %s: %s", path, err)
            skipped[path] = str(err)
    if not classified:
        raise UserInputError(f"none of the {len(paths)} input file(s) could be classified (see the reasons above).")

    batch = torch.stack(images)
    with torch.inference_mode():
        probs = torch.cat([model(chunk).softmax(dim=1) for chunk in batch.split(BATCH_SIZE)])
    predictions = [
        {
            "path": str(path),
            "digit": int(row.argmax()),
            "confidence": round(float(row.max()), 6),
            "probs": [round(float(value), 6) for value in row],
            "skipped": None,
        }
        for path, row in zip(classified, probs)
    ]
    by_path = dict(zip(classified, predictions))
    results = [by_path.get(path) or {"path": str(path), "digit": None, "confidence": None, "probs": None,
                                     "skipped": skipped[path]} for path in paths]  # every input, in order

    # The answers before any file is written: a full disk there must not take them with it.
    log.info("\n".join(["", prediction_table(predictions, cfg.top_k), "",
                        f"classified    : {len(predictions)} of {len(paths)} file(s) with {cfg.ckpt_path}"]))
    output_dir = Path(cfg.paths.output_dir)
    lines = [""]
    if cfg.output:
        json_path = Path(cfg.output).expanduser().resolve()
        write_predictions(json_path, results)
        lines.append(f"predictions   : {json_path}")
    if cfg.save_preview:
        lines.append(f"preview       : {save_preview(batch, predictions, output_dir)}")
    lines.append(f"run dir       : {output_dir}")
    log.info("\n".join(lines))
    return results


def write_predictions(path: Path, predictions: list[dict]) -> None:
    from src.utils.atomic_files import write_json_atomically

    try:
        write_json_atomically(path, predictions)
    except OSError as err:
        raise UserInputError(f"output={path}: cannot be written ({err.strerror or err}). The predictions are in the "
                             "table above; to have the file, choose another path.") from err


def save_preview(batch, predictions: list[dict], output_dir: Path) -> Path:
    """<run dir>/predictions.png: each input as the model saw it (28×28), captioned with its prediction."""
    from src.plots import short_label
    from src.plots.digit_sheet import digit_sheet
    from src.utils.atomic_files import write_atomically

    title = f"predictions (red: confidence < {LOW_CONFIDENCE})"
    if len(predictions) > MAX_PREVIEW_IMAGES:  # a taller figure would pass the PNG size limit; the JSON has all
        batch, predictions = batch[:MAX_PREVIEW_IMAGES], predictions[:MAX_PREVIEW_IMAGES]
        title += f", the first {MAX_PREVIEW_IMAGES} images"
    captions = [f"{short_label(Path(p['path']).name, 16)}\n{p['digit']} ({p['confidence']:.2f})" for p in predictions]
    flagged = [p["confidence"] < LOW_CONFIDENCE for p in predictions]
    figure = digit_sheet(batch, captions, flagged, title=title)
    path = output_dir / "predictions.png"
    try:
        write_atomically(path, lambda partial: figure.savefig(partial, format="png", dpi=120))
    except OSError as err:  # said here: the run-wide message for a full disk speaks of checkpoints and sweeps
        raise UserInputError(f"{path}: cannot be written ({err.strerror or err}). The predictions are in the table "
                             "above; to have the preview, free some space or put the run elsewhere "
                             "(hydra.run.dir=<folder>).") from err
    return path


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    from src.utils.run import run_reporting_failures

    run_reporting_failures(predict, cfg)


if __name__ == "__main__":
    run_command_line(main)
