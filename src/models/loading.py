"""Rebuild a classifier from one of our checkpoints, loading only tensors and plain values."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import torch

from src.errors import UserInputError
from src.models.classifier import DigitClassifier


class CheckpointError(UserInputError):
    """A checkpoint path that is missing, unreadable, or not one of this project's checkpoints."""


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, read with `weights_only=True` (no arbitrary code can run)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: no such file. Checkpoints are in <run dir>/checkpoints/.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # torch's wording when the file names a Python class or function
            raise CheckpointError(f"ckpt_path={path}: cannot be read as a checkpoint (not a torch file, or truncated or "
                                  "corrupt). Use another checkpoint, e.g. <run dir>/checkpoints/last.ckpt.") from err
        raise CheckpointError(
            f"ckpt_path={path}: holds pickled Python objects, which are not loaded here because loading them could run "
            "code from the file (torch.load(weights_only=True)). This project's checkpoints hold only tensors and plain "
            "values: use a .ckpt written by `python -m src.train`."
        ) from err
    except Exception as err:  # arbitrary bytes can make the unpickler raise anything (KeyError, ValueError...)
        raise CheckpointError(
            f"ckpt_path={path}: cannot be read as a checkpoint (not a torch file, or truncated or corrupt: {_what(err)}). "
            "Use another checkpoint, e.g. <run dir>/checkpoints/last.ckpt."
        ) from err
    if not isinstance(checkpoint, dict) or not {"model_class", "state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise CheckpointError(
            f"ckpt_path={path}: not a checkpoint of this project (it lacks model_class/state_dict/hyper_parameters). "
            "Use a .ckpt written by `python -m src.train`."
        )
    return checkpoint


def _what(err: Exception) -> str:
    """The exception in a few words: torch's own texts can be empty (EOFError) or a bare key (KeyError: 101)."""
    text = (str(err).splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def model_class(class_path: str) -> type[DigitClassifier]:
    if not isinstance(class_path, str):
        raise CheckpointError(f"checkpoint names model class {class_path!r}, which is not a class path.")
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name.startswith("src.models."):
        raise CheckpointError(f"checkpoint names model class {class_path!r}, which is not one of src.models.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:  # the module exists but something it imports does not: a real error
            raise
        module = None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, DigitClassifier)):
        raise CheckpointError(f"checkpoint names model class {class_path!r}, which does not exist in this version.")
    return cls


def classifier_like(checkpoint: dict) -> DigitClassifier:
    """A new classifier of the checkpoint's class and hyperparameters; its weights are not loaded."""
    cls = model_class(checkpoint["model_class"])
    try:
        return cls(**checkpoint["hyper_parameters"])
    except TypeError as err:  # a setting this version's class does not take
        raise CheckpointError(
            f"checkpoint's {checkpoint['model_class']} settings do not fit this version of it ({err}). "
            "Use the version of this project that wrote the checkpoint."
        ) from err


def load_classifier(path: str | Path) -> tuple[DigitClassifier, dict]:
    """(model in eval mode on CPU, the raw checkpoint dict) from a checkpoint written by training."""
    checkpoint = read_checkpoint(path)
    model = classifier_like(checkpoint)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as err:  # weights of another shape or name than its settings say
        raise CheckpointError(f"ckpt_path={path}: its weights do not fit the network its settings describe "
                              f"({str(err).splitlines()[0]}). It was altered or damaged; use another checkpoint.") from err
    return model.eval(), checkpoint


def normalization(checkpoint: dict) -> tuple[float, float]:
    """The (mean, std) the model was trained with, stored with the datamodule's hyperparameters."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    return float(data.get("mean", 0.1307)), float(data.get("std", 0.3081))
