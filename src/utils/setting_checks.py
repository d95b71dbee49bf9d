"""Type checks for settings typed on the command line. YAML reads `true`/`false` as bools and `off` or `yes` as
strings, which Python would count as true; and Python counts a bool as an int, which no size or count here is."""

from __future__ import annotations

from collections.abc import Mapping

from src.errors import UserInputError


def is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_pair_of_numbers(value) -> bool:
    """A list such as [0.9, 1.1] (a ListConfig too); not a string or a mapping of two keys."""
    is_pair = not isinstance(value, (str, bytes, Mapping)) and hasattr(value, "__len__") and len(value) == 2
    return is_pair and all(is_number(v) for v in value)


def require_true_or_false(name: str, value) -> None:
    if not isinstance(value, bool):
        raise UserInputError(f"{name}={value} is invalid: it must be true or false.")
