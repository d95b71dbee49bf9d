"""Reading one of this project's checkpoint files: only tensors and plain values, no Lightning needed (so the
paths that only read one, and a mistyped ckpt_path, do not pay for importing it)."""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from pathlib import Path

from src.errors import UserInputError


class CheckpointError(UserInputError):
    """A checkpoint path that is missing, unreadable, or not one of this project's checkpoints."""


def existing_checkpoint(path: str | Path | int | float) -> Path:
    """The path, checked to name a file: cheap, so entry points can check it before importing torch."""
    path = Path(str(path)).expanduser()  # str: Hydra reads ckpt_path=123 as a number
    if path.is_file():
        return path
    if str(path) == "last":  # src.train's word for a run folder's own last.ckpt
        raise CheckpointError("ckpt_path=last continues training in a run's own folder (python -m src.train); name the "
                              "checkpoint file here: <run dir>/checkpoints/last.ckpt or epochNNN.ckpt.")
    folder = path if path.is_dir() else path.parent  # a run folder given, or a checkpoint's name mistyped
    for candidates in (folder / "checkpoints", folder):
        found = sorted(candidates.glob("*.ckpt")) if candidates.is_dir() else []
        if found:
            names = ", ".join(str(p) for p in found[:6]) + (", ..." if len(found) > 6 else "")
            what = "is a folder" if path.is_dir() else "no such file"
            raise CheckpointError(f"ckpt_path={path}: {what}. Checkpoints there: {names} (last.ckpt: the latest state; "
                                  "epochNNN.ckpt: the best by validation accuracy).")
    if path.is_dir():  # a run stopped before its first save, say
        raise CheckpointError(f"ckpt_path={path}: a folder that holds no checkpoints (.ckpt files, in it or in its "
                              "checkpoints/). Name a checkpoint file: <run dir>/checkpoints/last.ckpt or "
                              "epochNNN.ckpt.")
    raise CheckpointError(f"ckpt_path={path}: no such file. Checkpoints are in <run dir>/checkpoints/.")


def read_checkpoint(path: str | Path | int | float) -> dict:
    """The checkpoint dict, read with `weights_only=True` (no arbitrary code can run)."""
    path = existing_checkpoint(path)
    import torch  # here, after the cheap check: a mistyped path fails at once

    # The bytes read once, then loaded and checked: read twice, a file replaced in between (a run saving last.ckpt)
    # would have its successor checked in place of what was loaded. A checkpoint here is tens of MB at most.
    try:
        content = path.read_bytes()
    except PermissionError as err:
        raise CheckpointError(f"ckpt_path={path}: this user may not read it ({err.strerror}); check the file's "
                              "permissions, or copy it somewhere readable.") from err
    except OSError as err:  # a failing disk, a network filesystem gone
        raise CheckpointError(f"ckpt_path={path}: cannot be read ({err.strerror or _what(err)}): a disk or network "
                              f"error. {_use_another(path)}") from err
    try:
        checkpoint = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # torch's wording when the file names a Python class or function
            raise CheckpointError(f"ckpt_path={path}: cannot be read as a checkpoint (not a torch file, or truncated or "
                                  f"corrupt). {_use_another(path)}") from err
        raise CheckpointError(
            f"ckpt_path={path}: holds pickled Python objects, which are not loaded here because loading them could run "
            "code from the file (torch.load(weights_only=True)). This project's checkpoints hold only tensors and plain "
            "values: use a .ckpt written by `python -m src.train`."
        ) from err
    except Exception as err:  # arbitrary bytes can make the unpickler raise anything (KeyError, ValueError...)
        raise CheckpointError(
            f"ckpt_path={path}: cannot be read as a checkpoint (not a torch file, or truncated or corrupt: {_what(err)}). "
            f"{_use_another(path)}"
        ) from err
    damaged = _record_failing_its_checksum(content)
    if damaged:
        raise CheckpointError(f"ckpt_path={path}: is damaged: its part {damaged} does not match its checksum (a disk "
                              f"error, or a faulty copy). {_use_another(path)}")
    if not isinstance(checkpoint, dict) or not {"model_class", "state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise CheckpointError(
            f"ckpt_path={path}: not a checkpoint of this project (it lacks model_class/state_dict/hyper_parameters). "
            "Use a .ckpt written by `python -m src.train`."
        )
    return checkpoint


def checkpoints_beside(path: Path) -> list[Path]:
    """The other checkpoints in `path`'s folder (a run's last.ckpt, its best epoch's epochNNN.ckpt), or in the
    checkpoints/ folder beside it (a run folder's other file given by mistake), newest first; `path` itself (damaged,
    or missing) never."""
    others = []
    with contextlib.suppress(OSError):  # an unreadable folder: no names rather than a second error
        for other in [*path.parent.glob("*.ckpt"), *(path.parent / "checkpoints").glob("*.ckpt")]:
            if not other.name.startswith(".") and other.is_file() and other.resolve() != path.resolve():
                others.append((other.stat().st_mtime, other.name, other))
    return [other for _, _, other in sorted(others, reverse=True)]


def listed(paths: list[Path]) -> str:
    return ", ".join(str(path) for path in paths[:3]) + (", ..." if len(paths) > 3 else "")


def _use_another(damaged: Path) -> str:
    """What to do instead of reading a damaged checkpoint: another beside it, with the command that takes the newest."""
    others = checkpoints_beside(damaged)
    if not others and damaged.suffix == ".ckpt":
        return "No other checkpoint is beside it: copy this one again from where it came, or train anew."
    if not others:
        return "Give a checkpoint: <run dir>/checkpoints/last.ckpt or epochNNN.ckpt."
    from src.utils.command_words import this_command_with

    again = this_command_with(others[0])
    return f"Use another checkpoint beside it (newest first): {listed(others)}" + (f"; e.g. {again}" if again else ".")


def _record_failing_its_checksum(content: bytes) -> str | None:
    """The first record of a checkpoint (a zip archive) whose bytes do not match its CRC: torch.load does not check
    them, so damaged weights would load and give wrong results (NaN, or a few points less accuracy) without a word."""
    archive_bytes = io.BytesIO(content)
    try:
        if not zipfile.is_zipfile(archive_bytes):  # torch's legacy format (_use_new_zipfile_serialization=False)
            return None
        with zipfile.ZipFile(archive_bytes) as archive:
            for record in archive.infolist():
                if record.CRC == 0 and record.file_size:  # saved without (torch.serialization.set_crc32_options)
                    continue
                try:
                    with archive.open(record) as stream:  # reading to the end compares the checksum
                        while stream.read(1 << 24):
                            pass
                except zipfile.BadZipFile:
                    return record.filename
    except Exception as err:  # torch read it, so any other failure here is damage too (BadZipFile, EOFError, ...)
        return f"(the archive itself: {_what(err)})"
    return None


def _what(err: Exception) -> str:
    """The exception in a few words: torch's own texts can be empty (EOFError) or a bare key (KeyError: 101)."""
    text = (str(err).splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def normalization(checkpoint: dict) -> tuple[float, float]:
    """The (mean, std) the model was trained with, stored with the datamodule's hyperparameters."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    return float(data.get("mean", 0.1307)), float(data.get("std", 0.3081))
