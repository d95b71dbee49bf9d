"""Type checks for settings typed on the command line. YAML reads `true`/`false` as bools and `off` or `yes` as
strings, which Python would count as true; and Python counts a bool as an int, which no size or count here is."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import PurePath

from src.errors import UserInputError
from src.utils.command_words import override_value


def is_whole(value) -> bool:
    """An int, numpy's too (np.int64 from np.arange, say); not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A number that is not nan or ±inf (Hydra reads `nan`, `inf` and `.inf` as floats), nor an int past a float's
    range."""
    try:
        return is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def plain_values(value):
    """`value` in the plain types a checkpoint loads with torch.load(weights_only=True): a Path as a string, a numpy
    number as a Python one, Hydra's DictConfig/ListConfig as a dict/list, nested ones too. A checkpoint holding any
    of those would be refused as holding pickled Python objects."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain_values(item) for item in value]
        return tuple(items) if type(value) is tuple else items  # a named tuple as a list
    if isinstance(value, PurePath):
        return str(value)
    if value is None or type(value) in (bool, int, float, str):
        return value
    if is_whole(value):
        return int(value)
    if is_number(value):
        return float(value)
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # numpy's bool, a 0-d array or tensor
        return value.item()
    if getattr(value, "ndim", 0) >= 1 and hasattr(value, "tolist"):  # a numpy array or a tensor
        return plain_values(value.tolist())
    return value


def save_plain_hyperparameters(owner, frame) -> None:
    """owner.save_hyperparameters() from the __init__ `frame` (a subclass's arguments too), as plain values."""
    import copy

    owner.save_hyperparameters(frame=frame)
    owner.hparams.update(plain_values(dict(owner.hparams)))
    owner._hparams_initial = copy.deepcopy(owner.hparams)  # what Lightning hands loggers, as save_hyperparameters does


def is_pair_of_numbers(value) -> bool:
    """A list such as [0.9, 1.1] (a ListConfig too); not a string or a mapping of two keys."""
    is_pair = not isinstance(value, (str, bytes, Mapping)) and hasattr(value, "__len__") and len(value) == 2
    return is_pair and all(is_finite_number(v) for v in value)


def require_true_or_false(name: str, value) -> None:
    if not isinstance(value, bool):
        raise UserInputError(f"{name}={override_value(value)} is invalid: it must be true or false.")
