"""The `data.augment` settings: checked and filled in without torch, so a bad one is refused at once."""

from __future__ import annotations

from collections.abc import Mapping

from src.errors import UserInputError
from src.utils.command_words import override_value
from src.utils.setting_checks import is_finite_number, is_pair_of_numbers, is_whole, require_true_or_false

DEFAULT_AUGMENT = {
    "enabled": False,
    "degrees": 8.0,
    "translate": 0.08,
    "scale": [0.92, 1.08],
    "elastic_alpha": 0.0,
    "elastic_sigma": 4.0,
    "erasing_p": 0.0,
    "erasing_area": [0.02, 0.2],
    "clean_last_epochs": 0,
}


def _number(key: str, value, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    name = f"data.augment.{key}"
    if not is_finite_number(value):
        raise UserInputError(f"{name}={override_value(value)} is invalid: it must be a finite number.")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        bounds = [f"{'>' if low_open else '>='} {low}" if low is not None else "", f"<= {high}" if high is not None else ""]
        raise UserInputError(f"{name}={override_value(value)} is invalid: "
                             f"it must be {' and '.join(b for b in bounds if b)}.")
    return float(value)


def _range(key: str, value, high: float | None = None) -> list[float]:
    name = f"data.augment.{key}"
    allowed = f"a pair [low, high] with 0 < low <= high{f' <= {high}' if high is not None else ''}"
    if not is_pair_of_numbers(value):
        raise UserInputError(f"{name}={override_value(value)} is invalid: it must be {allowed}.")
    low, high_value = (float(v) for v in value)
    if not 0 < low <= high_value or (high is not None and high_value > high):
        raise UserInputError(f"{name}={override_value(list(value))} is invalid: it must be {allowed}.")
    return [low, high_value]


def _count(key: str, value) -> int:
    if not is_whole(value) or value < 0:
        raise UserInputError(f"data.augment.{key}={override_value(value)} is invalid: it must be a whole number >= 0.")
    return value


def augment_settings(augment: Mapping | bool | None) -> dict:
    """Validate `data.augment` and fill in defaults; returns plain values (safe to store in checkpoints)."""
    if augment is False:  # data.augment=false: what it says (the switch proper is data.augment.enabled)
        augment = {"enabled": False}
    if augment is not None and not isinstance(augment, Mapping):  # data.augment=true: which settings?
        raise UserInputError(f"data.augment={override_value(augment)} is invalid: "
                             "it is a group of settings. Switch augmentation "
                             "with data.augment.enabled=true or data.augment.enabled=false.")
    given = dict(augment or {})
    unknown = sorted(set(given) - set(DEFAULT_AUGMENT))
    if unknown:
        raise UserInputError(f"data.augment has unknown keys {unknown}: the allowed keys are {sorted(DEFAULT_AUGMENT)}.")
    # Settings given without `enabled` (augment={"degrees": 15} in a script) mean augmentation on; configs say it.
    merged = {**DEFAULT_AUGMENT, "enabled": bool(given) or DEFAULT_AUGMENT["enabled"], **given}
    require_true_or_false("data.augment.enabled", merged["enabled"])
    return {
        "enabled": merged["enabled"],
        "degrees": _number("degrees", merged["degrees"], low=0, high=180),
        "translate": _number("translate", merged["translate"], low=0, high=1),
        "scale": _range("scale", merged["scale"]),
        "elastic_alpha": _number("elastic_alpha", merged["elastic_alpha"], low=0),
        "elastic_sigma": _number("elastic_sigma", merged["elastic_sigma"], low=0, low_open=True),
        "erasing_p": _number("erasing_p", merged["erasing_p"], low=0, high=1),
        "erasing_area": _range("erasing_area", merged["erasing_area"], high=1),
        "clean_last_epochs": _count("clean_last_epochs", merged["clean_last_epochs"]),
    }
