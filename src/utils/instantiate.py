"""Build lists of callbacks and loggers from config groups whose entries are `{name: {_target_: ...}}`."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.errors import ReportedError, UserInputError


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but our own clear errors from a constructor reach the user unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ReportedError):
            raise err.__cause__ from None
        raise


def instantiate_entries(group: DictConfig | None, group_name: str) -> list[Any]:
    """One object per entry; an entry set to null is deliberately disabled and left out."""
    if not group:
        return []
    objects = []
    for name, entry in group.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise UserInputError(
                f"{group_name}.{name} has no _target_: each entry of `{group_name}` must be a config "
                f"with a _target_ class (or null to disable it), got {entry!r}."
            )
        objects.append(build(entry))
    return objects
