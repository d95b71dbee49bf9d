"""Checks of the `data` settings, run by the DataModule's constructor before any file is read (and by the commands
before they import torch or Lightning: src/utils/validate.py)."""

from __future__ import annotations

import math
from pathlib import Path

from src.errors import UserInputError
from src.utils.command_words import override_value
from src.utils.setting_checks import is_number, is_whole, require_true_or_false


def check_data_settings(data_dir, download, batch_size, eval_batch_size, val_size, split_seed, shuffle_seed, mean, std,
                        drop_last, device) -> None:
    if not isinstance(data_dir, (str, Path)) or not str(data_dir).strip():
        raise UserInputError(f"data.data_dir={override_value(data_dir)} is invalid: "
                             "it must be a folder, e.g. data.data_dir=data "
                             "(the MNIST files are then read from data/MNIST/raw/).")
    for key, value in (("data.batch_size", batch_size), ("data.eval_batch_size", eval_batch_size)):
        if not is_whole(value) or value < 1:
            raise UserInputError(f"{key}={override_value(value)} is invalid: it must be a positive integer.")
    if not is_whole(val_size) or val_size < 1:
        raise UserInputError(
            f"data.val_size={override_value(val_size)} is invalid: "
            "it must be an integer >= 1 (validation picks the best checkpoint)."
        )
    if not is_whole(split_seed) or not 0 <= split_seed < 2**64:  # torch's generator takes no larger seed
        raise UserInputError(f"data.split_seed={override_value(split_seed)} is invalid: "
                             "it must be an integer from 0 to 2**64-1 (fixed, so runs share a validation set).")
    if shuffle_seed is not None and (not is_whole(shuffle_seed) or shuffle_seed < 0):
        raise UserInputError(f"data.shuffle_seed={override_value(shuffle_seed)} is invalid: "
                             "it must be an integer >= 0 (it follows `seed`) or null.")
    for key, value in (("data.mean", mean), ("data.std", std)):
        if not is_number(value) or not math.isfinite(value):
            raise UserInputError(f"{key}={override_value(value)} is invalid: "
                                 "it must be a finite number (MNIST's: mean 0.1307, std 0.3081).")
    if std < 0.01:  # pixels divided by less would be in the hundreds or more: training fails to learn
        raise UserInputError(f"data.std={override_value(std)} is invalid: "
                             "it must be >= 0.01, the spread of pixel values in [0, 1] (MNIST's: 0.3081).")
    for key, value in (("data.download", download), ("data.drop_last", drop_last)):
        require_true_or_false(key, value)
    check_device_setting(device)


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_device_setting(device: object) -> None:
    """Reject a `data.device` that names no device, or a CUDA device this machine does not have."""
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or _is_cuda_index(device)):
        raise UserInputError(f"data.device={override_value(device)} is invalid: it must be {DEVICE_CHOICES}.")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise UserInputError(
                f"data.device={override_value(device)} is invalid: this machine has {count} CUDA device(s). "
                f"Use {DEVICE_CHOICES} (auto follows the trainer's device)."
            )


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()
